"""Face model packs: folders of ONNX files (insightface's antelopev2, buffalo_l, ...), routed by signature.

A pack needs one SCRFD detector (6, 9, 10 or 15 outputs) and one ArcFace recogniser (N x 3 x 112 x 112 input,
512-wide output). Landmark and attribute models in the same folder are ignored. When several files fit a role
the first in sorted file-name order wins, as in insightface.

Licence: the published insightface packs (antelopev2, buffalo_l) are for non-commercial research use only;
the tiny packs of `kitpacks.py` are our own and carry no such restriction.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import onnx
import onnxruntime as ort

from idforge.errors import ModelFormatError, ModelNotFoundError, ParameterError
from idforge.faces.detect import SCRFDDetector, layout_for_outputs
from idforge.faces.embed import ArcFaceEmbedder, normalisation_from_graph

DEFAULT_PROVIDERS = ("CPUExecutionProvider",)

PROVIDER_ALIASES = {
    "cpu": "CPUExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "gpu": "CUDAExecutionProvider",
    "tensorrt": "TensorrtExecutionProvider",
    "trt": "TensorrtExecutionProvider",
    "rocm": "ROCMExecutionProvider",
    "migraphx": "MIGraphXExecutionProvider",
    "coreml": "CoreMLExecutionProvider",
    "dml": "DmlExecutionProvider",
    "directml": "DmlExecutionProvider",
    "openvino": "OpenVINOExecutionProvider",
}


def resolve_providers(providers: str | Sequence[str] | None) -> list[str]:
    """Normalise provider names ("cuda" -> CUDAExecutionProvider, comma lists allowed), check they are available.

    CPU is appended as the fallback when it is not in the list. An unavailable provider is an error that says
    which providers this onnxruntime build has, rather than a silent fall back to CPU.
    """
    if providers is None:
        return list(DEFAULT_PROVIDERS)
    items = providers.split(",") if isinstance(providers, str) else list(providers)
    names: list[str] = []
    for item in items:
        text = str(item).strip()
        if not text:
            continue
        key = text.lower().removesuffix("executionprovider")
        name = PROVIDER_ALIASES.get(key, text)
        if name not in names:
            names.append(name)
    if not names:
        return list(DEFAULT_PROVIDERS)
    available = ort.get_available_providers()
    for name in names:
        if name not in available:
            raise ParameterError(
                "providers",
                f"{name} is not available in this onnxruntime build (available: {', '.join(available)}); "
                + (
                    "install onnxruntime-gpu for CUDA/TensorRT"
                    if name in ("CUDAExecutionProvider", "TensorrtExecutionProvider")
                    else "install an onnxruntime build that has it"
                ),
            )
    if "CPUExecutionProvider" not in names:
        names.append("CPUExecutionProvider")
    return names


@dataclass
class PackFiles:
    """What a pack folder holds, by role."""

    folder: Path
    detector: Path | None = None
    recognizer: Path | None = None
    recognizer_norm: tuple[float, float] = (127.5, 127.5)
    ignored: list[str] = field(default_factory=list)
    seen: list[str] = field(default_factory=list)


def _dims(value_info: onnx.ValueInfoProto) -> list[int | str]:
    dims: list[int | str] = []
    for dim in value_info.type.tensor_type.shape.dim:
        dims.append(int(dim.dim_value) if dim.dim_value > 0 else (dim.dim_param or "?"))
    return dims


def graph_inputs(model: onnx.ModelProto) -> list[onnx.ValueInfoProto]:
    """Real inputs: old exports also list their initializers as graph inputs."""
    initializers = {init.name for init in model.graph.initializer}
    return [value for value in model.graph.input if value.name not in initializers]


def is_detector(model: onnx.ModelProto) -> bool:
    return layout_for_outputs(len(model.graph.output)) is not None


def is_recognizer(model: onnx.ModelProto) -> bool:
    inputs = graph_inputs(model)
    if len(inputs) != 1 or len(model.graph.output) != 1:
        return False
    shape = _dims(inputs[0])
    if len(shape) != 4 or shape[1:] != [3, 112, 112]:
        return False
    out = _dims(model.graph.output[0])
    return bool(out) and (out[-1] == 512 or isinstance(out[-1], str))


def _load_graph(path: Path) -> onnx.ModelProto:
    try:
        return onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # protobuf raises several unrelated types for a corrupt file
        raise ModelFormatError(f"{path}: not a readable ONNX model ({type(exc).__name__})") from None


def nested_pack_folder(folder: Path) -> Path | None:
    """The NAME/NAME/ install mistake: no .onnx in `folder`, but a same-named subfolder that has them."""
    inner = folder / folder.name
    if any(folder.glob("*.onnx")) or not inner.is_dir():
        return None
    return inner if any(inner.glob("*.onnx")) else None


def scan_pack(folder: str | Path) -> PackFiles:
    """Route every .onnx in `folder` by signature; raise a clear error when a role is missing."""
    folder = Path(folder).expanduser()
    if not folder.exists():
        raise ModelNotFoundError(str(folder), [str(folder)], "face model pack folder does not exist")
    if not folder.is_dir():
        raise ModelFormatError(f"{folder}: a face model pack must be a folder of .onnx files, not a file")
    inner = nested_pack_folder(folder)
    if inner is not None:
        raise ModelFormatError(
            f"{folder}: the .onnx files are in a nested folder {inner} (the classic unzip mistake "
            f"{folder.name}/{folder.name}/); move the files from {inner} up into {folder}, or pass {inner}"
        )
    files = PackFiles(folder=folder)
    for path in sorted(folder.glob("*.onnx")):
        files.seen.append(path.name)
        model = _load_graph(path)
        if is_detector(model):
            if files.detector is None:
                files.detector = path
            else:
                files.ignored.append(path.name)
        elif is_recognizer(model):
            if files.recognizer is None:
                files.recognizer = path
                files.recognizer_norm = normalisation_from_graph(model)
            else:
                files.ignored.append(path.name)
        else:
            files.ignored.append(path.name)
    missing = [
        role
        for role, path in (("detector", files.detector), ("recogniser", files.recognizer))
        if path is None
    ]
    if missing:
        seen = ", ".join(files.seen) if files.seen else "no .onnx files"
        raise ModelFormatError(
            f"{folder}: face model pack has no {' and no '.join(missing)} "
            f"(files seen: {seen}); expected an SCRFD detector (e.g. scrfd_10g_bnkps.onnx, det_10g.onnx) "
            f"and an ArcFace recogniser (e.g. glintr100.onnx, w600k_r50.onnx)"
        )
    return files


def _session(path: Path, providers: list[str]) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.log_severity_level = 3
    try:
        return ort.InferenceSession(str(path), sess_options=options, providers=providers)
    except Exception as exc:  # onnxruntime raises its own exception classes for bad graphs
        first_line = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ModelFormatError(f"{path}: onnxruntime cannot load this model ({first_line})") from None


@dataclass
class FacePack:
    """A loaded pack: one session per model, kept for the life of the object."""

    files: PackFiles
    detector: SCRFDDetector
    recognizer: ArcFaceEmbedder
    providers: list[str]


def load_pack(folder: str | Path, providers: str | Sequence[str] | None = None) -> FacePack:
    """Scan `folder`, open the detector and recogniser sessions with the requested execution providers."""
    names = resolve_providers(providers)
    files = scan_pack(folder)
    assert files.detector is not None and files.recognizer is not None
    detector = SCRFDDetector(_session(files.detector, names), str(files.detector))
    mean, std = files.recognizer_norm
    recognizer = ArcFaceEmbedder(_session(files.recognizer, names), mean, std, str(files.recognizer))
    return FacePack(files=files, detector=detector, recognizer=recognizer, providers=names)
