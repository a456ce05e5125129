"""ComfyUI workflows (workflow/, `idforge workflow run`, POST /v2/workflow) on hand-written workflow files
(tests/data/workflows/: UI format 0.4 and 1.0, API format; PNGs made here) and the tiny kit."""

from __future__ import annotations

import base64
import io
import json
from dataclasses import replace
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image
from PIL.PngImagePlugin import PngInfo

from idforge.cli import main
from idforge.comfy.formats import apply_overrides, resolve_modes
from idforge.comfy.nodes import NodeTable
from idforge.comfy.plan import UnsupportedNodesError
from idforge.comfy.widgets import widget_inputs
from idforge.engine.recipe import Recipe
from idforge.engine.result import read_recipe
from idforge.errors import ParameterError
from idforge.models.store import ModelStore
from idforge.workflow.run import execute, load_workflow, open_workflow, prepare
from instantid_fixtures import square_face
from server_fixtures import WebhookReceiver, b64, finished_result, running_server, wait_for

DATA = Path(__file__).parent / "data" / "workflows"
UI04 = DATA / "instantid_advanced_ui04.json"
UI10 = DATA / "faceid_batch_ui10.json"
PERSONS = DATA / "two_persons_api.json"
DEPTH = DATA / "insta_depth_zoe_api.json"


@pytest.fixture(scope="module")
def faces(tmp_path_factory):
    folder = tmp_path_factory.mktemp("wf-faces")
    return {
        "a": square_face(folder / "a.png", stripes=3),
        "b": square_face(folder / "b.png", box=(60, 90, 190, 220), stripes=6),
        "pose": square_face(folder / "pose.png", size=(256, 256), box=(60, 50, 170, 160)),
    }


@pytest.fixture(scope="module")
def store(tiny_kit):
    return ModelStore([str(tiny_kit)], offline=True)


@pytest.fixture(scope="module")
def engine(tiny_kit):
    from idforge.engine.session import Engine, ModelChoice

    return Engine(ModelChoice(models_dirs=[str(tiny_kit)]), device="cpu", dtype="float32")


def _png_with(texts: dict[str, str]) -> bytes:
    info = PngInfo()
    for key, value in texts.items():
        info.add_text(key, value)
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), (50, 60, 70)).save(buffer, format="PNG", pnginfo=info)
    return buffer.getvalue()


# -- reading workflows (no models) ----------------------------------------------------------------------------------


def test_ui_04_widgets_primitives_reroutes_muted_and_bypassed_nodes():
    workflow = load_workflow(UI04)
    assert workflow.format == "ui-0.4"
    assert {"13", "14", "15"}.isdisjoint(
        workflow.graph
    )  # Reroute, Note, Primitive are not nodes of the graph
    sampler = workflow.graph["10"]["inputs"]
    assert sampler["seed"] == 7  # from the Primitive node, not the stale widget value
    assert (sampler["steps"], sampler["cfg"], sampler["sampler_name"], sampler["denoise"]) == (
        4,
        4.5,
        "euler",
        1,
    )
    assert workflow.graph["11"]["inputs"]["vae"] == ["1", 2]  # through the Reroute
    assert workflow.graph["8"]["inputs"] == {"image": "face.png"}  # the upload button's value is no input
    resolve_modes(workflow)
    assert "16" not in workflow.graph and "16" in workflow.muted  # muted PreviewImage dropped
    assert "17" not in workflow.graph
    assert workflow.graph["9"]["inputs"]["model"] == ["1", 0]  # the bypassed LoRA passes its MODEL through


def test_ui_10_links_as_objects_and_missing_trailing_widgets():
    workflow = load_workflow(UI10)
    assert workflow.format == "ui-1.0"
    assert workflow.graph["31"]["inputs"]["seed"] == 11  # "increment" after the seed skipped
    assert workflow.graph["31"]["inputs"]["denoise"] == 1.0  # missing trailing widget: the node's default
    assert workflow.graph["30"]["inputs"]["batch_size"] == 1
    assert workflow.graph["25"]["inputs"]["image"] == ["24", 0]


def test_widget_table_with_and_without_the_control_value():
    plain = widget_inputs("KSampler", [5, 20, 7.0, "euler", "normal", 1.0])
    control = widget_inputs("KSampler", [5, "fixed", 20, 7.0, "euler", "normal", 1.0])
    assert (
        plain
        == control
        == {
            "seed": 5,
            "steps": 20,
            "cfg": 7.0,
            "sampler_name": "euler",
            "scheduler": "normal",
            "denoise": 1.0,
        }
    )


def test_primitive_nodes_of_the_api_format_give_their_value(store, faces):
    graph = json.loads(UI04.read_text())
    workflow = load_workflow(graph)
    api = {nid: {k: v for k, v in node.items()} for nid, node in workflow.graph.items()}
    api["40"] = {"class_type": "PrimitiveFloat", "inputs": {"value": 0.55}, "_meta": {"title": "weight"}}
    api["9"]["inputs"]["ip_weight"] = ["40", 0]
    (item,) = prepare(open_workflow(api), {"8": faces["a"]}, store)
    assert item.call.params["ip_weight"] == 0.55


def test_png_prompt_chunk_first_then_workflow():
    api = json.loads(PERSONS.read_text())
    ui = json.loads(UI04.read_text())
    both = load_workflow(_png_with({"workflow": json.dumps(ui), "prompt": json.dumps(api)}), "saved.png")
    assert both.format == "png:api" and both.graph["17"]["class_type"] == "ApplyInstantID"
    ui_only = load_workflow(_png_with({"workflow": json.dumps(ui)}), "saved.png")
    assert ui_only.format == "png:ui-0.4" and ui_only.graph["9"]["class_type"] == "ApplyInstantIDAdvanced"
    with pytest.raises(ParameterError, match="no ComfyUI workflow"):
        load_workflow(_png_with({"parameters": "a1111"}), "other.png")


def test_unsupported_nodes_are_all_listed_with_id_title_and_hint(tmp_path, capsys):
    graph = json.loads(DEPTH.read_text())
    graph["30"] = {
        "class_type": "UpscaleModelLoader",
        "inputs": {"model_name": "x4.pth"},
        "_meta": {"title": "Upscaler"},
    }
    with pytest.raises(UnsupportedNodesError) as caught:
        open_workflow(graph)
    message = str(caught.value)
    assert "2 unsupported nodes" in message
    assert "node 7 'Zoe Depth Map' (Zoe-DepthMapPreprocessor)" in message and "--set 7.mode=4" in message
    assert "node 30 'Upscaler' (UpscaleModelLoader)" in message
    path = tmp_path / "zoe.json"
    path.write_text(json.dumps(graph))
    code = main(["workflow", "run", str(path), "-o", str(tmp_path / "o.png"), "--dry-run"])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("idforge: error:") and "Traceback" not in err and err.count("\n") == 1


def test_the_rule_is_chosen_by_what_it_takes_never_by_order():
    """Each method's rule declares its identity-node class and whether a ControlNet belongs to it: in any order
    the methods come, InstantID with a depth ControlNet is Insta Depth, without one InstantID; a second rule
    taking the same is refused."""
    import importlib

    from idforge.comfy.catalog import Catalog
    from idforge.comfy.core_nodes import CORE
    from idforge.comfy.plan import plan_workflow
    from idforge.methods.registry import methods

    supports = [(m.name, importlib.import_module(m.workflow).COMFY) for m in methods() if m.workflow]
    for order in (supports, supports[::-1]):
        known = Catalog.build(CORE, order)
        depth = load_workflow(DEPTH)
        apply_overrides(depth, {"7.mode": 4})
        resolve_modes(depth)
        assert [g.method for g in plan_workflow(depth, known).generations] == ["insta-depth"]
        assert [g.method for g in plan_workflow(load_workflow(PERSONS), known).generations] == ["instantid"]
    name, instantid = supports[0]
    with pytest.raises(RuntimeError, match="'instantid' and 'copy' both take InstantIDPatch nodes"):
        Catalog.build(CORE, [(name, instantid), ("copy", replace(instantid, nodes=NodeTable()))])


def test_explain_names_the_idforge_parameter_of_each_value(tiny_kit, faces, tmp_path, capsys):
    argv = ["workflow", "run", str(UI04), "--set", f"8.image={faces['a']}", "--models", str(tiny_kit)]
    assert main([*argv, "-o", str(tmp_path / "o.png"), "--dry-run"]) == 0
    out = capsys.readouterr().out
    for line in (
        "generation: KSampler 10 -> idforge instantid (outputs: node 12)",
        "ip_weight = 0.7 -> ip_weight",
        "cn_strength = 0.9 -> cn_strength",
        "seed = 7 -> seed",
        "cfg = 4.5 -> guidance_scale",
        "batch_size = 1 -> num_images",
        "instantid_file = 'ip-adapter.bin' -> InstantID ip-adapter",
    ):
        assert line in out, line
    assert not (tmp_path / "o.png").exists()


@pytest.mark.parametrize(
    ("sets", "field", "words"),
    [
        ({"9.ip_weight": 5}, "9.ip_weight", "less than or equal to 3"),
        ({"10.denoise": 0.5}, "10.denoise", "no img2img"),
        ({"10.sampler_name": "heun"}, "10.sampler_name", "no idforge equivalent"),
        ({"99.weight": 1}, "99.weight", "there is no node 99"),
        ({"10.steps": 2}, "10.steps", "greater than or equal to 4"),
    ],
)
def test_bad_values_name_the_node_and_input(store, faces, sets, field, words):
    with pytest.raises(ParameterError) as caught:
        plan = open_workflow(UI04, sets)
        prepare(plan, {"8": faces["a"]}, store)
    assert caught.value.field == field and words in str(caught.value)


def test_missing_image_and_model_files_name_their_node(store):
    plan = open_workflow(UI04)
    with pytest.raises(ParameterError) as caught:
        prepare(plan, {}, store)
    assert caught.value.field == "8.image"
    plan = open_workflow(UI04, {"5.instantid_file": "nowhere.bin"})
    with pytest.raises(ParameterError) as caught:
        prepare(plan, {"8": b"x"}, store)
    assert caught.value.field == "5.instantid_file" and "nowhere.bin" in str(caught.value)


def test_two_apply_instantid_with_masks_are_two_persons(store, faces):
    plan = open_workflow(PERSONS)
    (gen,) = plan.generations
    assert gen.method == "instantid" and gen.sampler == "21" and gen.outputs == ["23"]
    assert [p.node for p in gen.persons] == ["17", "18"]
    assert gen.persons[1].values == {"ip_weight": 0.7, "cn_strength": 0.7, "start_at": 0.0, "end_at": 0.9}
    left = np.asarray(Image.open(io.BytesIO(gen.persons[0].mask_png)))
    right = np.asarray(Image.open(io.BytesIO(gen.persons[1].mask_png)))
    assert left.shape == (64, 96) and left[:, :48].min() == 255 and left[:, 48:].max() == 0
    assert np.array_equal(right, 255 - left)
    (item,) = prepare(plan, {"11": faces["a"], "12": faces["b"]}, store)
    assert item.call.params["noise"] == 0.35  # "Apply InstantID" fixes noise at 0.35
    assert len(item.request.persons) == 2 and item.request.generation.seed == 99


def test_unified_faceid_loader_preset_and_batch_node(store, faces):
    plan = open_workflow(UI10)
    (item,) = prepare(plan, {"22": faces["a"], "23": faces["b"]}, store)
    params = item.call.params
    assert item.method.name == "faceid"
    assert params["adapter"] == "faceid-plusv2-sdxl" and params["lora_strength"] == 0.5
    assert params["batch"] is True and params["weight"] == 0.9 and params["weight_faceidv2"] == 1.2
    assert item.method.output_count(item.body) == 2  # batch: one output per reference
    assert params["negative_prompt"] is None and item.call.generation.guidance == 6


# -- generating on the tiny kit ---------------------------------------------------------------------------------------


def test_parity_with_the_instantid_command(tiny_kit, faces, tmp_path):
    """ApplyInstantIDAdvanced + KSampler gives the image `idforge instantid` gives with the same values."""
    flow_out, cli_out = tmp_path / "flow.png", tmp_path / "cli.png"
    common = ["--models", str(tiny_kit), "--device", "cpu", "--dtype", "float32", "--quiet"]
    argv = ["workflow", "run", str(UI04), "--set", f"8.image={faces['a']}", "-o", str(flow_out), *common]
    assert main(argv) == 0
    argv = ["instantid", "--face", str(faces["a"]), "--prompt", "a portrait photo of a person in a red coat"]
    argv += ["--negative-prompt", "blurry, lowres", "--steps", "4", "--guidance", "4.5", "--seed", "7"]
    argv += ["--width", "64", "--height", "64", "--ip-weight", "0.7", "--cn-strength", "0.9"]
    argv += ["--base", "tiny-sdxl.safetensors", "-o", str(cli_out), *common]
    assert main(argv) == 0
    flow = np.asarray(Image.open(flow_out).convert("RGB"))
    cli = np.asarray(Image.open(cli_out).convert("RGB"))
    assert np.array_equal(flow, cli)
    recipe = read_recipe(flow_out)
    section = recipe["workflow"]
    assert section["file"] == "instantid_advanced_ui04.json" and section["format"] == "ui-0.4"
    assert section["sampler"] == "10" and section["outputs"] == ["12"] and "9" in section["nodes"]
    assert Recipe.from_dict(recipe).sections["workflow"] == section  # reproduce reads it back
    again = ["reproduce", str(flow_out), "-o", str(tmp_path / "again.png"), "--models", str(tiny_kit)]
    assert main([*again, "--face", str(faces["a"]), "--check"]) == 0
    assert recipe["params"]["ip_weight"] == 0.7 and recipe["params"]["steps"] == 4


LIGHTNING = DATA / "instantid_lightning_api.json"


def test_a_lightning_lora_workflow_runs_as_the_few_step_preset(tiny_kit, faces, tmp_path):
    """SDXL-Lightning 2-step as ComfyUI users set it (LoraLoader, 2 steps, euler + sgm_uniform, cfg 1) is
    `idforge instantid --preset lightning-2`: the preset's LoRA, trailing Euler, steps and guidance, pixel for
    pixel, although 2 steps is below the bodies' range."""
    flow_out, cli_out = tmp_path / "flow.png", tmp_path / "cli.png"
    common = ["--models", str(tiny_kit), "--device", "cpu", "--dtype", "float32", "--quiet"]
    argv = ["workflow", "run", str(LIGHTNING), "--set", f"8.image={faces['a']}", "-o", str(flow_out), *common]
    assert main(argv) == 0
    argv = ["instantid", "--face", str(faces["a"]), "--prompt", "a portrait photo of a person in a red coat"]
    argv += ["--negative-prompt", "blurry, lowres", "--preset", "lightning-2", "--seed", "7"]
    argv += ["--width", "64", "--height", "64", "--ip-weight", "0.7", "--cn-strength", "0.9"]
    argv += ["--base", "tiny-sdxl.safetensors", "-o", str(cli_out), *common]
    assert main(argv) == 0
    flow = np.asarray(Image.open(flow_out).convert("RGB"))
    assert np.array_equal(flow, np.asarray(Image.open(cli_out).convert("RGB")))
    recipe = read_recipe(flow_out)
    assert recipe["params"]["preset"] == "lightning-2" and recipe["params"]["steps"] == 2
    assert recipe["runtime"]["scheduler"]["config"]["timestep_spacing"] == "trailing"

    plan = open_workflow(LIGHTNING)
    [gen] = plan.generations
    assert gen.loras == [] and gen.scheduler is None  # the preset loads the LoRA and picks the scheduler
    assert "num_inference_steps" not in gen.params and "guidance_scale" not in gen.params
    assert "preset (few-step lightning-2)" in plan.explain_text()


@pytest.mark.parametrize(
    ("sets", "check"),
    [
        ({"10.steps": 6}, lambda gen: gen.params["num_inference_steps"] == 6),  # off the card: explicit
        ({"10.cfg": 2.0}, lambda gen: gen.params["guidance_scale"] == 2.0),
        (
            {"10.sampler_name": "dpmpp_2m", "10.scheduler": "karras"},
            lambda gen: gen.scheduler == "dpmpp_2m_karras",
        ),
        (
            {"17.strength_model": 0.5, "10.scheduler": "normal"},
            lambda gen: "preset" not in gen.params and len(gen.loras) == 1,
        ),
    ],
)
def test_values_off_the_few_step_card_stay_the_workflows(sets, check):
    [gen] = open_workflow(LIGHTNING, sets).generations
    assert check(gen)


def test_a_lightning_lora_off_its_step_count_below_four_is_still_refused(store, faces):
    with pytest.raises(ParameterError) as caught:
        prepare(open_workflow(LIGHTNING, {"10.steps": 3}), {"8": faces["a"]}, store)
    assert caught.value.field == "10.steps" and "greater than or equal to 4" in str(caught.value)


def test_faceid_batch_workflow_writes_one_image_per_reference(tiny_kit, faces, tmp_path):
    out = tmp_path / "faceid.png"
    argv = [
        "workflow",
        "run",
        str(UI10),
        "--set",
        f"22.image={faces['a']}",
        "--set",
        f"23.image={faces['b']}",
    ]
    argv += ["--models", str(tiny_kit), "--device", "cpu", "--dtype", "float32", "--quiet", "-o", str(out)]
    assert main(argv) == 0
    written = sorted(tmp_path.glob("faceid_*.png"))
    assert len(written) == 2
    assert read_recipe(written[0])["workflow"]["outputs"] == ["33"]


def test_insta_depth_with_the_zoe_node_bypassed(engine, faces, tmp_path):
    plan = open_workflow(DEPTH, {"7.mode": 4})
    prepared = prepare(plan, {"8": faces["a"], "9": faces["pose"]}, engine.store)
    (result,) = execute(engine, plan, prepared, lambda step, total: None)
    assert result.recipe["workflow"]["method"] == "insta-depth"
    assert result.recipe["params"]["depth_strength"] == 0.6
    assert result.recipe["workflow"]["models"]["depth_controlnet"].endswith("tiny-depth-sdxl")
    assert result.images[0].size == (64, 64)


def test_two_persons_workflow_runs_in_one_pass(engine, faces):
    plan = open_workflow(PERSONS)
    prepared = prepare(plan, {"11": faces["a"], "12": faces["b"]}, engine.store)
    (result,) = execute(engine, plan, prepared, lambda step, total: None)
    assert result.images[0].size == (96, 64)
    assert len(result.recipe["persons"]) == 2


# -- HTTP ---------------------------------------------------------------------------------------------------------------


def test_v2_workflow_is_a_priced_job_with_results_per_output_node(tiny_kit, faces, tmp_path):
    from idforge.server.webhooks import WebhookPolicy

    receiver = WebhookReceiver()
    policy = WebhookPolicy(allow_hosts=("127.0.0.1",), timeout=2.0, first_retry=0.2, max_interval=0.5)
    ui = json.loads(UI04.read_text())
    face = b64(Path(faces["a"]).read_bytes())
    try:
        with running_server(
            tmp_path / "wf.db", None, models_dirs=[str(tiny_kit)], warm_up=(), webhooks=policy
        ) as (url, keys):
            record, token = keys.create_key(20)
            with httpx.Client(base_url=url, headers={"x-api-key": token}, timeout=300) as client:
                bad = client.post(
                    "/v2/workflow", json={"workflow": ui, "images": {"8": face}, "set": {"9.ip_weight": 5}}
                )
                assert bad.status_code == 400 and bad.json()["field"] == "9.ip_weight", bad.text
                missing = client.post("/v2/workflow", json={"workflow": ui})
                assert missing.status_code == 400 and missing.json()["field"] == "images.8"
                zoe = client.post("/v2/workflow", json={"workflow": json.loads(DEPTH.read_text())})
                assert zoe.status_code == 400 and "Zoe-DepthMapPreprocessor" in zoe.json()["error"]
                body = {
                    "workflow": ui,
                    "images": {"8": face},
                    "name": "mine.json",
                    "webhook_url": receiver.url,
                }
                accepted = client.post("/v2/workflow", json=body)
                assert accepted.status_code == 202, accepted.text
                assert accepted.json()["credits_reserved"] == 1  # 4 steps, one image
                canceled = client.post("/v2/workflow", json=body | {"webhook_url": None})
                cancel = client.post(canceled.json()["cancel_url"]).json()
                assert cancel["action"] in ("removed", "stopped")
                result = finished_result(client, accepted.json()["response_url"])
                assert result["status"] == "COMPLETED", json.dumps(result)[:500]
                assert result["method"] == "workflow" and result["credits_charged"] == 1
                assert list(result["output"]["nodes"]) == ["12"] and len(result["output"]["nodes"]["12"]) == 1
                Image.open(io.BytesIO(base64.b64decode(result["output"]["nodes"]["12"][0]))).verify()
                section = result["recipe"]["workflow"]
                assert section["file"] == "mine.json" and section["outputs"] == {"12": [0]}
                assert result["recipe"]["generations"][0]["params"]["ip_weight"] == 0.7
                hooks = wait_for(lambda: receiver.for_job(accepted.json()["request_id"]))
                assert json.loads(hooks[0][1])["status"] == "COMPLETED"
                assert client.get(canceled.json()["status_url"]).json()["status"] == "CANCELED"
    finally:
        receiver.close()


def test_the_plan_endpoint_is_free_and_names_what_the_workflow_needs(tiny_kit, tmp_path):
    ui = json.loads(UI04.read_text())
    with running_server(tmp_path / "plan.db", None, models_dirs=[str(tiny_kit)], warm_up=()) as (url, keys):
        record, token = keys.create_key(5)
        with httpx.Client(base_url=url, headers={"x-api-key": token}, timeout=60) as client:
            plan = client.post("/v1/workflow/plan", json={"workflow": ui, "name": "mine.json"})
            assert plan.status_code == 200, plan.text
            body = plan.json()
            assert body["price"] == 1 and body["name"] == "mine.json" and body["format"] == "ui-0.4"
            assert [i["node"] for i in body["images"]] == ["8"]
            assert body["images"][0]["feeds"] == ["instantid.face_image"]
            (generation,) = body["generations"]
            assert generation["method"] == "instantid" and generation["params"]["ip_weight"] == 0.7
            assert generation["sources"]["ip_weight"] == "9.ip_weight" and generation["price"] == 1
            assert body["outputs"] == [{"node": "12", "title": body["outputs"][0]["title"]}]
            assert body["explain"].startswith("workflow mine.json (ui-0.4)")
            changed = client.post("/v1/workflow/plan", json={"workflow": ui, "set": {"10.steps": 25}})
            assert changed.json()["price"] == 3  # one credit per started block of ten steps
            bad = client.post("/v1/workflow/plan", json={"workflow": ui, "set": {"9.ip_weight": 5}})
            assert bad.status_code == 400 and bad.json()["field"] == "9.ip_weight", bad.text
            zoe = client.post("/v1/workflow/plan", json={"workflow": json.loads(DEPTH.read_text())})
            assert zoe.status_code == 400 and "Zoe-DepthMapPreprocessor" in zoe.json()["error"]
            assert client.get("/v1/account").json()["credits"] == 5  # free
        refused = httpx.post(url + "/v1/workflow/plan", json={"workflow": ui}, timeout=60)
        assert refused.status_code == 401
