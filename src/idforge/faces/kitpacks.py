"""Tiny ONNX face packs for tests: the real file names and signatures, deterministic synthetic behaviour.

`write_face_packs(dest)` writes `dest/antelopev2/{scrfd_10g_bnkps,glintr100}.onnx` and
`dest/buffalo_l/{det_10g,w600k_r50}.onnx`. They load in insightface 2.1's `FaceAnalysis` and in ours.

Detector rule (what tests may assert). On the detector canvas (the image resized by `s = det/max(w, h)`):
- a pixel is *bright* when the mean of its channels is >= 208 (fully) and *dark* at <= 176 (the ramp between
  is linear); the zero canvas around a letterboxed image is dark, but pixels outside the canvas count as
  bright, so a square touching the canvas edge (the top or left image edge, or any edge of an image with the
  detector's aspect ratio) is never found: that is the case the 25% padding retry of `get_face` is for;
- an anchor (x*stride, y*stride) fires when the pixel under it is bright enough: score = sigmoid(6 * (m - 0.5))
  with m = (mean channel value - 127.5) / 128, so pure white (255) scores 0.9515 and 210 scores 0.7046;
- it predicts the box (x0, y0, x1, y1) of the bright run through it: x0 = first column of the run, x1 = one past
  the last column (likewise rows), so an axis-aligned white square covering pixels [x0, x1) x [y0, y1) gives
  exactly the box (x0, y0, x1, y1) in image pixels when the resize is exact (e.g. a 640x640 image at 640);
- it only sees `4 * stride` pixels each way (32, 64, 128 for strides 8, 16, 32): if the run reaches further the
  score is pushed below 0.5. So a square is found iff some anchor inside it is at most 4*stride - 1 pixels
  from each of its edges (roughly: side <= 254 canvas pixels); a 400 px square in a 640 px image is missed at
  det 640..448 and found at 384 (and below);
- the 5 keypoints sit at fixed fractions of the box: x0 + fx * (x1 - x0), y0 + fy * (y1 - y0) with
  (fx, fy) = KPS_FRACTIONS = (0.34, 0.46), (0.66, 0.46), (0.5, 0.64), (0.37, 0.82), (0.63, 0.82);
- several squares give several faces as long as they do not touch; a dark image gives none.
Recogniser: 3 small stride-2 convolutions, average pooling and a 256 -> 512 linear layer with fixed random
weights (seeded), input (x - 127.5) / 127.5: differently textured faces give different embeddings.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

KPS_FRACTIONS = ((0.34, 0.46), (0.66, 0.46), (0.5, 0.64), (0.37, 0.82), (0.63, 0.82))
SCORE_GAIN = 6.0
REACH_PER_STRIDE = 4
BIG = 10000.0
OPSET = 13
IR_VERSION = 8

# Real names of the published files (inputs and outputs as insightface sees them).
DETECTOR_SPECS = {
    "antelopev2": {
        "file": "scrfd_10g_bnkps.onnx",
        "input": "input.1",
        "outputs": ["448", "471", "494", "451", "474", "497", "454", "477", "500"],
        "batched": True,
    },
    "buffalo_l": {
        "file": "det_10g.onnx",
        "input": "input.1",
        "outputs": ["448", "471", "494", "451", "474", "497", "454", "477", "500"],
        "batched": False,
    },
}
RECOGNIZER_SPECS = {
    "antelopev2": {"file": "glintr100.onnx", "input": "input.1", "output": "1333"},
    "buffalo_l": {"file": "w600k_r50.onnx", "input": "input.1", "output": "683"},
}


class _Graph:
    """Small helper to append nodes and constants with unique names."""

    def __init__(self) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self.count = 0

    def name(self, prefix: str) -> str:
        self.count += 1
        return f"{prefix}_{self.count}"

    def const(self, value: np.ndarray | float | list, dtype=np.float32) -> str:
        name = self.name("c")
        self.initializers.append(numpy_helper.from_array(np.asarray(value, dtype=dtype), name))
        return name

    def op(self, op_type: str, inputs: list[str], output: str | None = None, **attrs) -> str:
        output = output or self.name(op_type.lower())
        self.nodes.append(
            helper.make_node(op_type, inputs, [output], name=self.name(f"n{op_type.lower()}"), **attrs)
        )
        return output


def _positions(g: _Graph, like: str, axis: int) -> str:
    """0, 1, 2, ... along `axis`, shaped like `like`: the running count of ones, minus one."""
    ones = g.op("Add", [g.op("Mul", [like, g.const(0.0)]), g.const(1.0)])
    return g.op("Sub", [g.op("CumSum", [ones, g.const(axis, np.int64)]), g.const(1.0)])


def _run_edges(g: _Graph, dark_pad: str, axis: int, stride: int, reach: int) -> tuple[str, str]:
    """(before, after): distances from each anchor to the first dark pixel before / after it along `axis`.

    `dark_pad` is the darkness map (1 - brightness) padded by one pixel on every side. Results are clamped
    to `reach`; `reach` means "no edge within reach".
    """
    kernel = [1, reach + 1] if axis == 3 else [reach + 1, 1]
    big = g.const(BIG)
    # Before: keep the leading pad, drop the trailing one; the other axis keeps only real rows/columns.
    other = 2 if axis == 3 else 3
    before_map = g.op(
        "Slice",
        [dark_pad, g.const([0, 1], np.int64), g.const([-1, -1], np.int64), g.const([axis, other], np.int64)],
    )
    after_map = g.op(
        "Slice",
        [
            dark_pad,
            g.const([1, 1], np.int64),
            g.const([2**31, -1], np.int64),
            g.const([axis, other], np.int64),
        ],
    )
    pads_before = [0, reach - 1, 0, 0] if axis == 3 else [reach - 1, 0, 0, 0]
    pads_after = [0, 0, 0, reach - 1] if axis == 3 else [0, 0, reach - 1, 0]

    def window_max(value: str, pads: list[int]) -> str:
        return g.op("MaxPool", [value], kernel_shape=kernel, pads=pads, strides=[stride, stride])

    # Positions along the axis: 0, 1, 2, ... (the leading pad is position 0 in `before_map`).
    ramp_b = _positions(g, before_map, axis)
    # Dark pixels keep their position, bright ones drop to -BIG; the window max is the last dark position.
    last_dark = window_max(
        g.op("Sub", [g.op("Mul", [before_map, g.op("Add", [ramp_b, big])]), big]), pads_before
    )
    anchor_b = window_max(ramp_b, pads_before)
    before = g.op("Sub", [g.op("Sub", [anchor_b, last_dark]), g.const(1.0)])

    ramp_a = _positions(g, after_map, axis)
    neg_first_dark = window_max(
        g.op("Sub", [g.op("Mul", [after_map, g.op("Sub", [big, ramp_a])]), big]), pads_after
    )
    neg_anchor = window_max(g.op("Neg", [ramp_a]), pads_after)
    after = g.op("Sub", [neg_anchor, neg_first_dark])
    limit = g.const(float(reach))
    return g.op("Min", [before, limit]), g.op("Min", [after, limit])


def build_detector(
    input_name: str = "input.1",
    output_names: list[str] | None = None,
    *,
    strides: tuple[int, ...] = (8, 16, 32),
    num_anchors: int = 2,
    use_kps: bool = True,
    batched: bool = False,
    static_size: tuple[int, int] | None = None,
) -> onnx.ModelProto:
    """An SCRFD-shaped ONNX graph following the rule in the module docstring."""
    g = _Graph()
    count = len(strides) * (3 if use_kps else 2)
    names = output_names or [f"out{i}" for i in range(count)]
    if len(names) != count:
        raise ValueError(f"expected {count} output names, got {len(names)}")
    # Mean normalised channel value, and darkness = 1 - clip(4 m - 1.5, 0, 1).
    mean = g.op("Conv", [input_name, g.const(np.full((1, 3, 1, 1), 1.0 / 3.0))])
    bright = g.op(
        "Clip",
        [
            g.op("Conv", [input_name, g.const(np.full((1, 3, 1, 1), 4.0 / 3.0)), g.const([-1.5])]),
            g.const(0.0),
            g.const(1.0),
        ],
    )
    dark = g.op("Sub", [g.const(1.0), bright])
    # Outside the canvas is "not dark": runs reaching it never end, so they are out of reach.
    dark_pad = g.op("Pad", [dark, g.const([0, 0, 1, 1, 0, 0, 1, 1], np.int64), g.const(0.0)])

    score_outs, box_outs, kps_outs = [], [], []
    for stride in strides:
        reach = REACH_PER_STRIDE * stride
        left, right = _run_edges(g, dark_pad, 3, stride, reach)
        top, bottom = _run_edges(g, dark_pad, 2, stride, reach)
        dist = g.op("Concat", [left, top, right, bottom], axis=1)  # (1, 4, h, w): l, t, r, b in pixels
        beyond = g.op("Relu", [g.op("Sub", [dist, g.const(float(reach - 1))])])
        centre = g.op(
            "Conv", [mean, g.const(np.ones((1, 1, 1, 1))), g.const([0.0])], strides=[stride, stride]
        )
        score_w = np.zeros((num_anchors, 5, 1, 1), dtype=np.float32)
        score_w[:, 0] = SCORE_GAIN
        score_w[:, 1:] = -20.0
        logits = g.op(
            "Conv",
            [
                g.op("Concat", [centre, beyond], axis=1),
                g.const(score_w),
                g.const(np.full(num_anchors, -0.5 * SCORE_GAIN)),
            ],
        )
        scores = g.op("Sigmoid", [logits])

        box_w = np.zeros((4 * num_anchors, 4, 1, 1), dtype=np.float32)
        for anchor in range(num_anchors):
            for k in range(4):
                box_w[anchor * 4 + k, k] = 1.0 / stride
        boxes = g.op("Conv", [dist, g.const(box_w)])
        heads = [(scores, 1, score_outs), (boxes, 4, box_outs)]
        if use_kps:
            kps_w = np.zeros((10 * num_anchors, 4, 1, 1), dtype=np.float32)
            for anchor in range(num_anchors):
                for i, (fx, fy) in enumerate(KPS_FRACTIONS):
                    kps_w[anchor * 10 + 2 * i, 0] = (fx - 1.0) / stride  # from left
                    kps_w[anchor * 10 + 2 * i, 2] = fx / stride  # from right
                    kps_w[anchor * 10 + 2 * i + 1, 1] = (fy - 1.0) / stride  # from top
                    kps_w[anchor * 10 + 2 * i + 1, 3] = fy / stride  # from bottom
            heads.append((g.op("Conv", [dist, g.const(kps_w)]), 10, kps_outs))
        for tensor, width, bucket in heads:
            shape = [1, -1, width] if batched else [-1, width]
            bucket.append((g.op("Transpose", [tensor], perm=[0, 2, 3, 1]), shape, width))

    outputs = []
    for (tensor, shape, width), out_name in zip(score_outs + box_outs + kps_outs, names, strict=True):
        g.op("Reshape", [tensor, g.const(shape, np.int64)], output=out_name)
        dims = [1, "num_anchors", width] if batched else ["num_anchors", width]
        outputs.append(helper.make_tensor_value_info(out_name, TensorProto.FLOAT, dims))
    height_dim, width_dim = (static_size[1], static_size[0]) if static_size else ("?", "?")
    graph = helper.make_graph(
        g.nodes,
        "scrfd_kit",
        [helper.make_tensor_value_info(input_name, TensorProto.FLOAT, [1, 3, height_dim, width_dim])],
        outputs,
        initializer=g.initializers,
    )
    return _finish(graph)


def build_recognizer(
    input_name: str = "input.1", output_name: str = "embedding", *, seed: int = 0, mxnet_style: bool = False
) -> onnx.ModelProto:
    """An ArcFace-shaped graph: (N, 3, 112, 112) -> (N, 512), deterministic weights from `seed`.

    `mxnet_style=True` adds the leading Sub/Mul nodes of MXNet exports (which take raw 0..255 pixels), so that
    the mean/std detection can be tested.
    """
    rng = np.random.default_rng(seed)
    g = _Graph()
    x = input_name
    if mxnet_style:
        sub = helper.make_node("Sub", [x, g.const(127.5)], ["minus_out"], name="_minusscalar0")
        mul = helper.make_node("Mul", ["minus_out", g.const(1.0 / 127.5)], ["mul_out"], name="_mulscalar0")
        g.nodes.extend([sub, mul])
        x = "mul_out"
    channels = [3, 8, 16, 16]
    for index in range(3):
        cin, cout = channels[index], channels[index + 1]
        weight = rng.standard_normal((cout, cin, 3, 3)).astype(np.float32) * np.float32(
            np.sqrt(2.0 / (cin * 9))
        )
        bias = rng.standard_normal(cout).astype(np.float32) * np.float32(0.1)
        conv = g.op(
            "Conv",
            [x, g.const(weight), g.const(bias)],
            kernel_shape=[3, 3],
            pads=[1, 1, 1, 1],
            strides=[2, 2],
        )
        x = g.op("Relu", [conv])
    pooled = g.op("AveragePool", [x], kernel_shape=[3, 3], strides=[3, 3])  # 14 -> 4
    flat = g.op("Flatten", [pooled], axis=1)  # 16 * 4 * 4 = 256
    weight = rng.standard_normal((256, 512)).astype(np.float32) * np.float32(np.sqrt(2.0 / 256) * 4.0)
    bias = rng.standard_normal(512).astype(np.float32) * np.float32(0.1)
    g.op("Gemm", [flat, g.const(weight), g.const(bias)], output=output_name)
    graph = helper.make_graph(
        g.nodes,
        "arcface_kit",
        [helper.make_tensor_value_info(input_name, TensorProto.FLOAT, ["None", 3, 112, 112])],
        [helper.make_tensor_value_info(output_name, TensorProto.FLOAT, ["None", 512])],
        initializer=g.initializers,
    )
    return _finish(graph)


def _finish(graph: onnx.GraphProto) -> onnx.ModelProto:
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="idforge-kit"
    )
    model.ir_version = IR_VERSION
    onnx.checker.check_model(model)
    return model


def write_face_packs(dest: Path, seed: int = 0) -> dict[str, Path]:
    """Write the antelopev2 and buffalo_l kit packs under `dest`; return {pack name: folder}."""
    dest = Path(dest)
    folders: dict[str, Path] = {}
    for offset, pack in enumerate(("antelopev2", "buffalo_l")):
        folder = dest / pack
        folder.mkdir(parents=True, exist_ok=True)
        det = DETECTOR_SPECS[pack]
        detector = build_detector(det["input"], list(det["outputs"]), batched=bool(det["batched"]))
        onnx.save(detector, str(folder / det["file"]))
        rec = RECOGNIZER_SPECS[pack]
        recognizer = build_recognizer(rec["input"], rec["output"], seed=seed * 2 + offset)
        onnx.save(recognizer, str(folder / rec["file"]))
        folders[pack] = folder
    return folders
