"""Node handlers: what a handler sees (`NodeContext`) and a table of node classes (`NodeTable`).

A handler gets its node's inputs (linked ones evaluated on demand) and returns the node's outputs as a tuple, in
the node's output order, of the symbolic values of values.py (or a method's own). A `NodeTable` holds node
classes with their handlers, their widget order (to read the UI format) and advice for classes idforge refuses:
core_nodes.py is ComfyUI's own nodes, each method's workflow module brings a table of its node classes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from idforge.comfy.values import ImageList, ImageRef
from idforge.comfy.widgets import Widget
from idforge.errors import ParameterError


class NodeContext:
    """What a handler sees: its node's id, class, title and inputs; `get` evaluates a linked input."""

    def __init__(self, evaluate: Callable[[str, str], Any], node_id: str, node: dict[str, Any]) -> None:
        self._evaluate = evaluate
        self.node_id = node_id
        self.class_type = node["class_type"]
        self.inputs = node["inputs"]
        self.notes: list[tuple[str, str, Any]] = []  # (input, what it became, value), for --explain

    def has(self, name: str) -> bool:
        return name in self.inputs and self.inputs[name] is not None

    def get(self, name: str, kind: type | tuple[type, ...] | None = None, *, optional: bool = False) -> Any:
        if not self.has(name):
            if optional:
                return None
            raise ParameterError(
                f"{self.node_id}.{name}",
                f"{self.class_type} needs its input {name!r}",
                field=f"{self.node_id}.{name}",
            )
        value = self._evaluate(self.node_id, name)
        if kind is not None and not isinstance(value, kind):
            expected = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
            raise ParameterError(
                f"{self.node_id}.{name}",
                f"{self.class_type}.{name} gets {_describe(value)}, idforge expects {expected} here",
                field=f"{self.node_id}.{name}",
            )
        return value

    def number(self, name: str, default: float | None = None) -> float:
        value = self.get(name, optional=default is not None)
        if value is None:
            return float(default)  # type: ignore[arg-type]
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ParameterError(
                f"{self.node_id}.{name}", f"{value!r} is not a number", field=f"{self.node_id}.{name}"
            )
        return value

    def text(self, name: str, default: str | None = None) -> str:
        value = self.get(name, optional=default is not None)
        if value is None:
            return str(default)
        if not isinstance(value, str):
            raise ParameterError(
                f"{self.node_id}.{name}", f"{value!r} is not text", field=f"{self.node_id}.{name}"
            )
        return value

    def images(self, name: str) -> tuple[ImageRef, ...]:
        """An IMAGE input as images: one LoadImage's, or an ImageBatch's in order."""
        value = self.get(name, (ImageRef, ImageList))
        return value.images if isinstance(value, ImageList) else (value,)

    def note(self, name: str, target: str, value: Any) -> None:
        self.notes.append((name, target, value))


def _describe(value: Any) -> str:
    return type(value).__name__ if not isinstance(value, str | int | float) else repr(value)


Handler = Callable[[NodeContext], tuple[Any, ...]]
Hint = Callable[[str], str | None]  # a refused class -> advice ("{node}" stands for its id), or None


@dataclass
class NodeTable:
    """Node classes: handler, widget order and whether it is an output node (SaveImage), plus advice for classes
    idforge refuses (`hints`)."""

    handlers: dict[str, Handler] = field(default_factory=dict)
    widgets: dict[str, tuple[Widget, ...]] = field(default_factory=dict)
    outputs: set[str] = field(default_factory=set)
    hints: list[Hint] = field(default_factory=list)

    def add(
        self,
        class_type: str,
        handler: Handler,
        widgets: Sequence[Widget] | None = None,
        *,
        output: bool = False,
    ) -> None:
        if class_type in self.handlers:
            raise ValueError(f"node class {class_type!r} is already in this table")
        self.handlers[class_type] = handler
        if widgets is not None:
            self.widgets[class_type] = tuple(widgets)
        if output:
            self.outputs.add(class_type)

    def node(
        self, *class_types: str, widgets: Sequence[Widget] | None = None, output: bool = False
    ) -> Callable[[Handler], Handler]:
        """`add` as a decorator, for one or more classes that share a handler."""

        def add(handler: Handler) -> Handler:
            for class_type in class_types:
                self.add(class_type, handler, widgets, output=output)
            return handler

        return add

    def hint(self, class_type: str, node_id: str) -> str:
        for hint in self.hints:
            advice = hint(class_type)
            if advice:
                return advice.format(node=node_id)
        return ""


def merged(tables: Iterable[tuple[str, NodeTable]]) -> NodeTable:
    """One table of several (named by their owner): a class two of them define is refused, naming both."""
    table = NodeTable()
    owners: dict[str, str] = {}
    for owner, part in tables:
        for class_type, handler in part.handlers.items():
            if class_type in owners:
                raise RuntimeError(
                    f"ComfyUI node {class_type!r} is defined by {owners[class_type]} and {owner}"
                )
            owners[class_type] = owner
            table.handlers[class_type] = handler
        table.widgets |= part.widgets
        table.outputs |= part.outputs
        table.hints += part.hints
    return table
