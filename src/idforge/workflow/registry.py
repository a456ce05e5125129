"""The ComfyUI catalog of the method registry: ComfyUI's own nodes plus the node classes and rule of every method
whose `Method.workflow` names a module (its `COMFY`), read each time a workflow is opened, so a method registered
later (a plugin, a test's) brings its nodes, and one unregistered takes them away."""

from __future__ import annotations

import importlib

from idforge.comfy.catalog import Catalog, ComfySupport
from idforge.comfy.core_nodes import CORE
from idforge.methods.registry import methods


def catalog() -> Catalog:
    supports: list[tuple[str, ComfySupport]] = []
    for method in methods():
        if method.workflow is None:
            continue
        support = getattr(importlib.import_module(method.workflow), "COMFY", None)
        if not isinstance(support, ComfySupport):
            raise RuntimeError(f"{method.workflow}.COMFY (method {method.name!r}) is not a ComfySupport")
        supports.append((method.name, support))
    return Catalog.build(CORE, supports)
