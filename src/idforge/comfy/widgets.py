"""Which input each entry of a UI-format node's `widgets_values` is, per node class.

The UI format stores a node's widget values as a list in the order the node declares its widgets. A seed widget is
followed by one more value the front end adds, `control_after_generate` ("fixed", "increment", "decrement",
"randomize"), that is no input of the node; LoadImage's file widget is followed by its "upload" button value.
Files saved by older front ends may lack trailing widgets: those take the node's default. A class not in the table
keeps its values under `widget_0`, `widget_1`, ... (it is refused later anyway, unless a handler knows it).

The table here is ComfyUI's own classes (`CORE_WIDGETS`); a method's classes declare their order with their handlers
(`NodeTable.add(..., widgets=...)`), and the catalog hands `widget_inputs` the whole table.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

CONTROL_VALUES = frozenset({"fixed", "increment", "decrement", "randomize"})


@dataclass(frozen=True)
class Widget:
    name: str
    default: Any = None
    seed: bool = False  # followed by control_after_generate in the UI format
    extra: frozenset[str] = frozenset()  # values of a front-end-only widget that may follow this one


UPLOAD = frozenset({"image", "upload"})

_SAMPLER = (
    Widget("seed", 0, seed=True),
    Widget("steps", 20),
    Widget("cfg", 8.0),
    Widget("sampler_name", "euler"),
    Widget("scheduler", "normal"),
    Widget("denoise", 1.0),
)

CORE_WIDGETS: dict[str, tuple[Widget, ...]] = {
    "CheckpointLoaderSimple": (Widget("ckpt_name"),),
    "CLIPTextEncode": (Widget("text", ""),),
    "EmptyLatentImage": (Widget("width", 512), Widget("height", 512), Widget("batch_size", 1)),
    "KSampler": _SAMPLER,
    "KSamplerAdvanced": (
        Widget("add_noise", "enable"),
        Widget("noise_seed", 0, seed=True),
        Widget("steps", 20),
        Widget("cfg", 8.0),
        Widget("sampler_name", "euler"),
        Widget("scheduler", "normal"),
        Widget("start_at_step", 0),
        Widget("end_at_step", 10000),
        Widget("return_with_leftover_noise", "disable"),
    ),
    "VAEDecode": (),
    "SaveImage": (Widget("filename_prefix", "ComfyUI"),),
    "PreviewImage": (),
    "LoadImage": (Widget("image", extra=UPLOAD),),
    "ImageBatch": (),
    "LoraLoader": (Widget("lora_name"), Widget("strength_model", 1.0), Widget("strength_clip", 1.0)),
    "ControlNetLoader": (Widget("control_net_name"),),
    "ControlNetApplyAdvanced": (
        Widget("strength", 1.0),
        Widget("start_percent", 0.0),
        Widget("end_percent", 1.0),
    ),
    "SolidMask": (Widget("value", 1.0), Widget("width", 512), Widget("height", 512)),
    "MaskComposite": (Widget("x", 0), Widget("y", 0), Widget("operation", "multiply")),
    "InvertMask": (),
    "ConditioningCombine": (),
    "PrimitiveNode": (Widget("value", seed=True),),
    "PrimitiveInt": (Widget("value", 0, seed=True),),
    "PrimitiveFloat": (Widget("value", 0.0),),
    "PrimitiveString": (Widget("value", ""),),
    "PrimitiveStringMultiline": (Widget("value", ""),),
    "PrimitiveBoolean": (Widget("value", False),),
}


def widget_inputs(
    class_type: str,
    values: Sequence[Any] | Mapping[str, Any] | None,
    widgets: Mapping[str, Sequence[Widget]] = CORE_WIDGETS,
) -> dict[str, Any]:
    """The inputs a node's `widgets_values` stand for (see the module doc), by the widget orders `widgets`."""
    if isinstance(values, Mapping):  # some custom nodes save a dict already
        return dict(values)
    values = list(values or [])
    table = widgets.get(class_type)
    if table is None:
        return {f"widget_{i}": value for i, value in enumerate(values)}
    inputs: dict[str, Any] = {}
    position = 0
    for widget in table:
        if position < len(values):
            inputs[widget.name] = values[position]
            position += 1
            following = values[position] if position < len(values) else None
            if widget.seed and isinstance(following, str) and following in CONTROL_VALUES:
                position += 1
            elif widget.extra and isinstance(following, str) and following in widget.extra:
                position += 1
        elif widget.default is not None:
            inputs[widget.name] = widget.default
    return inputs
