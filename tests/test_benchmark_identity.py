"""benchmarks/identity.py --compare-methods: methods come from the registry, so a registered method is compared with
nothing added to the benchmark, an unknown name lists the registered ones, and --faceid-adapter / --pulid-model
still reach their method's request."""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
from pathlib import Path

import pytest
from PIL import Image
from pydantic import Field

from idforge.engine.params import GenerationParams
from idforge.engine.result import GenerationResult
from idforge.methods.body import MethodBody
from idforge.methods.registry import ImageInput, Method, MethodCall, method_names, register, unregister
from instantid_fixtures import square_face

BENCHMARK = Path(__file__).resolve().parents[1] / "benchmarks" / "identity.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("identity_benchmark", BENCHMARK)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class GreyBody(MethodBody):
    face_image: str = Field(..., description="reference face")
    shade: int = Field(90, ge=0, le=255, description="grey level of the output")


class FacelessBody(MethodBody):
    pass


RUNS: list[dict] = []


def _build(call: MethodCall) -> dict:
    return {"shade": call.params["shade"], "faces": call.faces(), "generation": call.generation}


def _run(engine, request: dict, progress) -> GenerationResult:
    RUNS.append(request)
    gen = request["generation"]
    image = Image.new("RGB", (gen.width, gen.height), (request["shade"],) * 3)  # no face: scored None
    return GenerationResult(images=[image], seeds=[gen.seed], recipe={"method": "grey"})


GREY = Method(
    name="grey",
    title="Grey",
    summary="one grey image",
    body=GreyBody,
    images=(ImageInput("face_image", "--face", "reference face", required=True),),
    build_request=_build,
    run=_run,
)
FACELESS = Method(
    name="faceless",
    title="Faceless",
    summary="takes no face",
    body=FacelessBody,
    images=(),
    build_request=_build,
    run=_run,
)


@pytest.fixture
def registered():
    register(GREY)
    register(FACELESS)
    RUNS.clear()
    try:
        yield
    finally:
        unregister("grey")
        unregister("faceless")


def run_main(bench, monkeypatch, *argv: str) -> None:
    monkeypatch.setattr(sys, "argv", ["identity.py", *argv])
    bench.main()


def test_a_registered_method_is_compared_at_its_body_defaults(
    bench, registered, tiny_kit, tmp_path, monkeypatch
):
    out = tmp_path / "methods.json"
    face = tmp_path / "face.png"
    square_face(face, stripes=0)  # the benchmark times scoring on it first: a face the kit's pack finds
    argv = ["--models", str(tiny_kit), "--face", str(face), "--compare-methods", "grey", "--presets", "none"]
    run_main(bench, monkeypatch, *argv, "--seeds", "2", "--seed", "5", "--size", "72", "--out", str(out))
    cells = json.loads(out.read_text())["cells"]
    assert [(cell["method"], cell["seeds"]) for cell in cells] == [("grey", [5, 6])]
    assert cells[0]["stats"] == {"n": 2, "scored": 0, "no_face": 2}
    assert [run["generation"].seed for run in RUNS] == [5, 6]
    assert {(run["generation"].width, run["generation"].height) for run in RUNS} == {(72, 72)}
    assert {run["shade"] for run in RUNS} == {GreyBody.model_fields["shade"].default}
    assert all(run["faces"] == [str(face)] for run in RUNS)


def test_an_unknown_method_is_refused_listing_the_registered_ones(bench, registered, monkeypatch):
    with pytest.raises(SystemExit) as unknown:
        run_main(bench, monkeypatch, "--compare-methods", "grey,nope")
    assert "'nope'" in str(unknown.value) and all(name in str(unknown.value) for name in method_names())
    with pytest.raises(SystemExit) as faceless:
        run_main(bench, monkeypatch, "--compare-methods", "faceless")
    assert "faceless takes no face_image" in str(faceless.value) and "grey" in str(faceless.value)
    assert RUNS == []  # refused before anything ran


def test_faceid_adapter_and_pulid_model_reach_their_requests(bench):
    gen = GenerationParams(prompt=bench.PROMPT, seed=0, width=64, height=64)
    args = argparse.Namespace(faceid_adapter="my-faceid.bin", pulid_model="pulid-v1")
    built = {}
    for name in ("faceid", "pulid"):
        fields, options = bench.method_settings(args)[name]
        built[name] = bench.method_request(bench.compared_method(name), "face.png", gen, fields, options)
    assert built["faceid"].adapter == "my-faceid.bin" and built["pulid"].model == "pulid-v1"
    assert list(built["faceid"].faces) == ["face.png"] and list(built["pulid"].faces) == ["face.png"]
    fields, options = bench.method_settings(argparse.Namespace(faceid_adapter=None, pulid_model="v9"))[
        "pulid"
    ]
    with pytest.raises(SystemExit, match="^pulid: model: "):
        bench.method_request(bench.compared_method("pulid"), "face.png", gen, fields, options)
