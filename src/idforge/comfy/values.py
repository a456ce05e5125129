"""The values node handlers pass along: what a node says, never tensors or models.

File names, numbers, texts, references to LoadImage nodes, masks as small arrays. A method's node classes add
their own values next to their handlers (methods/<m>/workflow.py), an `IdentityPatch` subclass for the node that
adds an identity to the MODEL: its class is what picks the method's rule (comfy/catalog.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np


@dataclass(frozen=True)
class ImageRef:
    """A LoadImage node's image (the file it names; the actual image is given when the workflow runs)."""

    node: str
    filename: str


@dataclass(frozen=True)
class ImageList:
    images: tuple[ImageRef, ...]


@dataclass(frozen=True)
class Mask:
    """A mask computed from SolidMask / MaskComposite / InvertMask: values 0..1, (height, width)."""

    array: np.ndarray = field(compare=False)
    nodes: tuple[str, ...]


@dataclass(frozen=True)
class ModelFile:
    """A model file a loader node names (a method's loader subclasses it, so its Apply node takes only its own)."""

    node: str
    file: str


@dataclass(frozen=True)
class Lora:
    node: str
    name: str
    strength_model: float
    strength_clip: float


@dataclass(frozen=True)
class IdentityPatch:
    """A node that adds an identity to the model (and, for InstantID, to the conditioning): its class, its
    reference faces and the region it is masked to. `kind` names such nodes in messages ("InstantID")."""

    kind: ClassVar[str] = "identity"

    node: str
    class_type: str
    faces: tuple[ImageRef, ...]
    mask: Mask | None


@dataclass(frozen=True)
class Model:
    checkpoint: str
    checkpoint_node: str
    loras: tuple[Lora, ...] = ()
    patches: tuple[IdentityPatch, ...] = ()


@dataclass(frozen=True)
class Clip:
    checkpoint: str
    loras: tuple[Lora, ...] = ()


@dataclass(frozen=True)
class Vae:
    checkpoint: str


@dataclass(frozen=True)
class ControlNet:
    node: str
    name: str


@dataclass(frozen=True)
class ControlApply:
    node: str
    control_net: ControlNet
    image: ImageRef
    strength: float
    start_percent: float
    end_percent: float


@dataclass(frozen=True)
class Conditioning:
    text: str
    text_nodes: tuple[str, ...]
    patches: tuple[IdentityPatch, ...] = ()
    controls: tuple[ControlApply, ...] = ()


@dataclass(frozen=True)
class FaceAnalysis:
    """An InsightFace loader's output (InstantID's, IP-Adapter's, PuLID's): idforge finds faces its own way."""

    node: str
    provider: str


@dataclass(frozen=True)
class Latent:
    node: str
    width: int
    height: int
    batch_size: int


@dataclass(frozen=True)
class Sampled:
    """A KSampler's output latent."""

    sampler: str


@dataclass(frozen=True)
class Decoded:
    sampler: str
    decoder: str


@dataclass(frozen=True)
class NotSupported:
    """An output idforge has no value for (LoadImage's MASK): refused where an input uses it."""

    node: str
    what: str
