"""Recipes: what ran is recorded (device, dtype, fast-path switches, scheduler, input hashes), a recipe reads back
as the same `Recipe`, and an image regenerates bit for bit from its recipe alone plus its input images."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from idforge.cli import main
from idforge.engine.fastpath import FastPath
from idforge.engine.params import GenerationParams
from idforge.engine.recipe import RECIPE_FORMAT, Recipe
from idforge.engine.result import read_recipe, save_png_with_recipe
from idforge.engine.session import Engine, ModelChoice, image_digest
from idforge.errors import InputImageError, ParameterError
from idforge.methods.faceid.core import FaceIDParams, FaceIDRequest
from idforge.methods.faceid.generate import generate_faceid
from idforge.methods.instantid.core import InstantIDRequest
from idforge.methods.instantid.generate import generate_instantid
from idforge.methods.instantid.params import InstantIDParams
from idforge.methods.reproduce import load_recipe, reproduce
from instantid_fixtures import square_face

SIZE = 64
FAST = FastPath(channels_last=True, fused_qkv=True)  # off by default; both exact enough to run on the CPU


@pytest.fixture(scope="module")
def engine(tiny_kit):
    return Engine(ModelChoice(models_dirs=[str(tiny_kit)]), device="cpu", dtype="float32", fast=FAST)


@pytest.fixture(scope="module")
def faces(tmp_path_factory):
    folder = tmp_path_factory.mktemp("recipe_faces")
    return [square_face(folder / "a.png", stripes=3), square_face(folder / "b.png", stripes=6)]


@pytest.fixture(scope="module")
def instantid_run(engine, faces, tmp_path_factory):
    """Two InstantID images with non-default sampler and InstantID settings, saved as PNGs."""
    request = InstantIDRequest(
        faces=[faces[0]],
        generation=GenerationParams(
            prompt="a portrait",
            negative_prompt="blurry",
            steps=3,
            guidance=4.0,
            scheduler="dpmpp_2m",
            seed=123,
            width=SIZE,
            height=SIZE,
            num_images=2,
        ),
        instantid=InstantIDParams(ip_weight=1.1, cn_strength=0.6, start_at=0.1, end_at=0.9, noise=0.2),
    )
    result = generate_instantid(engine, request)
    written = result.save(tmp_path_factory.mktemp("recipe_out") / "iid.png")
    return result, written


def pixels(image) -> np.ndarray:
    if not isinstance(image, Image.Image):
        with Image.open(image) as opened:
            return np.asarray(opened.convert("RGB"))
    return np.asarray(image.convert("RGB"))


def test_recipe_records_what_ran_not_auto(instantid_run, faces):
    result, _ = instantid_run
    recipe = result.recipe
    assert recipe["recipe_format"] == RECIPE_FORMAT and recipe["seeds"] == [123, 124]
    runtime = recipe["runtime"]
    assert runtime["device"] == "cpu" and runtime["dtype"] == "float32"
    assert runtime["vae_dtype"] == "float32" and runtime["vae_decode_dtype"] == "float32"
    assert runtime["fast"] == FAST.as_dict()
    assert runtime["fast"]["channels_last"] is True and runtime["fast"]["fused_qkv"] is True
    assert runtime["scheduler"]["name"] == "dpmpp_2m"
    assert runtime["scheduler"]["class"] == "DPMSolverMultistepScheduler"
    assert runtime["scheduler"]["config"]["algorithm_type"] == "dpmsolver++"
    assert runtime["torch"] and runtime["diffusers"]
    assert recipe["params"]["device"] == "cpu" and recipe["params"]["dtype"] == "float32"  # not "auto"
    face = recipe["inputs"]["faces"][0]
    assert face["image"] == str(faces[0])
    assert face["pixels_sha256"] == image_digest(Image.open(faces[0]).convert("RGB"))
    # the keys every consumer (tests, server, studio) reads are all still there
    for key in (
        "method",
        "idforge_version",
        "seed",
        "width",
        "height",
        "params",
        "models",
        "inputs",
        "timings",
    ):
        assert key in recipe
    assert recipe["params"]["ip_weight"] == 1.1 and recipe["params"]["scheduler"] == "dpmpp_2m"
    assert recipe["param_groups"]["instantid"][0] == "ip_weight"


def test_recipe_round_trips(instantid_run):
    result, written = instantid_run
    recipe = Recipe.from_dict(result.recipe)
    assert recipe.to_dict() == result.recipe
    assert Recipe.from_dict(json.loads(json.dumps(recipe.to_dict()))) == recipe
    assert recipe.method == "instantid" and recipe.seed == 123 and recipe.seeds == [123, 124]
    assert recipe.method_params["instantid"]["cn_strength"] == 0.6
    assert recipe.generation["guidance"] == 4.0 and "ip_weight" not in recipe.generation
    assert recipe.runtime.fast_path() == FAST and recipe.runtime.device == "cpu"
    assert recipe.sections["identity"] == result.recipe["identity"]
    per_image = Recipe.from_dict(read_recipe(written[1]))
    assert per_image.seeds == [124] and per_image.generation["num_images"] == 1
    assert per_image.sections["batch_size"] == 2 and per_image.sections["batch_index"] == 1
    with pytest.raises(ValueError, match="params"):
        Recipe(method="x", seeds=[1], width=8, height=8, generation={}, sections={"params": 1}).to_dict()


def test_a_recipe_from_before_the_runtime_section_still_reads():
    old = {
        "method": "instantid",
        "idforge_version": "0.1.0",
        "seed": 7,
        "width": 64,
        "height": 64,
        "params": {
            "prompt": "p",
            "steps": 2,
            "seed": 7,
            "dtype": "auto",
            "ip_weight": 0.9,
            "cn_strength": 0.8,
        },
        "models": {},
        "inputs": {},
        "timings": {},
        "identity": {"images": []},
    }
    recipe = Recipe.from_dict(old)
    assert recipe.recipe_format == 1 and recipe.runtime is None and recipe.seeds == [7]
    assert recipe.generation == {"prompt": "p", "steps": 2, "seed": 7, "dtype": "auto"}
    assert recipe.method_params == {"instantid": {"ip_weight": 0.9, "cn_strength": 0.8}}
    assert recipe.params == old["params"] and recipe.sections == {"identity": {"images": []}}


def test_instantid_image_regenerates_bit_for_bit_from_its_png(instantid_run, tiny_kit):
    """Image 1 of a batch of 2, from its PNG alone: the face is found by its recorded path, the engine opened with
    the recorded device, dtype and switches, and the batch regenerated from its first seed."""
    result, written = instantid_run
    done = reproduce(written[1], models_dirs=[tiny_kit])
    assert done.differences == []
    assert done.index == 1 and done.result.seeds == [123, 124]
    assert np.array_equal(pixels(done.image), pixels(written[1]))
    assert np.array_equal(pixels(done.image), pixels(result.images[1]))
    assert done.result.recipe["runtime"] == result.recipe["runtime"]  # the same switches, dtype and device
    assert done.image_recipe()["seed"] == 124


def test_faceid_image_regenerates_bit_for_bit_with_faces_given(engine, faces, tiny_kit, tmp_path):
    """A FaceID recipe as the HTTP API returns it (a dict), the faces given as bytes; a wrong face is refused."""
    request = FaceIDRequest(
        faces=faces,
        generation=GenerationParams(
            prompt="a photo", steps=2, guidance=6.0, scheduler="euler_a", seed=77, width=SIZE, height=SIZE
        ),
        faceid=FaceIDParams(weight=0.7, weight_type="ease in", combine_embeds="average", lora_strength=0.4),
        adapter="ip-adapter-faceid_sd15.bin",
    )
    result = generate_faceid(engine, request)
    recipe = json.loads(json.dumps(result.recipe))
    assert recipe["runtime"]["dtype"] == "float32" and recipe["runtime"]["device"] == "cpu"
    assert recipe["adapter_kind"] == "faceid" and recipe["param_groups"]["faceid"][0] == "weight"
    given = [f.read_bytes() for f in faces]
    done = reproduce(recipe, faces=given, models_dirs=[tiny_kit])
    assert done.differences == []
    assert np.array_equal(pixels(done.image), pixels(result.images[0]))

    with pytest.raises(InputImageError, match="not the image this recipe was made from"):
        reproduce(recipe, faces=list(reversed(given)), models_dirs=[tiny_kit])
    with pytest.raises(ParameterError, match="1 images given"):
        reproduce(recipe, faces=given[:1], models_dirs=[tiny_kit])
    moved = dict(
        recipe,
        inputs=dict(recipe["inputs"], faces=[dict(f, image="<image>") for f in recipe["inputs"]["faces"]]),
    )
    with pytest.raises(InputImageError, match="pass it as `faces`"):
        reproduce(moved, models_dirs=[tiny_kit])


def test_cli_reproduce_checks_pixels(instantid_run, tiny_kit, tmp_path, capsys):
    """`idforge reproduce IMAGE --check`, after the face moved: it is found beside the PNG by its file name."""
    _, written = instantid_run
    recipe = read_recipe(written[0])
    original_face = recipe["inputs"]["faces"][0]["image"]
    recipe["inputs"]["faces"][0]["image"] = str(tmp_path / "gone" / "a.png")
    folder = tmp_path / "moved"
    folder.mkdir()
    (folder / "a.png").write_bytes(open(original_face, "rb").read())
    image = Image.open(written[0]).convert("RGB")
    save_png_with_recipe(image, folder / "iid.png", recipe)
    out = tmp_path / "again.png"
    argv = ["reproduce", str(folder / "iid.png"), "-o", str(out), "--models", str(tiny_kit), "--check"]
    assert main(argv) == 0
    assert "identical to" in capsys.readouterr().out
    assert np.array_equal(pixels(out), pixels(written[0])) and read_recipe(out)["seed"] == 123

    save_png_with_recipe(Image.fromarray(255 - pixels(image)), folder / "tampered.png", recipe)
    argv[1] = str(folder / "tampered.png")
    assert main(argv) == 1
    assert "differs from" in capsys.readouterr().out
    (folder / "recipe.json").write_text(json.dumps({"status": "COMPLETED", "recipe": recipe}))
    assert load_recipe(folder / "recipe.json") == Recipe.from_dict(recipe)


def test_insta_depth_image_regenerates_bit_for_bit(engine, faces, tiny_kit, tmp_path):
    from idforge.methods.insta_depth.generate import InstaDepthParams, InstaDepthRequest, generate_insta_depth

    pose = square_face(tmp_path / "pose.png", size=(320, 256), box=(30, 40, 110, 120))
    request = InstaDepthRequest(
        face=faces[1],
        pose=pose,
        generation=GenerationParams(
            prompt="a portrait", steps=2, guidance=3.0, seed=9, width=SIZE, height=SIZE
        ),
        depth=InstaDepthParams(depth_strength=0.7, depth_end_at=0.8),
    )
    result = generate_insta_depth(engine, request)
    recipe = result.recipe
    assert recipe["param_groups"]["depth"] == ["depth_strength", "depth_start_at", "depth_end_at"]
    assert set(recipe["inputs"]["pixels_sha256"]) == {"face", "pose"}
    [png] = result.save(tmp_path / "depth.png")
    done = reproduce(png, models_dirs=[tiny_kit])
    assert done.differences == []
    assert np.array_equal(pixels(done.image), pixels(png))


def test_faceid_with_instantid_regenerates_bit_for_bit(engine, faces, tiny_kit, tmp_path):
    """FaceID plus v2 (CLIP vision) together with InstantID: both halves rebuilt from the recipe, faces by name."""
    generation = GenerationParams(prompt="a photo", steps=2, guidance=5.0, seed=31, width=SIZE, height=SIZE)
    result = generate_faceid(
        engine,
        FaceIDRequest(
            faces=[faces[0]],
            generation=generation,
            faceid=FaceIDParams(weight=0.6),
            adapter="ip-adapter-faceid-plusv2_sdxl.bin",
        ),
        instantid=InstantIDRequest(
            faces=[faces[1]], instantid=InstantIDParams(ip_weight=0.5, cn_strength=0.4)
        ),
    )
    assert result.recipe["method"] == "instantid+faceid"
    assert result.recipe["instantid"]["inputs"]["faces"][0]["image"] == str(faces[1])
    [png] = result.save(tmp_path / "both.png")
    done = reproduce(png, models_dirs=[tiny_kit])
    assert done.differences == []
    assert np.array_equal(pixels(done.image), pixels(png))


def test_instantid_persons_regenerate_bit_for_bit_with_their_box_and_mask_regions(
    engine, faces, tiny_kit, tmp_path
):
    """Two people, one by box with its own strength and window, one by mask image: each one's faces and mask are
    found by their recorded names and checked; a person's value equal to the request's stays the request's."""
    from idforge.methods.persons import Person

    mask = Image.new("L", (SIZE, SIZE), 0)
    mask.paste(255, (40, 0, SIZE, SIZE))
    mask_path = tmp_path / "right.png"
    mask.save(mask_path)
    request = InstantIDRequest(
        persons=[
            Person([faces[0]], box=(0, 0, 32, SIZE), cn_strength=0.5, start_at=0.1),
            Person([faces[1]], mask=str(mask_path), ip_weight=0.9),  # 0.9: the request's, recorded per person
        ],
        generation=GenerationParams(
            prompt="two people", steps=2, guidance=4.0, seed=17, width=SIZE, height=SIZE
        ),
        instantid=InstantIDParams(ip_weight=0.9),
    )
    result = generate_instantid(engine, request)
    assert result.recipe["persons"][1]["region"]["mask_sha256"] == image_digest(
        Image.open(mask_path).convert("RGB")
    )
    [png] = result.save(tmp_path / "two.png")
    done = reproduce(png, models_dirs=[tiny_kit])
    assert done.differences == []
    assert np.array_equal(pixels(done.image), pixels(png))
    assert done.result.recipe["persons"] == result.recipe["persons"]

    Image.new("L", (SIZE, SIZE), 255).save(mask_path)  # the mask changed since
    with pytest.raises(InputImageError, match="not the image this recipe was made from"):
        reproduce(png, models_dirs=[tiny_kit])
    with pytest.raises(ParameterError, match="each person's"):
        reproduce(png, faces=[faces[0]], models_dirs=[tiny_kit])


def test_faceid_persons_regenerate_bit_for_bit_and_a_lost_face_says_where_it_was_looked_for(
    engine, faces, tiny_kit, tmp_path
):
    from idforge.methods.persons import Person

    request = FaceIDRequest(
        persons=[Person([faces[0]], region="left", ip_weight=0.6), Person([faces[1]], region="right")],
        generation=GenerationParams(
            prompt="two people", steps=2, guidance=5.0, seed=3, width=SIZE, height=SIZE
        ),
        faceid=FaceIDParams(weight=0.8, lora_strength=0.3),
        adapter="ip-adapter-faceid_sd15.bin",
    )
    result = generate_faceid(engine, request)
    [png] = result.save(tmp_path / "pair.png")
    done = reproduce(png, models_dirs=[tiny_kit])
    assert done.differences == []
    assert np.array_equal(pixels(done.image), pixels(png))

    lost = read_recipe(png)
    lost["persons"][1]["faces"][0]["image"] = str(tmp_path / "gone" / "b.png")
    with pytest.raises(InputImageError, match="search folder") as caught:
        reproduce(lost, models_dirs=[tiny_kit])
    assert "pass it as" not in str(caught.value)  # a person's faces cannot be passed: only found
