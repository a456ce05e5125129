"""The method registry: a method registered once appears in the CLI, /v1 and /v2, the OpenAPI schema and the
studio (test_studio.py); the same preset gives the same settings from the CLI, Python and HTTP."""

from __future__ import annotations

import base64
import io
import json
from dataclasses import dataclass, replace
from types import SimpleNamespace
from typing import Literal

import httpx
import numpy as np
import pytest
from PIL import Image
from pydantic import Field

from idforge.cli import build_parser, main
from idforge.engine.fewstep import FEW_STEP_PRESETS
from idforge.engine.params import GenerationParams
from idforge.engine.result import GenerationResult, read_recipe
from idforge.methods.body import MethodBody
from idforge.methods.instantid.core import InstantIDRequest
from idforge.methods.registry import ImageInput, Method, MethodCall, register, unregister
from server_fixtures import b64, face_b64, finished_result, running_server


class DummyBody(MethodBody):
    """A method that paints the output one colour: enough to see every surface pick it up."""

    face_image: str = Field(..., description="any image")
    shade: int = Field(128, ge=0, le=255, description="grey level of the output")
    tint: Literal["grey", "red"] = Field("grey", description="colour of the output")


def _build(call: MethodCall) -> dict:
    return {"params": call.params, "generation": call.generation, "face": call.image("face_image")}


def _run(engine, request, progress) -> GenerationResult:
    params, generation = request["params"], request["generation"]
    size = (generation.width or 64, generation.height or 64)
    colour = (params["shade"],) * 3 if params["tint"] == "grey" else (params["shade"], 0, 0)
    progress(1, 1)
    recipe = {
        "method": "dummy",
        "params": {"shade": params["shade"], "tint": params["tint"]},
        "seed": generation.seed or 0,
        "width": size[0],
        "height": size[1],
    }
    return GenerationResult(
        images=[Image.new("RGB", size, colour)], seeds=[generation.seed or 0], recipe=recipe
    )


DUMMY = Method(
    name="dummy",
    title="Dummy",
    summary="Dummy: one colour",
    body=DummyBody,
    images=(ImageInput("face_image", "--face", "any image", required=True),),
    build_request=_build,
    run=_run,
)


@pytest.fixture
def dummy():
    register(DUMMY)
    try:
        yield DUMMY
    finally:
        unregister("dummy")


def test_a_registered_method_is_a_cli_command_with_its_body_flags(dummy, tmp_path, capsys):
    parser = build_parser()
    help_text = parser.format_help()
    assert "dummy" in help_text
    face = _face_file(tmp_path)
    out = tmp_path / "dummy.png"
    argv = ["dummy", "--face", str(face), "--prompt", "x", "--shade", "200", "--tint", "red"]
    assert main([*argv, "--width", "64", "--height", "64", "--seed", "3", "-o", str(out), "--quiet"]) == 0
    pixels = np.asarray(Image.open(out).convert("RGB"))
    assert pixels.shape == (64, 64, 3) and tuple(pixels[0, 0]) == (200, 0, 0)
    params = read_recipe(out)["params"]
    assert (params["shade"], params["tint"], params["seed"]) == (200, "red", 3)


def test_a_bad_choice_on_the_cli_is_refused_with_the_choices(dummy, tmp_path, capsys):
    code = main(
        ["dummy", "--face", "f.png", "--prompt", "x", "--tint", "blue", "-o", str(tmp_path / "o.png")]
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1, err  # one line, not argparse's usage
    assert "--tint: 'blue' is not one of 'grey', 'red'" in err[0]
    assert not (tmp_path / "o.png").exists()


def test_a_registered_method_is_served_documented_and_runs_as_a_job(dummy, tmp_path):
    with running_server(tmp_path / "s.db", None, warm_up=()) as (url, keys):
        record, token = keys.create_key(10)
        client = httpx.Client(base_url=url, headers={"x-api-key": token}, timeout=60)
        schema = client.get("/openapi.json").json()
        assert {"/v1/dummy", "/v2/dummy"} <= set(schema["paths"])
        operation = schema["paths"]["/v2/dummy"]["post"]
        assert operation["x-idforge-method"]["title"] == "Dummy"
        body = schema["components"]["schemas"]["DummyBody"]["properties"]
        assert (body["shade"]["minimum"], body["shade"]["maximum"], body["shade"]["default"]) == (0, 255, 128)
        bad = client.post("/v2/dummy", json={"prompt": "x", "face_image": face_b64(), "shade": 300})
        assert bad.status_code == 400 and bad.json()["field"] == "shade"
        job = client.post(
            "/v2/dummy",
            json={"prompt": "x", "face_image": face_b64(), "shade": 40, "width": 64, "height": 64, "seed": 5},
        )
        assert job.status_code == 202, job.text
        result = finished_result(client, job.json()["response_url"])
        assert result["status"] == "COMPLETED", result
        assert (result["recipe"]["params"]["shade"], result["recipe"]["params"]["tint"]) == (40, "grey")
        assert keys.get(record.id).balance == 10 - result["credits"]
        client.close()


def _face_file(tmp_path):
    path = tmp_path / "face.png"
    path.write_bytes(base64.b64decode(face_b64()))
    return path


@pytest.mark.parametrize("preset", ["lightning-2"])
def test_a_preset_gives_the_same_strengths_from_cli_python_and_http(tiny_kit, tmp_path, preset):
    expected = FEW_STEP_PRESETS[preset].identity
    # Python: a request that leaves the strengths out takes the preset's
    python = InstantIDRequest(
        faces=["f.png"], generation=GenerationParams(prompt="p", preset=preset)
    ).instantid
    # CLI
    face = _face_file(tmp_path)
    out = tmp_path / "cli.png"
    argv = ["instantid", "--face", str(face), "--prompt", "p", "--preset", preset, "--width", "64"]
    argv += ["--height", "64", "--seed", "1", "--models", str(tiny_kit), "-o", str(out), "--quiet"]
    assert main(argv) == 0
    cli = read_recipe(out)["params"]
    # HTTP
    with running_server(tmp_path / "s.db", None, models_dirs=[str(tiny_kit)], warm_up=()) as (url, keys):
        _, token = keys.create_key(100)
        with httpx.Client(base_url=url, headers={"x-api-key": token}, timeout=300) as client:
            body = {"prompt": "p", "face_image": b64(face.read_bytes()), "preset": preset}
            response = client.post("/v2/instantid", json=body | {"width": 64, "height": 64, "seed": 1})
            assert response.status_code == 202, response.text
            result = finished_result(client, response.json()["response_url"])
    assert result["status"] == "COMPLETED", json.dumps(result)[:500]
    http = result["recipe"]["params"]
    for name in ("ip_weight", "cn_strength"):
        assert python.__dict__[name] == cli[name] == http[name] == expected[name], name
    assert (cli["steps"], cli["guidance"]) == (http["steps"], http["guidance"])


def _v2_result(client: httpx.Client, slug: str, body: dict) -> dict:
    response = client.post(f"/v2/{slug}", json=body)
    assert response.status_code == 202, response.text
    return finished_result(client, response.json()["response_url"])


def test_insta_depth_takes_the_same_controls_from_the_cli_and_http(tiny_kit, tmp_path):
    """The command is built from the body: every Insta Depth control (InstantID window, noise, face region, depth
    window, a given depth map) reaches the engine the same way from both, and gives the same image."""
    face = _face_file(tmp_path)
    depth = tmp_path / "depth.png"
    Image.fromarray(np.tile(np.linspace(0, 255, 64, dtype=np.uint8), (64, 1))).save(depth)
    controls = {"start_at": 0.1, "end_at": 0.9, "noise": 0.2, "depth_start_at": 0.25, "depth_end_at": 0.75}
    out = tmp_path / "cli.png"
    argv = [
        "insta-depth",
        "--face",
        str(face),
        "--pose",
        str(face),
        "--depth-map",
        str(depth),
        "--prompt",
        "p",
    ]
    argv += ["--width", "64", "--height", "64", "--seed", "3", "--steps", "4", "--models", str(tiny_kit)]
    argv += ["--enhance-face-region", "--no-score", "-o", str(out), "--quiet"]
    for name, value in controls.items():
        argv += ["--" + name.replace("_", "-"), str(value)]
    assert main(argv) == 0
    cli = read_recipe(out)
    body = {"prompt": "p", "face_image": b64(face.read_bytes()), "pose_image": b64(face.read_bytes())}
    body |= {"depth_map": b64(depth.read_bytes()), "enhance_face_region": True, "num_inference_steps": 4}
    body |= {"width": 64, "height": 64, "seed": 3, "score_models": None} | controls
    with running_server(tmp_path / "s.db", None, models_dirs=[str(tiny_kit)], warm_up=()) as (url, keys):
        _, token = keys.create_key(100)
        with httpx.Client(base_url=url, headers={"x-api-key": token}, timeout=300) as client:
            result = _v2_result(client, "insta-depth", body)
    assert result["status"] == "COMPLETED", json.dumps(result)[:500]
    http = result["recipe"]
    for name, value in controls.items():
        assert cli["params"][name] == http["params"][name] == value, name
    assert cli["params"]["enhance_face_region"] is http["params"]["enhance_face_region"] is True
    assert cli["inputs"]["pixels_sha256"]["depth_map"] == http["inputs"]["pixels_sha256"]["depth_map"]
    # the same image: the v2 output is a JPEG, so the CLI's PNG goes through the same JPEG encoding first
    from idforge.server.jobs import encode_jpeg

    served = np.asarray(
        Image.open(io.BytesIO(base64.b64decode(result["output"]["images"][0]))).convert("RGB")
    )
    cli_jpeg = np.asarray(Image.open(io.BytesIO(encode_jpeg(Image.open(out)))).convert("RGB"))
    diff = {k: (v, http["params"].get(k)) for k, v in cli["params"].items() if http["params"].get(k) != v}
    assert np.array_equal(served, cli_jpeg), (diff, cli.get("runtime"), http.get("runtime"))


def test_a_registered_method_with_from_recipe_is_reproduced_from_its_recipe():
    """`idforge reproduce` reads the registry: a method that declares `from_recipe` is reproducible with no
    change to methods/reproduce.py, and an unknown recipe method names the reproducible ones."""
    from dataclasses import replace

    from idforge.errors import ParameterError
    from idforge.methods.reproduce import reproduce

    def from_recipe(call) -> dict:
        values = {"shade": call.recipe.params["shade"], "tint": call.recipe.params["tint"]}
        return {"params": values, "generation": call.generation, "face": None}

    register(replace(DUMMY, from_recipe=from_recipe))
    try:
        original = _run(
            None, {"params": {"shade": 40, "tint": "red"}, "generation": GenerationParams()}, print
        )
        recipe = original.recipe
        again = reproduce(recipe, progress=lambda step, total: None)
        assert np.array_equal(np.asarray(again.image), np.asarray(original.images[0]))
        assert np.asarray(again.image)[0, 0].tolist() == [40, 0, 0]
        with pytest.raises(ParameterError, match="'nobody' cannot be reproduced .*dummy"):
            reproduce(recipe | {"method": "nobody"})
    finally:
        unregister("dummy")


def test_by_default_the_server_warms_up_every_registered_method(dummy, tmp_path, monkeypatch):
    """No --warm-up: every method's models load before ready, a registered one's and PuLID's included (the
    default was once a hand-written list that missed PuLID)."""
    from idforge.engine.session import ModelChoice
    from idforge.methods.registry import method_names
    from idforge.server.app import create_app
    from idforge.server.config import ServerConfig
    from idforge.server.methods import EngineGenerator
    from server_fixtures import FakeGenerator

    args = build_parser().parse_args(["serve"])
    assert args.warm_up is None and not args.no_warm_up
    app = create_app(ServerConfig(db_path=tmp_path / "s.db"), generator=FakeGenerator())
    try:
        assert app.state.server.queue.worker.warm_up is True  # the generator's own list: every method
    finally:
        app.state.server.store.close()

    generator = EngineGenerator(ModelChoice())
    warmed: list[str] = []
    monkeypatch.setattr(generator, "generate", lambda spec, progress: warmed.append(spec.method))
    assert generator.warm_up(lambda what: None) == {}
    assert warmed == list(method_names()) and {"pulid", "dummy"} <= set(warmed)


@dataclass
class DummyRequest:
    params: dict
    generation: GenerationParams
    face: object
    base: str | None = None
    palette: str | None = None  # a model file the dummy's workflow rule names


def _build_dataclass(call: MethodCall) -> DummyRequest:
    return DummyRequest(call.params, call.generation, call.image("face_image"))


def _run_dataclass(engine, request: DummyRequest, progress) -> GenerationResult:
    return _run(engine, {"params": request.params, "generation": request.generation}, progress)


class _Store:
    """A models store that finds every file, in a folder named after its role."""

    def resolve(self, role, name, local_only=True):
        return SimpleNamespace(path=f"/models/{role}/{name}")


DUMMY_GRAPH = {
    "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "base.safetensors"}},
    "2": {"class_type": "LoadImage", "inputs": {"image": "face.png"}},
    "3": {"class_type": "DummyPaint", "inputs": {"model": ["1", 0], "image": ["2", 0], "shade": 40}},
    "4": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["1", 1], "text": "a red square"}},
    "5": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["1", 1], "text": ""}},
    "6": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
    "7": {
        "class_type": "KSampler",
        "inputs": {
            "model": ["3", 0],
            "positive": ["4", 0],
            "negative": ["5", 0],
            "latent_image": ["6", 0],
            "seed": 3,
            "steps": 4,
            "cfg": 3.0,
            "sampler_name": "euler",
            "scheduler": "normal",
            "denoise": 1.0,
        },
    },
    "8": {"class_type": "VAEDecode", "inputs": {"samples": ["7", 0], "vae": ["1", 2]}},
    "9": {"class_type": "SaveImage", "inputs": {"images": ["8", 0]}},
}


def test_a_registered_method_brings_its_comfyui_nodes_to_the_workflow_importer(tmp_path):
    """`Method.workflow` names the method's own ComfyUI module (tests/dummy_workflow.py): its node class, widget
    order, rule and model file reach `idforge workflow` with no change to the workflow package, and leave with
    the method."""
    from idforge.comfy.plan import UnsupportedNodesError
    from idforge.workflow.run import execute, load_workflow, open_workflow, prepare

    method = replace(DUMMY, build_request=_build_dataclass, run=_run_dataclass, workflow="dummy_workflow")
    register(method)
    try:
        plan = open_workflow(DUMMY_GRAPH, {"3.shade": 40})
        (gen,) = plan.generations
        assert gen.method == "dummy" and gen.params["shade"] == 40 and gen.sources["shade"] == "3.shade"
        assert "shade = 40 -> shade" in plan.explain_text()
        (item,) = prepare(plan, {"2": _face_file(tmp_path)}, _Store())
        assert item.request.palette == "/models/lora/palette.safetensors"
        assert item.request.base == "/models/base/base.safetensors"
        (result,) = execute(None, plan, [item], lambda step, total: None)
        assert result.images[0].getpixel((0, 0)) == (40, 40, 40)
        assert result.recipe["workflow"]["method"] == "dummy"
        ui = {
            "nodes": [
                {"id": 3, "type": "DummyPaint", "inputs": [], "widgets_values": [12, "other.safetensors"]}
            ],
            "links": [],
        }
        assert load_workflow(ui).graph["3"]["inputs"] == {"shade": 12, "palette": "other.safetensors"}
    finally:
        unregister("dummy")
    with pytest.raises(UnsupportedNodesError, match=r"node 3 \(DummyPaint\)"):
        open_workflow(DUMMY_GRAPH)
