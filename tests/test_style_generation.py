"""--style on every generation command: the template wraps the prompt the text encoder sees; recorded in the recipe."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from faces_util import square_image
from idforge.cli import main
from idforge.engine.params import GenerationParams
from idforge.engine.session import Engine, ModelChoice
from idforge.errors import ParameterError
from idforge.methods.instantid.core import InstantIDRequest
from idforge.methods.instantid.generate import generate_instantid
from idforge.styles import apply_style


@pytest.fixture(scope="module")
def engine(tiny_kit):
    return Engine(ModelChoice(models_dirs=[str(tiny_kit)]), device="cpu", dtype="float32")


@pytest.fixture(scope="module")
def face(tmp_path_factory):
    path = tmp_path_factory.mktemp("style") / "face.png"
    Image.fromarray(square_image(200, 200, [(50, 50, 150, 150, 255)])).save(path)
    return path


def _gen(**extra) -> GenerationParams:
    values = {
        "prompt": "a portrait",
        "negative_prompt": "hat",
        "steps": 2,
        "seed": 5,
        "width": 64,
        "height": 64,
        "score": False,  # scoring is tested in test_identity_score.py
    }
    return GenerationParams(**(values | extra))


def test_style_is_the_same_as_writing_the_styled_prompt(engine, face):
    styled = generate_instantid(engine, InstantIDRequest(faces=[face], generation=_gen(style="Film Noir")))
    prompt, negative = apply_style("film-noir", "a portrait", "hat")
    by_hand = generate_instantid(
        engine, InstantIDRequest(faces=[face], generation=_gen(prompt=prompt, negative_prompt=negative))
    )
    plain = generate_instantid(engine, InstantIDRequest(faces=[face], generation=_gen()))
    assert np.array_equal(np.asarray(styled.images[0]), np.asarray(by_hand.images[0]))
    assert not np.array_equal(np.asarray(styled.images[0]), np.asarray(plain.images[0]))
    params = styled.recipe["params"]
    assert params["style"] == "film-noir" and params["prompt"] == "a portrait"
    assert params["styled_prompt"] == prompt and params["styled_negative_prompt"] == negative


def test_unknown_style_is_refused_before_anything_loads():
    with pytest.raises(ParameterError, match="^style: unknown style 'baroque'; known styles: none, photo"):
        GenerationParams(style="baroque")


@pytest.mark.parametrize("command", ["instantid", "faceid", "insta-depth"])
def test_cli_unknown_style_is_one_line_error(tiny_kit, face, tmp_path, capsys, command):
    extra = ["--pose", str(face)] if command == "insta-depth" else []
    code = main(
        [
            command,
            "--face",
            str(face),
            *extra,
            "--prompt",
            "p",
            "--style",
            "baroque",
            "--models",
            str(tiny_kit),
            "-o",
            str(tmp_path / "o.png"),
            "--quiet",
        ]
    )
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.startswith("idforge: error: style: unknown style 'baroque'")
    assert len(err.splitlines()) == 1


def test_cli_style_in_the_recipe(tiny_kit, face, tmp_path):
    from idforge.engine.result import read_recipe

    out = tmp_path / "styled.png"
    code = main(
        [
            "faceid",
            "--face",
            str(face),
            "--prompt",
            "p",
            "--style",
            "watercolor",
            "--steps",
            "1",
            "--width",
            "64",
            "--height",
            "64",
            "--adapter",
            "ip-adapter-faceid_sd15.bin",
            "--models",
            str(tiny_kit),
            "-o",
            str(out),
            "--quiet",
        ]
    )
    assert code == 0
    assert read_recipe(out)["params"]["style"] == "watercolor"
