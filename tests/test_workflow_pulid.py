"""PuLID's ComfyUI nodes (PulidModelLoader, PulidEvaClipLoader, PulidInsightFaceLoader, ApplyPulid,
ApplyPulidAdvanced) run through the workflow importer onto the `pulid` method: the same image as `idforge pulid`
with the same values, the node values explained, several ApplyPulid with masks as persons."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from idforge.cli import main
from idforge.engine.result import read_recipe
from idforge.errors import ParameterError
from idforge.workflow.run import open_workflow
from instantid_fixtures import square_face

FLOW = Path(__file__).parent / "data" / "workflows" / "pulid_advanced_api.json"


@pytest.fixture(scope="module")
def face(tmp_path_factory):
    return square_face(tmp_path_factory.mktemp("pulid-wf") / "face.png", stripes=3)


def test_apply_pulid_advanced_gives_the_image_of_the_pulid_command(tiny_kit, face, tmp_path, capsys):
    flow_out, cli_out = tmp_path / "flow.png", tmp_path / "cli.png"
    common = ["--models", str(tiny_kit), "--device", "cpu", "--dtype", "float32", "--quiet", "--no-score"]
    argv = ["workflow", "run", str(FLOW), "--set", f"8.image={face}", "-o", str(flow_out)]
    assert main([*argv, *common[:-1]]) == 0
    argv = ["pulid", "--face", str(face), "--prompt", "a portrait photo of a person, watercolor"]
    argv += ["--negative-prompt", "blurry", "--steps", "4", "--guidance", "1.2", "--seed", "11"]
    argv += ["--width", "64", "--height", "64", "--model", "pulid-v1", "--weight", "0.9"]
    argv += ["--projection", "ortho", "--fidelity", "12", "--noise", "0.1", "--end-at", "0.8"]
    argv += ["--base", "tiny-sdxl.safetensors", "-o", str(cli_out), *common]
    assert main(argv) == 0
    flow = np.asarray(Image.open(flow_out).convert("RGB"))
    cli = np.asarray(Image.open(cli_out).convert("RGB"))
    assert np.array_equal(flow, cli)
    recipe = read_recipe(flow_out)
    assert recipe["method"] == "pulid" and recipe["workflow"]["sampler"] == "10"
    params = recipe["params"]
    assert (params["weight"], params["projection"], params["fidelity"], params["noise"]) == (
        0.9,
        "ortho",
        12,
        0.1,
    )
    assert recipe["workflow"]["models"]["pulid"].endswith("pulid_v1.bin")
    capsys.readouterr()
    assert (
        main(
            [
                "workflow",
                "run",
                str(FLOW),
                "--set",
                f"8.image={face}",
                "--dry-run",
                "-o",
                "x.png",
                *common[:2],
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    for line in (
        "generation: KSampler 10 -> idforge pulid (outputs: node 12)",
        "fidelity = 12 -> fidelity",
        "projection = 'ortho' -> projection",
        "pulid_file = 'pulid_v1.bin' -> PuLID model (models folder: pulid/)",
        "pulid_file = 'pulid-v1' -> model",
    ):
        assert line in out, line


def _two_people(graph: dict) -> dict:
    """The same graph with two ApplyPulid (the simple node), each masked to one half."""
    graph = copy.deepcopy(graph)
    graph["4"]["inputs"] |= {"width": 96}
    graph["13"] = {"class_type": "SolidMask", "inputs": {"value": 0.0, "width": 96, "height": 64}}
    graph["14"] = {"class_type": "SolidMask", "inputs": {"value": 1.0, "width": 48, "height": 64}}
    graph["15"] = {
        "class_type": "MaskComposite",
        "inputs": {"destination": ["13", 0], "source": ["14", 0], "x": 0, "y": 0, "operation": "add"},
    }
    graph["16"] = {"class_type": "InvertMask", "inputs": {"mask": ["15", 0]}}
    graph["17"] = {"class_type": "LoadImage", "inputs": {"image": "other.png"}}
    links = {"pulid": ["5", 0], "eva_clip": ["6", 0], "face_analysis": ["7", 0]}
    graph["9"] = {
        "class_type": "ApplyPulid",
        "inputs": {"method": "style", "weight": 0.7, "start_at": 0.0, "end_at": 1.0, "model": ["1", 0]}
        | links
        | {"image": ["8", 0], "attn_mask": ["15", 0]},
    }
    graph["18"] = {
        "class_type": "ApplyPulid",
        "inputs": {"method": "style", "weight": 1.1, "start_at": 0.1, "end_at": 0.9, "model": ["9", 0]}
        | links
        | {"image": ["17", 0], "attn_mask": ["16", 0]},
    }
    graph["10"]["inputs"]["model"] = ["18", 0]
    return graph


def test_several_apply_pulid_with_masks_are_persons_and_must_agree():
    graph = json.loads(FLOW.read_text())
    (gen,) = open_workflow(_two_people(graph)).generations
    assert gen.method == "pulid" and gen.params["method"] == "style" and gen.params["model"] == "pulid-v1"
    assert [p.values["ip_weight"] for p in gen.persons] == [0.7, 1.1]
    assert gen.persons[1].values["start_at"] == 0.1 and [p.node for p in gen.persons] == ["9", "18"]
    differing = _two_people(graph)
    differing["18"]["inputs"]["method"] = "fidelity"
    with pytest.raises(ParameterError, match=r"node 18 method: every person of one image shares method"):
        open_workflow(differing)
    unmasked = _two_people(graph)
    del unmasked["18"]["inputs"]["attn_mask"]
    with pytest.raises(ParameterError, match=r"node 18 attn_mask: several ApplyPulid nodes"):
        open_workflow(unmasked)


def test_a_comfyui_seed_beyond_idforges_range_is_folded_and_said():
    """ComfyUI's random seeds go up to 2**64; a saved workflow with one runs, with the folded seed explained."""
    graph = json.loads(FLOW.read_text())
    graph["10"]["inputs"]["seed"] = 2**63 + 5
    plan = open_workflow(graph)
    (gen,) = plan.generations
    assert gen.params["seed"] == (2**63 + 5) % 1_000_000_000_000_000
    assert "folded into idforge's 0..999999999999999" in plan.explain_text()
    graph["10"]["inputs"]["seed"] = 12
    assert open_workflow(graph).generations[0].params["seed"] == 12
