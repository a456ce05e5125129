"""Several people in one image (methods/instantid/persons.py) on the tiny kit: regions, one pass, per-person scores, errors.

The hooked forwards record each person's IP attention output (per cross-attention layer, before the output
projection) and each person's IdentityNet residuals (after its region mask) inside a real generation, and check
them against the region geometry: exactly 0.0 outside (the mask multiplies by zero, so no tolerance is needed),
clearly non-zero inside (mean |x| > 1e-6).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

import idforge.engine.loop as loop_module
import idforge.methods.instantid.persons as persons_module
from idforge.cli import main
from idforge.demo.samples import square_face_png, synthetic_face
from idforge.engine.params import GenerationParams
from idforge.engine.result import read_recipe
from idforge.engine.session import Engine, ModelChoice
from idforge.errors import NoFaceError, ParameterError
from idforge.faces.scoring import cosine
from idforge.identity.attention import IdentityAttnProcessor
from idforge.identity.masks import mask_for_tokens, mask_grid
from idforge.methods.instantid.core import InstantIDRequest
from idforge.methods.instantid.generate import generate_instantid
from idforge.methods.instantid.params import InstantIDParams
from idforge.methods.persons import Person, parse_person

WIDTH, HEIGHT = 128, 64  # latent 16 x 8: the halves split evenly at every UNet resolution


@pytest.fixture(scope="module")
def engine(tiny_kit):
    return Engine(ModelChoice(models_dirs=[str(tiny_kit)]), device="cpu", dtype="float32")


@pytest.fixture(scope="module")
def faces(tmp_path_factory):
    folder = tmp_path_factory.mktemp("persons")
    paths = {"a": folder / "a.png", "b": folder / "b.png", "empty": folder / "empty.png"}
    paths["a"].write_bytes(square_face_png())
    paths["b"].write_bytes(square_face_png(box=(40, 40, 150, 150)))
    Image.new("RGB", (200, 200), (15, 15, 15)).save(paths["empty"])
    two = Image.new("RGB", (256, 128), (20, 20, 20))  # a pose photo with one face in each half
    two.paste(synthetic_face(size=(128, 128), box=(24, 24, 104, 104), stripes=3), (0, 0))
    two.paste(synthetic_face(size=(128, 128), box=(24, 24, 104, 104), stripes=6), (128, 0))
    paths["two"] = folder / "two.png"
    two.save(paths["two"])
    left_only = Image.new("RGB", (256, 128), (20, 20, 20))
    left_only.paste(synthetic_face(size=(128, 128), box=(24, 24, 104, 104)), (0, 0))
    paths["left_only"] = folder / "left_only.png"
    left_only.save(paths["left_only"])
    return paths


def gen(**overrides) -> GenerationParams:
    values = dict(prompt="two people", steps=1, guidance=5.0, seed=3, width=WIDTH, height=HEIGHT)
    values.update(overrides)
    return GenerationParams(**values)


def two_persons(faces, first="left", second="right", **kwargs) -> InstantIDRequest:
    return InstantIDRequest(
        persons=[Person([faces["a"]], region=first), Person([faces["b"]], region=second, ip_weight=1.1)],
        generation=kwargs.pop("generation", gen()),
        **kwargs,
    )


def _half_columns(region: str, width: int) -> tuple[slice, slice]:
    """(inside, outside) column slices of a left/right region on a grid `width` wide."""
    left, right = slice(0, width // 2), slice(width // 2, width)
    return (left, right) if region == "left" else (right, left)


# ---- hooked forwards ---------------------------------------------------------------------------------------


def record_ip(monkeypatch) -> list[tuple[str, int, torch.Tensor]]:
    """Every (adapter name, token count, IP output) the identity processors produce during a generation."""
    records: list[tuple[str, int, torch.Tensor]] = []
    original = IdentityAttnProcessor._ip_attention

    def recording(self, name, query, heads, head_dim, num_tokens, *rest):
        out = original(self, name, query, heads, head_dim, num_tokens, *rest)
        if out is not None:
            records.append((name, num_tokens, out.detach().clone()))
        return out

    monkeypatch.setattr(IdentityAttnProcessor, "_ip_attention", recording)
    return records


def record_controls(monkeypatch) -> list[tuple[str, list[torch.Tensor], torch.Tensor, list[torch.Tensor]]]:
    """Per loop step: each ControlUnit's own (masked) residuals, and the summed ones the UNet received."""
    records = []
    original = loop_module.run_controls

    def recording(controls, *args):
        down_total, mid_total = original(controls, *args)
        for unit in controls:
            down, mid = original([unit], *args)
            records.append(
                (unit.name, [d.clone() for d in down], mid.clone(), [d.clone() for d in down_total])
            )
        return down_total, mid_total

    monkeypatch.setattr(loop_module, "run_controls", recording)
    return records


@pytest.mark.parametrize("order", [("left", "right"), ("right", "left")])
def test_each_persons_ip_attention_is_zero_outside_its_region(engine, faces, monkeypatch, order):
    records = record_ip(monkeypatch)
    generate_instantid(engine, two_persons(faces, *order))
    latent_hw = (HEIGHT // 8, WIDTH // 8)
    names = {"person1": order[0], "person2": order[1]}
    seen = set()
    for name, num_tokens, out in records:
        region = names[name]
        grid_h, grid_w = mask_grid(latent_hw, num_tokens)  # row-major token grid of this layer
        assert grid_h * grid_w == num_tokens and grid_w == 2 * grid_h
        grid = out.reshape(out.shape[0], grid_h, grid_w, -1)
        inside, outside = _half_columns(region, grid.shape[2])
        assert grid[:, :, outside].abs().max().item() == 0.0, (name, num_tokens)
        assert grid[:, :, inside].abs().mean().item() > 1e-6, (name, num_tokens)
        # The same token grid as the engine's mask rule gives for this layer.
        mask = torch.zeros(HEIGHT, WIDTH)
        mask[:, (slice(0, WIDTH // 2) if region == "left" else slice(WIDTH // 2, WIDTH))] = 1
        fitted = mask_for_tokens(mask, latent_hw, num_tokens).reshape(grid_h, -1)
        assert torch.equal(fitted[:, outside], torch.zeros_like(fitted[:, outside]))
        seen.add((name, num_tokens))
    assert {name for name, _ in seen} == {"person1", "person2"}
    assert len({tokens for _, tokens in seen}) >= 2  # several UNet resolutions were checked


@pytest.mark.parametrize("order", [("left", "right"), ("right", "left")])
def test_each_persons_identitynet_residuals_are_zero_outside_its_region(engine, faces, monkeypatch, order):
    records = record_controls(monkeypatch)
    generate_instantid(engine, two_persons(faces, *order))
    names = {"identitynet:person1": order[0], "identitynet:person2": order[1]}
    assert {name for name, *_ in records} == set(names)
    by_step: dict[int, list] = {}
    for position, (name, down, mid, total) in enumerate(records):
        by_step.setdefault(position // 2, []).append((down, mid, total))
        for residual in [*down, mid]:
            inside, outside = _half_columns(names[name], residual.shape[-1])
            assert residual[..., outside].abs().max().item() == 0.0, (name, tuple(residual.shape))
            assert residual[..., inside].abs().mean().item() > 1e-6, (name, tuple(residual.shape))
    for (
        pair
    ) in by_step.values():  # what the UNet got is the sum of the persons' residuals (float rounding only)
        (down_1, _, total), (down_2, _, _) = pair
        for a, b, summed in zip(down_1, down_2, total, strict=True):
            assert torch.allclose(a + b, summed, atol=1e-6)


def test_swapped_regions_give_the_mirrored_assignment(engine, faces):
    straight = generate_instantid(engine, two_persons(faces, "left", "right"))
    swapped = generate_instantid(engine, two_persons(faces, "right", "left"))
    regions, mirrored = straight.extras["regions"], swapped.extras["regions"]
    assert np.array_equal(regions[0], mirrored[1]) and np.array_equal(regions[1], mirrored[0])
    for recipe, expected in ((straight.recipe, ("left", "right")), (swapped.recipe, ("right", "left"))):
        for entry, region in zip(recipe["persons"], expected, strict=True):
            x1, _, x2, _ = entry["kps"]["face_box"]
            centre = (x1 + x2) / 2
            assert (centre < WIDTH / 2) == (region == "left"), entry
    # Each person's keypoints are drawn in its own half only.
    kps = np.asarray(straight.extras["kps_image"]).sum(axis=(0, 2))
    assert kps[: WIDTH // 2].sum() > 0 and kps[WIDTH // 2 :].sum() > 0
    assert not torch.equal(straight.latents, swapped.latents)


def test_scores_follow_the_persons_positions(engine, faces, monkeypatch):
    """A generator stubbed to return a picture with a face in each half: each person is scored on the face in
    its own region, so swapping the regions swaps which face each person is scored on."""
    picture = Image.open(faces["two"]).convert("RGB").resize((WIDTH * 2, HEIGHT * 2))
    size = gen(width=WIDTH * 2, height=HEIGHT * 2)

    def stub(engine_, base, gen_, seeds, size_, attention, controls, progress):
        return torch.zeros(len(seeds), 4, 1, 1), [picture.copy() for _ in seeds]

    monkeypatch.setattr(persons_module, "sample_and_decode", stub)
    analyzer = engine.face_analyzer()
    found = analyzer.find_faces(picture)
    assert len(found) == 2  # left face first
    reference = {
        key: analyzer.get_face(Image.open(faces[key]), name=key).normed_embedding for key in ("a", "b")
    }
    results = {}
    for order in (("left", "right"), ("right", "left")):
        result = generate_instantid(engine, two_persons(faces, *order, generation=size))
        per_person = result.recipe["identity"]["persons"]
        results[order] = per_person
        for entry, key, region in zip(per_person, ("a", "b"), order, strict=True):
            scored = entry["images"][0]
            face = found[0] if region == "left" else found[1]
            assert scored["status"] == "scored"
            assert scored["box"] == pytest.approx([float(v) for v in face.bbox], abs=0.01)
            assert scored["score"] == pytest.approx(cosine(face.normed_embedding, reference[key]), abs=1e-5)
        image_entry = result.recipe["identity"]["images"][0]
        assert image_entry["score"] == pytest.approx(min(e["images"][0]["score"] for e in per_person))
        assert result.identity.header_value() == f"{image_entry['score']:.4f}"
    straight, swapped = results[("left", "right")], results[("right", "left")]
    assert straight[0]["images"][0]["box"] == swapped[1]["images"][0]["box"]
    assert straight[1]["images"][0]["box"] == swapped[0]["images"][0]["box"]


def test_tiny_kit_noise_outputs_are_no_face_per_person(engine, faces):
    result = generate_instantid(engine, two_persons(faces))
    identity = result.recipe["identity"]
    assert [p["images"][0]["status"] for p in identity["persons"]] == ["no_face", "no_face"]
    assert identity["images"][0]["score"] is None and "person 1" in identity["images"][0]["reason"]
    assert result.identity.header_value() == "none"


# ---- the Python API ------------------------------------------------------------------------------------------


def test_python_api_box_and_mask_regions_and_the_recipe(engine, faces, tmp_path):
    mask = Image.new("L", (WIDTH, HEIGHT), 0)
    mask.paste(255, (80, 0, WIDTH, HEIGHT))
    mask_path = tmp_path / "right.png"
    mask.save(mask_path)
    request = InstantIDRequest(
        persons=[
            Person([faces["a"], faces["b"]], box=(0, 0, 64, 64), cn_strength=0.5, start_at=0.1, end_at=0.9),
            Person(square_face_png(), mask=mask_path, ip_weight=0.3),
        ],
        generation=gen(num_images=2),
        instantid=InstantIDParams(ip_weight=0.9),
    )
    result = generate_instantid(engine, request)
    assert len(result.images) == 2 and result.images[0].size == (WIDTH, HEIGHT)
    first, second = result.recipe["persons"]
    assert first["region"] == {"given": "box 0:0:64:64", "box": [0, 0, 64, 64], "pixels": 64 * 64}
    assert (first["ip_weight"], first["cn_strength"], first["start_at"], first["end_at"]) == (
        0.9,
        0.5,
        0.1,
        0.9,
    )
    assert len(first["faces"]) == 2 and first["kps"]["source"] == "own"
    assert second["region"]["given"] == f"mask {mask_path}" and second["region"]["box"] == [
        80,
        0,
        WIDTH,
        HEIGHT,
    ]
    assert second["ip_weight"] == 0.3 and second["cn_strength"] == 0.8
    assert np.count_nonzero(result.extras["regions"][1]) == (WIDTH - 80) * HEIGHT
    written = result.save(tmp_path / "out.png")
    saved = read_recipe(written[1])
    assert saved["persons"][1]["region"]["box"] == [80, 0, WIDTH, HEIGHT]
    assert len(saved["identity"]["persons"][0]["images"]) == 1  # this image's own score


def test_pose_image_gives_each_person_the_face_at_its_place(engine, faces):
    result = generate_instantid(
        engine, two_persons(faces, pose=faces["two"], generation=gen(width=None, height=None))
    )
    assert (result.recipe["width"], result.recipe["height"]) == (
        1280,
        640,
    )  # InstantID's size rule on the pose
    left, right = result.recipe["persons"]
    assert left["kps"]["source"] == right["kps"]["source"] == "pose"
    assert (left["kps"]["face_box"][0] + left["kps"]["face_box"][2]) / 2 < 640
    assert (right["kps"]["face_box"][0] + right["kps"]["face_box"][2]) / 2 > 640


def test_pose_without_a_face_in_a_region_is_an_error_unless_fallback(engine, faces):
    with pytest.raises(ParameterError) as info:
        generate_instantid(engine, two_persons(faces, pose=faces["left_only"]))
    message = str(info.value)
    assert message.startswith("person 2 region:") and "left_only.png" in message and "\n" not in message
    result = generate_instantid(engine, two_persons(faces, pose=faces["left_only"], pose_fallback=True))
    assert [p["kps"]["source"] for p in result.recipe["persons"]] == ["pose", "own (pose fallback)"]
    assert any("person 2" in warning for warning in result.warnings)


def test_default_canvas_is_the_two_person_one(engine, faces):
    from idforge.methods.persons import output_size

    side = InstantIDRequest(
        persons=[Person([faces["a"]], region="left"), Person([faces["b"]], region="right")]
    )
    stacked = InstantIDRequest(
        persons=[Person([faces["a"]], region="top"), Person([faces["b"]], region="bottom")]
    )
    assert output_size(side) == (1280, 960) and output_size(stacked) == (960, 1280)


# ---- bad input ---------------------------------------------------------------------------------------------


def _one_line(exc: BaseException) -> str:
    text = str(exc)
    assert "\n" not in text
    return text


def test_person_without_a_face_names_the_person_and_the_image(engine, faces):
    with pytest.raises(NoFaceError) as info:
        generate_instantid(
            engine,
            InstantIDRequest(
                persons=[Person([faces["a"]], region="left"), Person([faces["empty"]], region="right")],
                generation=gen(),
            ),
        )
    assert _one_line(info.value).startswith(f"person 2 face {faces['empty']}: no face found")
    with pytest.raises(ParameterError, match=r"^person 1 face: at least one"):
        generate_instantid(engine, InstantIDRequest(persons=[Person([], region="left")], generation=gen()))


@pytest.mark.parametrize(
    ("second", "expected"),
    [
        (
            dict(box=(40, 0, 100, 64)),
            r"^person 1/person 2 regions: left and box 40:0:100:64 overlap by 1536 pixels",
        ),
        (dict(region="left"), r"^person 1/person 2 regions: left and left overlap"),
        (dict(box=(64, 0, 200, 64)), r"^person 2 box: 64:0:200:64 reaches outside the 128x64 image"),
        (dict(box=(-5, 0, 10, 10)), r"^person 2 box: -5:0:10:10 reaches outside"),
    ],
)
def test_bad_regions_fail_before_any_model_loads(tiny_kit, faces, second, expected):
    fresh = Engine(ModelChoice(models_dirs=[str(tiny_kit)]), device="cpu", dtype="float32")
    request = InstantIDRequest(
        persons=[Person([faces["a"]], region="left"), Person([faces["b"]], **second)], generation=gen()
    )
    with pytest.raises(ParameterError, match=expected) as info:
        generate_instantid(fresh, request)
    _one_line(info.value)
    assert fresh.loaded_models() == []


def test_empty_mask_and_conflicting_inputs(engine, faces, tmp_path):
    black = tmp_path / "black.png"
    Image.new("L", (WIDTH, HEIGHT), 0).save(black)
    with pytest.raises(ParameterError, match=r"^person 1 mask: .*black.png is empty"):
        generate_instantid(
            engine, InstantIDRequest(persons=[Person([faces["a"]], mask=black)], generation=gen())
        )
    with pytest.raises(ParameterError, match=r"^face: give either"):
        generate_instantid(
            engine, InstantIDRequest(faces=[faces["a"]], persons=[Person([faces["b"]], region="left")])
        )
    with pytest.raises(ParameterError, match=r"^mask: with persons"):
        generate_instantid(
            engine, InstantIDRequest(persons=[Person([faces["b"]], region="left")], mask=black)
        )
    with pytest.raises(ParameterError, match=r"^person 1 end_at: 0.2 is before start_at 0.5"):
        generate_instantid(
            engine, InstantIDRequest(persons=[Person([faces["b"]], region="left", start_at=0.5, end_at=0.2)])
        )


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        (dict(), r"^region: no region given"),
        (dict(region="left", box=(0, 0, 5, 5)), r"^region: several regions given \(region, box\)"),
        (dict(region="middle"), r"^region: 'middle' is not one of"),
        (dict(box=(10, 0, 5, 5)), r"^box: 10:0:5:5 is empty"),
        (dict(box=(1, 2, 3)), r"^box: expected 4 numbers"),
        (dict(region="left", ip_weight=3.5), r"^ip_weight: 3.5 is out of range"),
        (dict(region="left", cn_strength=-1.0), r"^cn_strength: -1.0 is out of range"),
    ],
)
def test_person_checks_its_fields_on_construction(kwargs, expected):
    with pytest.raises(ParameterError, match=expected):
        Person(["face.png"], **kwargs)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("face=a.png", "--person 2: region: no region given"),
        ("face=a.png,region=middle", "--person 2: region: 'middle' is not one of"),
        ("face=a.png,regio=left", "--person 2: unknown key 'regio'"),
        ("face=a.png,left", "--person 2: 'left' in 'face=a.png,left' is not KEY=VALUE"),
        ("region=left", "--person 2: no face in 'region=left'"),
        ("face=a.png,region=left,ip_weight=high", "--person 2: ip_weight 'high' is not a number"),
        ("face=a.png,box=1:2:x:4", "--person 2: box '1:2:x:4' is not x1:y1:x2:y2"),
        ("face=a.png,region=left,region=right", "--person 2: region given twice"),
    ],
)
def test_malformed_person_text_is_a_one_line_error(text, expected):
    with pytest.raises(ParameterError) as info:
        parse_person(text, 2)
    assert _one_line(info.value).startswith(expected)


def test_person_text_parses_every_key():
    person = parse_person(
        "face=a.png,face=b.png,box=0:0:64:32,ip-weight=1.5,cn_strength=2,start_at=0.1,end_at=0.8", 1
    )
    assert person.faces == ["a.png", "b.png"] and person.box == (0, 0, 64, 32)
    assert (person.ip_weight, person.cn_strength, person.start_at, person.end_at) == (1.5, 2.0, 0.1, 0.8)
    assert parse_person("face=a.png,mask=m.png", 1).mask == "m.png"


# ---- the CLI -------------------------------------------------------------------------------------------------


def test_cli_two_persons_write_the_image_and_the_recipe(tiny_kit, faces, tmp_path, capsys):
    out = tmp_path / "two.png"
    code = main(
        [
            "instantid", "--person", f"face={faces['a']},region=left,ip_weight=1.2",
            "--person", f"face={faces['b']},region=right,cn_strength=0.4,end_at=0.7",
            "--prompt", "two people", "--models", str(tiny_kit), "--steps", "1", "--width", str(WIDTH),
            "--height", str(HEIGHT), "--seed", "4", "--quiet", "--json", "-o", str(out),
        ]
    )  # fmt: skip
    assert code == 0
    printed = json.loads(capsys.readouterr().out)
    assert [p["region"]["given"] for p in printed["persons"]] == ["left", "right"]
    assert printed["persons"][0]["ip_weight"] == 1.2 and printed["persons"][1]["cn_strength"] == 0.4
    assert printed["persons"][1]["end_at"] == 0.7 and printed["persons"][0]["faces"][0]["image"] == str(
        faces["a"]
    )
    recipe = read_recipe(out)
    assert recipe["persons"] == printed["persons"] and recipe["seed"] == 4


@pytest.mark.parametrize(
    ("persons", "expected"),
    [
        (
            ["face={a},region=left", "face={b},region=left"],
            "person 1/person 2 regions: left and left overlap",
        ),
        (["face={a},region=left", "face={b},region=centre"], "--person 2: region: 'centre' is not one of"),
        (["face={a},region=left", "face={empty},region=right"], "person 2 face {empty}: no face found"),
        ([], "--face: required: a reference face, or several persons"),
    ],
)
def test_cli_bad_persons_are_one_line_errors(tiny_kit, faces, tmp_path, capsys, persons, expected):
    names = {key: str(path) for key, path in faces.items()}
    argv = ["instantid", "--prompt", "x", "--models", str(tiny_kit), "--quiet", "-o", str(tmp_path / "x.png")]
    argv += ["--width", str(WIDTH), "--height", str(HEIGHT)]
    for text in persons:
        argv += ["--person", text.format(**names)]
    code = main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1
    assert err[0].startswith("idforge: error: " + expected.format(**names))


# ---- FaceID ----------------------------------------------------------------------------------------------------

FACEID_SD15 = "ip-adapter-faceid_sd15.bin"


def faceid_persons(faces, first="left", second="right", **kwargs):
    from idforge.methods.faceid.core import FaceIDRequest

    return FaceIDRequest(
        persons=[Person([faces["a"]], region=first, ip_weight=0.7), Person([faces["b"]], region=second)],
        generation=kwargs.pop("generation", gen()),
        adapter=kwargs.pop("adapter", FACEID_SD15),
        **kwargs,
    )


@pytest.mark.parametrize("order", [("left", "right"), ("right", "left")])
def test_faceid_each_persons_ip_attention_is_zero_outside_its_region(engine, faces, monkeypatch, order):
    from idforge.methods.faceid.generate import generate_faceid

    records = record_ip(monkeypatch)
    result = generate_faceid(engine, faceid_persons(faces, *order))
    latent_hw = (HEIGHT // 8, WIDTH // 8)
    names = {"person1": order[0], "person2": order[1]}
    assert {name for name, _, _ in records} == set(names)
    for name, num_tokens, out in records:
        grid_h, grid_w = mask_grid(latent_hw, num_tokens)
        grid = out.reshape(out.shape[0], grid_h, grid_w, -1)
        inside, outside = _half_columns(names[name], grid_w)
        assert grid[:, :, outside].abs().max().item() == 0.0, (name, num_tokens)
        assert grid[:, :, inside].abs().mean().item() > 1e-6, (name, num_tokens)
    first, second = result.recipe["persons"]
    assert (first["weight"], second["weight"]) == (0.7, 1.0)  # the person's own, else the request's
    assert first["region"]["given"] == order[0] and result.recipe["method"] == "faceid"
    assert len(result.recipe["identity"]["persons"]) == 2


def test_faceid_persons_refuse_what_does_not_apply(engine, faces):
    from idforge.methods.faceid.core import FaceIDParams, FaceIDRequest
    from idforge.methods.faceid.generate import generate_faceid

    with pytest.raises(ParameterError, match=r"^person 2 cn_strength: FaceID has no IdentityNet"):
        generate_faceid(
            engine,
            FaceIDRequest(
                persons=[
                    Person([faces["a"]], region="left"),
                    Person([faces["b"]], region="right", cn_strength=1),
                ]
            ),
        )
    with pytest.raises(ParameterError, match=r"^batch:"):
        generate_faceid(engine, faceid_persons(faces, faceid=FaceIDParams(batch=True)))
    with pytest.raises(ParameterError, match=r"^person 1/person 2 regions: left and left overlap"):
        generate_faceid(engine, faceid_persons(faces, "left", "left"))
    with pytest.raises(NoFaceError, match=r"^person 2 face .*empty.png: no face found"):
        generate_faceid(
            engine,
            FaceIDRequest(
                persons=[Person([faces["a"]], region="left"), Person([faces["empty"]], region="right")],
                generation=gen(),
                adapter=FACEID_SD15,
            ),
        )


def test_cli_faceid_two_persons(tiny_kit, faces, tmp_path, capsys):
    out = tmp_path / "faceid.png"
    code = main(
        [
            "faceid", "--person", f"face={faces['a']},region=top,ip_weight=0.5",
            "--person", f"face={faces['b']},region=bottom", "--adapter", FACEID_SD15,
            "--prompt", "two people", "--models", str(tiny_kit), "--steps", "1", "--width", "64",
            "--height", "128", "--seed", "2", "--quiet", "--json", "-o", str(out),
        ]
    )  # fmt: skip
    assert code == 0
    printed = json.loads(capsys.readouterr().out)
    assert [p["region"]["box"] for p in printed["persons"]] == [[0, 0, 64, 64], [0, 64, 64, 128]]
    assert read_recipe(out)["persons"][0]["weight"] == 0.5


def test_best_of_ranks_persons_images_by_their_lowest_person_score(engine, faces, monkeypatch):
    """Candidates whose decoded picture shows both faces score; the seed whose picture loses a face ranks last."""
    picture = Image.open(faces["two"]).convert("RGB").resize((WIDTH * 2, HEIGHT * 2))
    blank = Image.new("RGB", picture.size, (20, 20, 20))
    one_face = blank.copy()
    one_face.paste(picture.crop((0, 0, WIDTH, HEIGHT * 2)), (0, 0))

    def stub(engine_, base, gen_, seeds, size_, attention, controls, progress):
        return torch.zeros(len(seeds), 4, 1, 1), [(one_face if s % 2 else picture).copy() for s in seeds]

    monkeypatch.setattr(persons_module, "sample_and_decode", stub)
    result = generate_instantid(
        engine, two_persons(faces, generation=gen(width=WIDTH * 2, height=HEIGHT * 2, seed=10, best_of=3))
    )
    ranking = result.recipe["best_of"]["ranking"]
    assert [entry["seed"] for entry in ranking][-1] == 11  # its right half has no face: person 2 is no_face
    assert ranking[-1]["status"] == "no_face" and ranking[0]["status"] == "scored"
    assert result.recipe["best_of"]["chosen_seed"] in (10, 12) and len(result.recipe["persons"]) == 2


def test_ready_keypoint_image_is_cut_to_each_region(engine, faces, tmp_path):
    posed = generate_instantid(engine, two_persons(faces, pose=faces["two"]))
    drawn = tmp_path / "kps.png"
    posed.extras["kps_image"].save(drawn)
    ready = generate_instantid(engine, two_persons(faces, kps_image=drawn))
    assert [p["kps"]["source"] for p in ready.recipe["persons"]] == ["kps_image", "kps_image"]
    # The two halves together are the drawn image again; the same keypoints as from the pose, so the same latents.
    assert np.array_equal(np.asarray(ready.extras["kps_image"]), np.asarray(posed.extras["kps_image"]))
    assert torch.allclose(ready.latents, posed.latents, atol=1e-6)
