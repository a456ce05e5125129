"""Best-of-N: the result is the candidate with the highest identity score, bit-identical to a plain run at its
seed; the ranking (seed, score) of all candidates is in the recipe; N is limited with a one-line error."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

import idforge.engine.sampling as sampling
from faces_util import square_image, textured
from idforge.cli import main
from idforge.engine.params import MAX_BEST_OF, GenerationParams
from idforge.engine.session import Engine, ModelChoice
from idforge.errors import ParameterError
from idforge.methods.faceid.core import FaceIDParams, FaceIDRequest
from idforge.methods.faceid.generate import generate_faceid
from idforge.methods.instantid.core import InstantIDRequest
from idforge.methods.instantid.generate import generate_instantid


@pytest.fixture(scope="module")
def engine(tiny_kit):
    return Engine(ModelChoice(models_dirs=[str(tiny_kit)]), device="cpu", dtype="float32")


@pytest.fixture(scope="module")
def reference():
    image = square_image(448, 448, [])
    image[120:270, 130:280] = textured(150, "checks")
    return image


def _latent_face(latents: torch.Tensor) -> np.ndarray:
    """A face whose texture is the sign pattern of the latents: different seeds give different faces (and
    scores), and 1e-6 differences between batched and single runs do not change it."""
    pattern = (latents[:3].float() > 0).numpy().astype(np.uint8)  # (3, h, w)
    cells = np.kron(pattern, np.ones((1, 150 // pattern.shape[1] + 1, 150 // pattern.shape[2] + 1), np.uint8))
    face = 215 + 40 * cells[:, :150, :150].transpose(1, 2, 0)
    image = square_image(448, 448, [])
    image[140:290, 150:300] = face
    return image


@pytest.fixture
def latent_faces(monkeypatch):
    def fake_decode(base, latents):
        return [Image.fromarray(_latent_face(latents[i])) for i in range(latents.shape[0])]

    monkeypatch.setattr(sampling, "decode_latents", fake_decode)


def _gen(**extra) -> GenerationParams:
    return GenerationParams(**({"prompt": "p", "steps": 2, "seed": 20, "width": 64, "height": 64} | extra))


@pytest.mark.parametrize("batch", [1, 3])
def test_best_of_returns_the_top_scored_candidate_bit_identical_to_its_single_run(
    engine, reference, latent_faces, batch
):
    singles = {
        seed: generate_instantid(engine, InstantIDRequest(faces=[reference], generation=_gen(seed=seed)))
        for seed in range(20, 25)
    }
    scores = {seed: result.scores[0] for seed, result in singles.items()}
    assert all(score is not None for score in scores.values()) and len(set(scores.values())) == 5
    best = max(scores, key=lambda s: scores[s])
    steps = []
    result = generate_instantid(
        engine,
        InstantIDRequest(faces=[reference], generation=_gen(best_of=5, best_of_batch=batch)),
        progress=lambda step, total: steps.append((step, total)),
    )
    assert result.seeds == [best] and len(result.images) == 1
    assert np.array_equal(np.asarray(result.images[0]), np.asarray(singles[best].images[0]))
    assert torch.equal(result.latents, singles[best].latents)
    ranking = result.recipe["best_of"]["ranking"]
    assert [row["seed"] for row in ranking] == sorted(scores, key=lambda s: -scores[s])
    for row in ranking:
        assert row["score"] == pytest.approx(scores[row["seed"]], abs=1e-4)
    assert result.recipe["best_of"]["n"] == 5 and result.recipe["best_of"]["chosen_seed"] == best
    assert result.recipe["seed"] == best and result.recipe["params"]["best_of"] == 1
    assert result.recipe["identity"]["images"][0]["score"] == pytest.approx(scores[best], abs=1e-6)
    assert steps[-1] == (10, 10)


def test_best_of_without_any_face_returns_the_first_seed_and_says_so(engine, reference):
    result = generate_instantid(engine, InstantIDRequest(faces=[reference], generation=_gen(best_of=2)))
    assert result.seeds == [20]
    assert [row["status"] for row in result.recipe["best_of"]["ranking"]] == ["no_face", "no_face"]
    assert any("no candidate had a face" in w for w in result.warnings)


def test_faceid_best_of(engine, reference, latent_faces):
    request = FaceIDRequest(
        faces=[reference], generation=_gen(best_of=3, guidance=1.0), adapter="ip-adapter-faceid_sd15.bin"
    )
    result = generate_faceid(engine, request)
    ranking = result.recipe["best_of"]["ranking"]
    assert len(ranking) == 3 and result.seeds == [ranking[0]["seed"]]
    assert ranking[0]["score"] >= ranking[1]["score"] >= ranking[2]["score"]


@pytest.mark.parametrize("value", [0, -1, MAX_BEST_OF + 1, 2.5])
def test_best_of_out_of_range_names_the_input(value):
    with pytest.raises(ParameterError, match=r"^best_of: .* must be a whole number from 1 to 16"):
        GenerationParams(best_of=value)


def test_best_of_refuses_several_images_and_faceid_batch(engine, reference):
    with pytest.raises(ParameterError, match="^best_of: .*num_images must be 1"):
        GenerationParams(best_of=2, num_images=2)
    request = FaceIDRequest(
        faces=[reference],
        generation=_gen(best_of=2),
        faceid=FaceIDParams(batch=True),
        adapter="ip-adapter-faceid_sd15.bin",
    )
    with pytest.raises(ParameterError, match="^best_of: .*batch mode"):
        generate_faceid(engine, request)


@pytest.mark.parametrize("value", ["0", "17"])
def test_cli_best_of_bad_values_are_one_line_errors(tiny_kit, tmp_path, capsys, value):
    face = tmp_path / "face.png"
    Image.fromarray(square_image(200, 200, [(50, 50, 150, 150, 255)])).save(face)
    code = main(
        [
            "instantid",
            "--face",
            str(face),
            "--prompt",
            "p",
            "--best-of",
            value,
            "--models",
            str(tiny_kit),
            "-o",
            str(tmp_path / "o.png"),
            "--quiet",
        ]
    )
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.startswith("idforge: error: best_of:") and len(err.splitlines()) == 1


def test_cli_best_of_writes_the_winner_with_its_ranking(tiny_kit, tmp_path, capsys):
    import json

    face = tmp_path / "face.png"
    Image.fromarray(square_image(200, 200, [(50, 50, 150, 150, 255)])).save(face)
    out = tmp_path / "best.png"
    code = main(
        [
            "instantid",
            "--face",
            str(face),
            "--prompt",
            "p",
            "--best-of",
            "2",
            "--steps",
            "1",
            "--width",
            "64",
            "--height",
            "64",
            "--seed",
            "4",
            "--models",
            str(tiny_kit),
            "-o",
            str(out),
            "--quiet",
            "--json",
        ]
    )
    assert code == 0
    printed = json.loads(capsys.readouterr().out)
    assert [row["seed"] for row in printed["best_of"]["ranking"]] == [4, 5]
    from idforge.engine.result import read_recipe

    assert read_recipe(out)["best_of"]["n"] == 2
