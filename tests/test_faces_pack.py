"""Pack folders: routing by signature, clear errors for missing roles and the NAME/NAME/ mistake, providers."""

from __future__ import annotations

import shutil

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from faces_util import kit_packs  # noqa: F401
from idforge.errors import ModelFormatError, ModelNotFoundError, ParameterError
from idforge.faces.embed import normalisation_from_graph
from idforge.faces.kitpacks import build_detector, build_recognizer
from idforge.faces.pack import load_pack, resolve_providers, scan_pack


def _head_model(size: int, width: int) -> onnx.ModelProto:
    """A landmark/attribute-shaped model: (1, 3, size, size) -> (1, width)."""
    weight = numpy_helper.from_array(np.ones((3, width), np.float32), "w")
    nodes = [
        helper.make_node("GlobalAveragePool", ["data"], ["pooled"]),
        helper.make_node("Flatten", ["pooled"], ["flat"]),
        helper.make_node("MatMul", ["flat", "w"], ["fc1"]),
    ]
    graph = helper.make_graph(
        nodes,
        "head",
        [helper.make_tensor_value_info("data", TensorProto.FLOAT, [1, 3, size, size])],
        [helper.make_tensor_value_info("fc1", TensorProto.FLOAT, [1, width])],
        initializer=[weight],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    return model


def test_kit_packs_have_the_real_file_names(kit_packs):  # noqa: F811
    assert sorted(p.name for p in kit_packs["antelopev2"].glob("*.onnx")) == [
        "glintr100.onnx",
        "scrfd_10g_bnkps.onnx",
    ]
    assert sorted(p.name for p in kit_packs["buffalo_l"].glob("*.onnx")) == ["det_10g.onnx", "w600k_r50.onnx"]
    for folder in kit_packs.values():
        for path in folder.glob("*.onnx"):
            assert path.stat().st_size < 1_000_000


def test_kit_signatures(kit_packs):  # noqa: F811
    det = onnx.load(str(kit_packs["antelopev2"] / "scrfd_10g_bnkps.onnx"))
    assert [i.name for i in det.graph.input] == ["input.1"]
    assert len(det.graph.output) == 9
    assert len(det.graph.output[0].type.tensor_type.shape.dim) == 3  # batched outputs
    det_b = onnx.load(str(kit_packs["buffalo_l"] / "det_10g.onnx"))
    assert len(det_b.graph.output[0].type.tensor_type.shape.dim) == 2  # unbatched outputs
    rec = onnx.load(str(kit_packs["buffalo_l"] / "w600k_r50.onnx"))
    dims = [d.dim_value or d.dim_param for d in rec.graph.input[0].type.tensor_type.shape.dim]
    assert dims[1:] == [3, 112, 112]
    assert normalisation_from_graph(rec) == (127.5, 127.5)


def test_kit_is_deterministic(tmp_path):
    from idforge.faces.kitpacks import write_face_packs

    a = write_face_packs(tmp_path / "a", seed=3)
    b = write_face_packs(tmp_path / "b", seed=3)
    c = write_face_packs(tmp_path / "c", seed=4)
    for name in ("glintr100.onnx", "scrfd_10g_bnkps.onnx"):
        assert (a["antelopev2"] / name).read_bytes() == (b["antelopev2"] / name).read_bytes()
    assert (a["antelopev2"] / "glintr100.onnx").read_bytes() != (
        c["antelopev2"] / "glintr100.onnx"
    ).read_bytes()


def test_routing_ignores_landmark_and_attribute_models(tmp_path, kit_packs):  # noqa: F811
    pack = tmp_path / "antelopev2"
    shutil.copytree(kit_packs["antelopev2"], pack)
    onnx.save(_head_model(192, 3309), str(pack / "1k3d68.onnx"))
    onnx.save(_head_model(192, 212), str(pack / "2d106det.onnx"))
    onnx.save(_head_model(96, 3), str(pack / "genderage.onnx"))
    files = scan_pack(pack)
    assert files.detector.name == "scrfd_10g_bnkps.onnx"
    assert files.recognizer.name == "glintr100.onnx"
    assert sorted(files.ignored) == ["1k3d68.onnx", "2d106det.onnx", "genderage.onnx"]


def test_first_file_wins_for_a_role(tmp_path):
    onnx.save(build_detector(), str(tmp_path / "b_det.onnx"))
    onnx.save(build_detector(batched=True), str(tmp_path / "a_det.onnx"))
    onnx.save(build_recognizer(seed=1), str(tmp_path / "z_rec.onnx"))
    onnx.save(build_recognizer(seed=2), str(tmp_path / "y_rec.onnx"))
    files = scan_pack(tmp_path)
    assert (files.detector.name, files.recognizer.name) == ("a_det.onnx", "y_rec.onnx")
    assert sorted(files.ignored) == ["b_det.onnx", "z_rec.onnx"]


def test_missing_recogniser_lists_the_files_seen(tmp_path):
    onnx.save(build_detector(), str(tmp_path / "det_10g.onnx"))
    onnx.save(_head_model(96, 3), str(tmp_path / "genderage.onnx"))
    with pytest.raises(ModelFormatError) as exc:
        scan_pack(tmp_path)
    message = str(exc.value)
    assert "has no recogniser" in message and "det_10g.onnx, genderage.onnx" in message
    assert "\n" not in message


def test_empty_folder_has_no_detector_and_no_recogniser(tmp_path):
    with pytest.raises(ModelFormatError, match="no detector and no recogniser .files seen: no .onnx files"):
        scan_pack(tmp_path)


def test_nested_folder_mistake(tmp_path, kit_packs):  # noqa: F811
    outer = tmp_path / "antelopev2"
    shutil.copytree(kit_packs["antelopev2"], outer / "antelopev2")
    with pytest.raises(ModelFormatError) as exc:
        load_pack(outer)
    message = str(exc.value)
    assert "nested folder" in message and "antelopev2/antelopev2" in message
    assert f"move the files from {outer / 'antelopev2'} up into {outer}" in message


def test_missing_folder_file_and_corrupt_model(tmp_path):
    with pytest.raises(ModelNotFoundError, match="does not exist"):
        scan_pack(tmp_path / "nowhere")
    (tmp_path / "file.onnx").write_bytes(b"junk")
    with pytest.raises(ModelFormatError, match="must be a folder"):
        scan_pack(tmp_path / "file.onnx")
    with pytest.raises(ModelFormatError, match="file.onnx: not a readable ONNX model"):
        scan_pack(tmp_path)


def test_providers():
    assert resolve_providers(None) == ["CPUExecutionProvider"]
    assert resolve_providers("cpu") == ["CPUExecutionProvider"]
    assert resolve_providers(["CPUExecutionProvider"]) == ["CPUExecutionProvider"]
    if "CUDAExecutionProvider" in ort.get_available_providers():
        assert resolve_providers("cuda") == ["CUDAExecutionProvider", "CPUExecutionProvider"]
    else:
        with pytest.raises(ParameterError) as exc:
            resolve_providers("cuda,cpu")
        message = str(exc.value)
        assert message.startswith("providers: CUDAExecutionProvider is not available")
        assert "CPUExecutionProvider" in message and "onnxruntime-gpu" in message


def test_mxnet_style_recogniser_takes_raw_pixels(tmp_path):
    model = build_recognizer(mxnet_style=True)
    assert normalisation_from_graph(model) == (0.0, 1.0)
    onnx.save(build_detector(), str(tmp_path / "det.onnx"))
    onnx.save(model, str(tmp_path / "rec.onnx"))
    pack = load_pack(tmp_path)
    assert (pack.recognizer.mean, pack.recognizer.std) == (0.0, 1.0)
