"""Reading ComfyUI workflows into one graph: the API format {node id: {class_type, inputs, _meta}}.

Accepted: the API format ("Save (API)"), the UI format (nodes/links/widgets_values, version 0.4 with links as arrays
and 1.0 with links as objects) and PNGs saved by ComfyUI (text chunk "prompt", the API graph, else "workflow", the
UI graph). UI -> API: widget values named by `widgets.widget_inputs`, links followed through Reroute nodes,
Primitive nodes replaced by their value, notes left out. A node's mode is kept in `_meta.mode` until
`resolve_modes`: muted nodes (mode 2) are dropped, bypassed ones (mode 4) pass their input of the same type through.
`apply_overrides` (the `--set NODE.INPUT=VALUE` of the CLI, `set` of the HTTP body) runs between the two, so a node
can be bypassed or muted from the command line (`--set 7.mode=4`).
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from idforge.comfy.widgets import CORE_WIDGETS, Widget, widget_inputs
from idforge.errors import ParameterError

Widgets = Mapping[str, Sequence[Widget]]  # class_type -> its widget order

MUTED, BYPASSED = 2, 4
MODE_NAMES = {"always": 0, "never": MUTED, "mute": MUTED, "muted": MUTED, "bypass": BYPASSED}
SKIPPED_CLASSES = frozenset({"Note", "MarkdownNote", "Reroute", "PrimitiveNode"})


@dataclass
class Workflow:
    """A workflow as an API-format graph, where it came from and which nodes were muted."""

    graph: dict[str, dict[str, Any]]
    format: str  # "api", "ui-0.4", "ui-1.0", with "png:" in front when read from a PNG
    name: str = "workflow"
    muted: set[str] = field(default_factory=set)

    def node(self, node_id: str) -> dict[str, Any]:
        return self.graph[node_id]

    def title(self, node_id: str) -> str:
        node = self.graph.get(node_id, {})
        return (node.get("_meta") or {}).get("title") or node.get("class_type", "?")


def is_link(value: Any) -> bool:
    """An input that is a link in the API format: [source node id, output slot]."""
    return (
        isinstance(value, list | tuple)
        and len(value) == 2
        and isinstance(value[0], str | int)
        and not isinstance(value[0], bool)
        and isinstance(value[1], int)
        and not isinstance(value[1], bool)
    )


def load_workflow(
    source: str | Path | bytes | Mapping[str, Any], name: str | None = None, widgets: Widgets = CORE_WIDGETS
) -> Workflow:
    """A workflow from a file path, the bytes of a JSON or PNG file, or a parsed JSON object; `widgets` names the
    UI format's widget values (the catalog's table: ComfyUI's classes and every method's)."""
    if isinstance(source, Mapping):
        return from_json(source, name or "workflow", widgets)
    if isinstance(source, str | Path):
        path = Path(source)
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise ParameterError("workflow", f"cannot read {path}: {exc.strerror or exc}") from None
        return load_workflow(data, name or path.name, widgets)
    data = bytes(source)
    if data.startswith(b"\x89PNG"):
        return from_png(data, name or "workflow.png", widgets)
    try:
        parsed = json.loads(data.decode("utf-8-sig"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise ParameterError("workflow", f"not a ComfyUI workflow (neither JSON nor PNG): {exc}") from None
    if not isinstance(parsed, Mapping):
        raise ParameterError("workflow", "not a ComfyUI workflow: the JSON is not an object")
    return from_json(parsed, name or "workflow", widgets)


def from_png(data: bytes, name: str, widgets: Widgets = CORE_WIDGETS) -> Workflow:
    """The workflow ComfyUI saved in a PNG: its "prompt" text chunk (API format), else "workflow" (UI format)."""
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as image:
            texts = dict(getattr(image, "text", None) or image.info)
    except Exception as exc:  # noqa: BLE001 - any decoding failure is one clear line
        raise ParameterError("workflow", f"{name}: not a readable PNG ({exc})") from None
    for chunk in ("prompt", "workflow"):
        text = texts.get(chunk)
        if isinstance(text, str) and text.strip():
            try:
                parsed = json.loads(text)
            except ValueError as exc:
                raise ParameterError(
                    "workflow", f"{name}: its {chunk!r} text chunk is not JSON ({exc})"
                ) from None
            workflow = from_json(parsed, name, widgets)
            workflow.format = "png:" + workflow.format
            return workflow
    raise ParameterError(
        "workflow", f"{name}: this PNG holds no ComfyUI workflow (no 'prompt' or 'workflow' text)"
    )


def from_json(data: Mapping[str, Any], name: str, widgets: Widgets = CORE_WIDGETS) -> Workflow:
    if "nodes" in data and isinstance(data.get("nodes"), list):
        return from_ui(data, name, widgets)
    if isinstance(data.get("prompt"), Mapping):  # {"prompt": {...}} as POSTed to ComfyUI's /prompt
        return from_json(data["prompt"], name, widgets)
    graph: dict[str, dict[str, Any]] = {}
    for node_id, node in data.items():
        if not isinstance(node, Mapping) or "class_type" not in node:
            raise ParameterError(
                "workflow",
                f"not a ComfyUI workflow: entry {node_id!r} has no class_type (API format) "
                "and there is no 'nodes' list (UI format)",
            )
        inputs = dict(node.get("inputs") or {})
        for key, value in inputs.items():
            if is_link(value):
                inputs[key] = [str(value[0]), int(value[1])]
        meta = dict(node.get("_meta") or {})
        meta.setdefault("title", node["class_type"])
        graph[str(node_id)] = {"class_type": str(node["class_type"]), "inputs": inputs, "_meta": meta}
    return Workflow(graph, "api", name)


def _links(data: Mapping[str, Any]) -> dict[int, tuple[str, int]]:
    """link id -> (source node id, source slot), for 0.4's arrays and 1.0's objects."""
    links: dict[int, tuple[str, int]] = {}
    for link in data.get("links") or []:
        if isinstance(link, Mapping):
            links[int(link["id"])] = (str(link["origin_id"]), int(link["origin_slot"]))
        elif isinstance(link, list | tuple) and len(link) >= 4:
            links[int(link[0])] = (str(link[1]), int(link[2]))
        else:
            raise ParameterError("workflow", f"unreadable link {link!r}")
    return links


def from_ui(data: Mapping[str, Any], name: str, widgets: Widgets = CORE_WIDGETS) -> Workflow:
    """UI format -> API graph (modes kept in _meta.mode, see `resolve_modes`)."""
    if (data.get("definitions") or {}).get("subgraphs"):
        raise ParameterError(
            "workflow",
            f"{name} holds subgraphs, which idforge does not read: unpack them in ComfyUI (right click, "
            "Unpack Subgraph) and save again",
        )
    version = str(data.get("version", "0.4"))
    fmt = "ui-1.0" if version.startswith("1") else "ui-0.4"
    links = _links(data)
    nodes = {str(node["id"]): node for node in data["nodes"]}

    def source(link_id: int | None, seen: frozenset[str] = frozenset()) -> Any:
        """What a link delivers: [node id, slot], or a Primitive node's value; None when unconnected."""
        if link_id is None or int(link_id) not in links:
            return None
        node_id, slot = links[int(link_id)]
        node = nodes.get(node_id)
        if node is None or node_id in seen:
            return [node_id, slot]
        kind = node.get("type")
        if kind == "Reroute":
            inputs = node.get("inputs") or []
            return source(inputs[0].get("link") if inputs else None, seen | {node_id})
        if kind == "PrimitiveNode":
            values = node.get("widgets_values") or []
            return {"primitive": node_id, "value": values[0] if values else None}
        return [node_id, slot]

    graph: dict[str, dict[str, Any]] = {}
    for node_id, node in nodes.items():
        kind = str(node.get("type", ""))
        if kind in SKIPPED_CLASSES:
            continue
        inputs = widget_inputs(kind, node.get("widgets_values"), widgets)
        input_types: dict[str, str] = {}
        for slot in node.get("inputs") or []:
            input_types[slot["name"]] = str(slot.get("type", ""))
            delivered = source(slot.get("link"))
            if isinstance(delivered, dict):
                inputs[slot["name"]] = delivered["value"]
            elif delivered is not None:
                inputs[slot["name"]] = delivered
        meta = {
            "title": node.get("title") or kind,
            "mode": int(node.get("mode", 0) or 0),
            "input_types": input_types,
            "output_types": [str(out.get("type", "")) for out in node.get("outputs") or []],
        }
        graph[node_id] = {"class_type": kind, "inputs": inputs, "_meta": meta}
    return Workflow(graph, fmt, name)


def parse_value(text: str) -> Any:
    """A --set value: JSON when it parses (numbers, true/false, null, lists), else the text itself."""
    try:
        return json.loads(text)
    except ValueError:
        return text


def apply_overrides(workflow: Workflow, overrides: Mapping[str, Any]) -> None:
    """Set `NODE.INPUT` to a value; `NODE.mode` to always/bypass/mute (0/4/2). Errors name the override."""
    for key, value in overrides.items():
        node_id, dot, name = str(key).partition(".")
        if not dot or not node_id or not name:
            raise ParameterError("--set", f"{key!r} is not NODE.INPUT (e.g. 12.weight)", field=str(key))
        if node_id not in workflow.graph:
            known = ", ".join(sorted(workflow.graph, key=_node_order))
            raise ParameterError(
                "--set", f"{key}: there is no node {node_id} (nodes: {known})", field=str(key)
            )
        node = workflow.graph[node_id]
        if name == "mode":
            mode = MODE_NAMES.get(str(value).lower(), value)
            if mode not in (0, MUTED, BYPASSED):
                raise ParameterError(
                    "--set", f"{key}: mode is 0 (always), 4 (bypass) or 2 (mute)", field=str(key)
                )
            node.setdefault("_meta", {})["mode"] = mode
            continue
        node["inputs"][name] = value


def _node_order(node_id: str) -> tuple[int, str]:
    return (int(node_id), "") if node_id.isdigit() else (1 << 30, node_id)


def sorted_ids(ids: Iterable[str]) -> list[str]:
    """Node ids in ComfyUI's order (numbers as numbers)."""
    return sorted(ids, key=_node_order)


def resolve_modes(workflow: Workflow) -> None:
    """Drop muted nodes; make links to a bypassed node point at what it was given (same type, else same slot)."""
    graph = workflow.graph
    muted = {nid for nid, node in graph.items() if (node.get("_meta") or {}).get("mode") == MUTED}
    bypassed = {nid for nid, node in graph.items() if (node.get("_meta") or {}).get("mode") == BYPASSED}

    def through(link: list[Any], seen: frozenset[str] = frozenset()) -> list[Any] | None:
        node_id, slot = str(link[0]), int(link[1])
        if node_id not in bypassed or node_id in seen:
            return [node_id, slot]
        node = graph[node_id]
        meta = node.get("_meta") or {}
        types = meta.get("output_types") or []
        wanted = types[slot] if slot < len(types) else None
        linked = [(name, value) for name, value in node["inputs"].items() if is_link(value)]
        chosen = None
        if wanted:
            chosen = next((v for n, v in linked if (meta.get("input_types") or {}).get(n) == wanted), None)
        if chosen is None and slot < len(linked):
            chosen = linked[slot][1]
        return None if chosen is None else through(chosen, seen | {node_id})

    for node_id, node in graph.items():
        if node_id in muted or node_id in bypassed:
            continue
        for name, value in list(node["inputs"].items()):
            if is_link(value):
                resolved = through(value)
                if resolved is None:
                    del node["inputs"][name]
                else:
                    node["inputs"][name] = resolved
    for node_id in muted | bypassed:
        del graph[node_id]
    workflow.muted |= muted
