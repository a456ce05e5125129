"""Combining several reference embeddings, and InstantID's unconditional embedding.

InstantID (SPEC.md section 2): average | norm average | concat, concat meaning N input tokens to the Resampler.
FaceID (SPEC.md section 3): concat | add | subtract | average | norm average on the raw inputs before projection;
concat keeps the N inputs apart (each is projected, then the token sets are laid side by side with
`concat_token_sets`). The FaceID combiner is shape-agnostic, so it also combines CLIP features (N, 257, h).

**Ours** for norm average: mean of the L2-normalised inputs, rescaled to the mean norm of the inputs (ComfyUI
normalises across the batch dimension instead, which mixes the images' components; see docs).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal, get_args

import numpy as np
import torch

from idforge.errors import ParameterError, check_choice

InstantIDCombine = Literal["average", "norm average", "concat"]
FaceIDCombine = Literal["concat", "add", "subtract", "average", "norm average"]
INSTANTID_COMBINE_MODES: tuple[str, ...] = get_args(InstantIDCombine)
FACEID_COMBINE_MODES: tuple[str, ...] = get_args(FaceIDCombine)
UNCOND_SEED_MODULUS = 1000000007

Embeddings = Sequence[np.ndarray | torch.Tensor] | torch.Tensor | np.ndarray


def _stack(embeddings: Embeddings, name: str) -> torch.Tensor:
    """(N, ...) float32 tensor from a list of same-shaped arrays/tensors or an already stacked one."""
    if isinstance(embeddings, np.ndarray | torch.Tensor):
        stacked = torch.as_tensor(embeddings)
        if stacked.dim() < 2:
            stacked = stacked.unsqueeze(0)
    else:
        items = [torch.as_tensor(np.asarray(e) if isinstance(e, np.ndarray) else e) for e in embeddings]
        if not items:
            raise ParameterError(name, "no embeddings given")
        shapes = {tuple(t.shape) for t in items}
        if len(shapes) != 1:
            raise ParameterError(name, f"embeddings have different shapes {sorted(shapes)}")
        stacked = torch.stack(items)
    if stacked.shape[0] == 0:
        raise ParameterError(name, "no embeddings given")
    return stacked.float()


def norm_average(stacked: torch.Tensor) -> torch.Tensor:
    """Mean of the L2-normalised items (each item flattened), rescaled to the items' mean norm: (1, ...)."""
    flat = stacked.reshape(stacked.shape[0], -1)
    norms = flat.norm(dim=1, keepdim=True)
    unit = flat / norms.clamp_min(1e-12)
    mean = unit.mean(dim=0)
    mean = mean / mean.norm().clamp_min(1e-12) * norms.mean()
    return mean.reshape(1, *stacked.shape[1:])


def combine_instantid(embeddings: Embeddings, mode: str = "average") -> torch.Tensor:
    """N face embeddings (each (512,)) -> Resampler input (1, n, 512): n = 1, or N for concat."""
    check_choice("combine_embeds", mode, INSTANTID_COMBINE_MODES)
    stacked = _stack(embeddings, "combine_embeds")
    stacked = stacked.reshape(stacked.shape[0], -1)
    if mode == "concat":
        return stacked.unsqueeze(0)
    if mode == "average":
        return stacked.mean(dim=0).reshape(1, 1, -1)
    return norm_average(stacked).reshape(1, 1, -1)


def combine_faceid(embeddings: Embeddings, mode: str = "concat") -> torch.Tensor:
    """N same-shaped inputs -> (k, ...): k = N for concat (project each, then `concat_token_sets`), else 1."""
    check_choice("combine_embeds", mode, FACEID_COMBINE_MODES)
    stacked = _stack(embeddings, "combine_embeds")
    if mode == "concat":
        return stacked
    if mode == "add":
        return stacked.sum(dim=0, keepdim=True)
    if mode == "subtract":
        if stacked.shape[0] < 2:
            raise ParameterError("combine_embeds", "'subtract' needs at least two reference images")
        return stacked[:1] - stacked[1:].mean(dim=0, keepdim=True)
    if mode == "average":
        return stacked.mean(dim=0, keepdim=True)
    return norm_average(stacked)


def concat_token_sets(tokens: torch.Tensor) -> torch.Tensor:
    """(k, T, C) projected token sets -> (1, k*T, C): one softmax over all of them in the IP attention."""
    return tokens.reshape(1, -1, tokens.shape[-1])


def uncond_seed(embedding: torch.Tensor) -> int:
    """ComfyUI's seed for the noisy unconditional embedding: int(sum(E)) mod 1000000007 (sum in float32)."""
    return int(torch.sum(embedding.float()).item()) % UNCOND_SEED_MODULUS


def instantid_uncond_embedding(embedding: np.ndarray | torch.Tensor, noise: float) -> torch.Tensor:
    """Unconditional Resampler input: zeros, or noise * U[0,1) from a local generator seeded from the embedding.

    The same shape as `embedding`. The global torch RNG is never touched; on CPU the numbers equal ComfyUI's
    `torch.manual_seed(seed); noise * torch.rand_like(E)`.
    """
    embedding = torch.as_tensor(embedding).float()
    if not 0.0 <= noise <= 1.0:
        raise ParameterError("noise", f"{noise!r} is out of range [0, 1]")
    if noise == 0:
        return torch.zeros_like(embedding)
    generator = torch.Generator(device="cpu").manual_seed(uncond_seed(embedding))
    return noise * torch.rand(embedding.shape, generator=generator, dtype=torch.float32)
