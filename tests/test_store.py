"""Model store: explicit paths, ComfyUI folders, ComfyUI root, IDFORGE_MODELS, ~/.insightface, HF cache,
offline errors, nested packs, ambiguous candidates. No network: every test runs offline."""

from __future__ import annotations

from pathlib import Path

import pytest

from idforge.errors import ModelFormatError, ModelNotFoundError, ParameterError
from idforge.models import hub
from idforge.models.singlefile import write_single_file
from idforge.models.store import ModelStore, resolve_face_pack
from store_fixtures import fake_hf_cache, tiny_pipeline_dir


@pytest.fixture(scope="session")
def tiny(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("tiny")
    sdxl = tiny_pipeline_dir(root / "tiny-sdxl", "sdxl")
    sd15 = tiny_pipeline_dir(root / "tiny-sd15", "sd15")
    return {
        "sdxl": sdxl,
        "sd15": sd15,
        "sdxl_file": write_single_file(sdxl, root / "tiny-sdxl.safetensors"),
        "sd15_file": write_single_file(sd15, root / "tiny-sd15.safetensors"),
    }


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch):
    """Offline, empty HF cache and HOME, no IDFORGE_MODELS: nothing outside tmp_path can be found."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("IDFORGE_MODELS", raising=False)


def _place(src: Path, dest: Path) -> Path:
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.symlink_to(src, target_is_directory=src.is_dir())
    return dest


def _pack(folder: Path, names=("det_10g.onnx", "w600k_r50.onnx")) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        (folder / name).write_bytes(b"onnx")
    return folder


def test_explicit_path(tiny):
    found = ModelStore().resolve("base", tiny["sdxl_file"])
    assert found.path == tiny["sdxl_file"].resolve() and found.source == "path"


def test_missing_explicit_path_names_it(tmp_path):
    missing = tmp_path / "nope.safetensors"
    with pytest.raises(ModelNotFoundError) as err:
        ModelStore().resolve("base", str(missing))
    assert str(missing) in str(err.value) and "does not exist" in str(err.value)


def test_comfyui_models_folder_by_preset_file_name(tiny, tmp_path):
    models = tmp_path / "ComfyUI" / "models"
    ckpt = _place(tiny["sdxl_file"], models / "checkpoints" / "sd_xl_base_1.0.safetensors")
    _place(tiny["sd15_file"], models / "checkpoints" / "v1-5-pruned-emaonly.safetensors")
    found = ModelStore([models]).resolve("base")
    assert (found.path, found.source, found.preset) == (ckpt, "comfyui", "sdxl-base")
    assert ModelStore([models]).resolve("base", "sd15").path.name == "v1-5-pruned-emaonly.safetensors"
    # the ComfyUI root (the folder above models/) works the same
    assert ModelStore([tmp_path / "ComfyUI"]).resolve("base").path == ckpt


def test_idforge_models_env(tiny, tmp_path, monkeypatch):
    models = tmp_path / "m"
    folder = _place(tiny["sdxl"], models / "diffusers" / "stable-diffusion-xl-base-1.0")
    monkeypatch.setenv("IDFORGE_MODELS", str(models))
    assert ModelStore().resolve("base").path == folder


def test_user_file_name_in_models_folder(tiny, tmp_path):
    models = tmp_path / "m"
    ckpt = _place(tiny["sdxl_file"], models / "checkpoints" / "juggernautXL_v9.safetensors")
    assert ModelStore([models]).resolve("base", "juggernautXL_v9").path == ckpt
    assert ModelStore([models]).resolve("base", "juggernautXL_v9.safetensors").path == ckpt


def test_single_candidate_is_picked_and_wrong_family_ignored(tiny, tmp_path):
    models = tmp_path / "m"
    ckpt = _place(tiny["sdxl_file"], models / "checkpoints" / "mine.safetensors")
    _place(tiny["sd15_file"], models / "checkpoints" / "old15.safetensors")
    found = ModelStore([models]).resolve("base")
    assert found.path == ckpt and found.source == "comfyui"


def test_ambiguous_candidates_are_listed(tiny, tmp_path):
    models = tmp_path / "m"
    a = _place(tiny["sdxl_file"], models / "checkpoints" / "a.safetensors")
    b = _place(tiny["sdxl_file"], models / "checkpoints" / "b.safetensors")
    with pytest.raises(ParameterError) as err:
        ModelStore([models]).resolve("base")
    assert str(a) in str(err.value) and str(b) in str(err.value) and "several" in str(err.value)


def test_offline_error_names_model_places_and_hint(tmp_path):
    models = tmp_path / "empty"
    models.mkdir()
    with pytest.raises(ModelNotFoundError) as err:
        ModelStore([models]).resolve("base")
    message = str(err.value)
    assert err.value.model == "sdxl-base"
    assert str(models / "checkpoints") in message and str(models / "diffusers") in message
    assert "hub cache" in message and "stabilityai/stable-diffusion-xl-base-1.0" in message
    assert "idforge models fetch sdxl-base" in message and "offline" in message
    assert "\n" not in message


def test_hf_cache_layout(tmp_path):
    cache = tmp_path / "hf" / "hub"
    snapshot = fake_hf_cache(cache, "h94/IP-Adapter-FaceID", {"ip-adapter-faceid_sdxl.bin": b"x"})
    found = ModelStore().resolve("ipadapter", "faceid-sdxl")
    assert found.source == "hf_cache" and found.repo_id == "h94/IP-Adapter-FaceID"
    assert found.path == snapshot / "ip-adapter-faceid_sdxl.bin"
    # a folder preset needs every file: with one missing it is not "cached"
    fake_hf_cache(cache, "depth-anything/Depth-Anything-V2-Small-hf", {"config.json": b"{}"})
    with pytest.raises(ModelNotFoundError):
        ModelStore().resolve("depth_estimator")


def test_hub_offline_translation(tmp_path, monkeypatch):
    import huggingface_hub.constants

    # huggingface_hub's own offline switch (read at import): its error must become ours, without network
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(ModelNotFoundError) as err:
        hub.download("InstantX/InstantID", ["ip-adapter.bin"], what="instantid", offline=False)
    assert "InstantX/InstantID" in str(err.value) and "idforge models fetch instantid" in str(err.value)
    with pytest.raises(ModelNotFoundError) as err:
        hub.download("InstantX/InstantID", ["ip-adapter.bin"], what="instantid")  # HF_HUB_OFFLINE=1 in env
    assert "offline" in str(err.value)


def test_hub_network_error_translation(monkeypatch):
    import huggingface_hub

    def fail(*args, **kwargs):
        raise ConnectionError("unreachable")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fail)
    with pytest.raises(ModelNotFoundError) as err:
        hub.download("h94/IP-Adapter", ["a"], what="clip-vit-h", offline=False)
    assert "network error" in str(err.value) and "h94/IP-Adapter" in str(err.value)


def test_face_pack_in_insightface_home():
    home_pack = _pack(Path.home() / ".insightface" / "models" / "antelopev2", ("scrfd_10g_bnkps.onnx",))
    assert resolve_face_pack(None) == home_pack
    found = ModelStore().resolve("face_pack")
    assert found.source == "insightface_home" and found.preset == "antelopev2"


def test_face_pack_models_folder_wins_over_home(tmp_path):
    _pack(Path.home() / ".insightface" / "models" / "buffalo_l")
    comfy_pack = _pack(tmp_path / "m" / "insightface" / "models" / "buffalo_l")
    assert resolve_face_pack("buffalo_l", models_dirs=[tmp_path / "m"]) == comfy_pack
    assert resolve_face_pack(str(comfy_pack)) == comfy_pack.resolve()


def test_nested_face_pack_is_explained(tmp_path):
    outer = tmp_path / "m" / "insightface" / "models" / "antelopev2"
    _pack(outer / "antelopev2")
    with pytest.raises(ModelFormatError) as err:
        resolve_face_pack(None, models_dirs=[tmp_path / "m"])
    assert "antelopev2/antelopev2" in str(err.value) and "move the .onnx files" in str(err.value)
    with pytest.raises(ModelFormatError):
        resolve_face_pack(str(outer))


def test_missing_face_pack_message(tmp_path):
    with pytest.raises(ModelNotFoundError) as err:
        resolve_face_pack("antelopev2", models_dirs=[tmp_path / "m"])
    message = str(err.value)
    assert ".insightface/models/antelopev2" in message and "non-commercial" in message
    assert str(tmp_path / "m" / "insightface" / "models" / "antelopev2") in message


def test_instantid_published_folder_and_comfy_parts(tmp_path):
    folder = tmp_path / "m" / "InstantX-InstantID"
    (folder / "ControlNetModel").mkdir(parents=True)
    (folder / "ControlNetModel" / "config.json").write_text("{}")
    (folder / "ip-adapter.bin").write_bytes(b"x")
    found = ModelStore([tmp_path / "m"]).resolve("instantid")
    assert found.parts == {"identitynet": folder / "ControlNetModel", "ipadapter": folder / "ip-adapter.bin"}
    assert ModelStore().resolve("instantid", folder).source == "path"

    models = tmp_path / "comfy"
    (models / "instantid").mkdir(parents=True)
    (models / "instantid" / "ip-adapter.bin").write_bytes(b"x")
    (models / "controlnet").mkdir()
    (models / "controlnet" / "instantid-controlnet.safetensors").write_bytes(b"x")
    found = ModelStore([models]).resolve("instantid")
    assert found.parts["identitynet"] == models / "controlnet" / "instantid-controlnet.safetensors"
    assert found.parts["ipadapter"] == models / "instantid" / "ip-adapter.bin"
    (models / "controlnet" / "instantid-controlnet.safetensors").unlink()
    with pytest.raises(ModelNotFoundError) as err:
        ModelStore([models]).resolve("instantid")
    assert "identitynet" in str(err.value) and str(models / "controlnet") in str(err.value)


def test_lora_and_clip_vision_in_comfy_folders(tmp_path):
    models = tmp_path / "m"
    (models / "loras").mkdir(parents=True)
    lora = models / "loras" / "ip-adapter-faceid_sdxl_lora.safetensors"
    lora.write_bytes(b"x")
    clip = models / "clip_vision" / "CLIP-ViT-H-14-laion2B-s32B-b79K.safetensors"
    clip.parent.mkdir()
    clip.write_bytes(b"x")
    store = ModelStore([models])
    assert store.resolve("lora", "faceid-sdxl-lora").path == lora
    assert store.resolve("clip_vision").path == clip
    with pytest.raises(ParameterError):
        store.resolve("lora")  # no default LoRA
