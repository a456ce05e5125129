"""What the planner knows: node classes and the rules that map identity nodes onto methods.

A method's ComfyUI support (`ComfySupport`, its workflow module's `COMFY`) is a table of its node classes and one
`MethodRule`. A rule declares the identity-patch class its nodes put on the MODEL and whether a ControlNet on the
positive conditioning belongs to the method (Insta Depth's depth ControlNet): no two rules may declare the same
pair, so at most one rule fits a KSampler and the order methods come in never matters. A KSampler reached by the
patches of two classes is refused here, as is a ControlNet no rule of that class takes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from idforge.comfy.generation import PlannedGeneration, SamplerInputs, node_error
from idforge.comfy.nodes import NodeTable, merged
from idforge.comfy.values import IdentityPatch

P = TypeVar("P", bound=IdentityPatch)


@dataclass(frozen=True)
class MethodRule(Generic[P]):
    """How the `patch` nodes reaching one KSampler become one call of the method: `apply` sets the body
    parameters, images, people and model files on the planned generation (refusing what the method cannot say)."""

    patch: type[P]
    apply: Callable[[SamplerInputs, PlannedGeneration, list[P]], None]
    control_net: bool = False  # a ControlNet on the positive conditioning is part of the method


@dataclass(frozen=True)
class ComfySupport:
    """A method's ComfyUI nodes and rule (the `COMFY` of the module its `Method.workflow` names)."""

    rule: MethodRule[Any]
    nodes: NodeTable = field(default_factory=NodeTable)


@dataclass(frozen=True)
class Catalog:
    """Every node class the planner reads and every rule, each rule with the method it plans."""

    nodes: NodeTable
    rules: dict[tuple[type[IdentityPatch], bool], tuple[str, MethodRule[Any]]]

    @classmethod
    def build(cls, core: NodeTable, supports: Iterable[tuple[str, ComfySupport]]) -> Catalog:
        """ComfyUI's own nodes plus each method's (a node class or a rule's key claimed twice is refused)."""
        supports = list(supports)
        nodes = merged([("ComfyUI", core), *((method, support.nodes) for method, support in supports)])
        rules: dict[tuple[type[IdentityPatch], bool], tuple[str, MethodRule[Any]]] = {}
        for method, support in supports:
            key = (support.rule.patch, support.rule.control_net)
            if key in rules:
                raise RuntimeError(
                    f"methods {rules[key][0]!r} and {method!r} both take {support.rule.patch.__name__} nodes"
                    + (" with a ControlNet" if support.rule.control_net else "")
                )
            rules[key] = (method, support.rule)
        return cls(nodes, rules)

    def kinds(self) -> list[str]:
        """The identity nodes some method takes ("InstantID", ...), once each, in the methods' order."""
        return list(dict.fromkeys(patch.kind for patch, _ in self.rules))

    def rule_for(self, inputs: SamplerInputs) -> tuple[str, MethodRule[Any], list[IdentityPatch]]:
        """(method, rule, its patches) for the identity nodes reaching a KSampler; a ParameterError naming the
        node otherwise (none, two kinds, a ControlNet the method does not take)."""
        patches = inputs.patches()
        if not patches:
            raise node_error(
                inputs.node,
                "model",
                f"no {_either(self.kinds())} node reaches this KSampler: idforge runs identity methods only",
            )
        first = patches[0]
        other = next((p for p in patches if type(p) is not type(first)), None)
        if other is not None:
            raise node_error(
                other.node, "model", f"idforge runs {first.kind} without other identity nodes on one image"
            )
        controls = inputs.positive.controls
        found = self.rules.get((type(first), bool(controls)))
        if found is None and controls:
            raise node_error(controls[0].node, "control_net", f"idforge's {first.kind} takes no ControlNet")
        if found is None:
            raise node_error(
                first.node, "model", f"no idforge method takes {first.kind} nodes without a ControlNet"
            )
        method, rule = found
        return method, rule, patches


def _either(names: Sequence[str]) -> str:
    if not names:
        return "identity"
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} or {names[-1]}"
