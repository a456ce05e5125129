"""The fast path: one place that prepares the engine's networks for their device and dtype.

`FastPath` lists the switches; `prepare_base` and `prepare_controlnet` apply them once to a model when the engine
loads it (the engine caches the prepared model, so compiled code is reused by every later request of the same
shape). Each switch is measured by benchmarks/fullsize.py and proven by tests/test_fastpath.py to keep the output
within its stated tolerance of the eager path (`TOLERANCES`, max abs difference of the final latents on the tiny
kit, fp32 CPU):

| switch | what it does | tolerance | default |
|---|---|---|---|
| cache_control_embedding | ControlNet conditioning embedding computed once per request, not per step | exact | on |
| channels_last | NHWC memory format for UNet, ControlNets, VAE (faster convolutions on GPU and oneDNN) | 1e-4 | off |
| fused_qkv | one Q/K/V (self) and K/V (cross) matmul per attention; q/k/v stay views of it (LoRAs merge in) | 1e-4 | off |
| vae_dtype | decode in bf16 instead of the fp32 upcast of an fp16 VAE | 5e-2 (image) | off |
| compile | torch.compile of ControlNets, VAE decoder and UNet, static shapes, compiled once per shape | 1e-3 | off |
| cuda_graphs | compile mode "reduce-overhead" (CUDA graphs) for the whole-module compiles | as compile | off |
| fp8 | torchao float8 dynamic-activation / weight quantisation of UNet and ControlNet linears (sm89+) | vs bf16 | off |

Step-invariant work done once per request regardless of switches (bit-exact): face-token K/V of the IP attention
(identity/attention.py), the CFG copy of each control image (engine/loop.py), timesteps read to the host once before
the loop (no host sync inside it). CPU offload is never combined with these switches: the fast path assumes a GPU
that holds every model (SPEC.md section 9: offload costs +41% to 5.9x).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Any

import torch

from idforge.errors import ParameterError

TOLERANCES: dict[str, float] = {
    "cache_control_embedding": 0.0,
    "channels_last": 1e-4,
    "fused_qkv": 1e-4,
    "vae_dtype": 5e-2,
    "compile": 1e-3,
}
VAE_DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}
COMPILE_MODES = ("default", "max-autotune-no-cudagraphs", "max-autotune", "reduce-overhead")
_MARK = "_idforge_fastpath"


@dataclass(frozen=True)
class FastPath:
    """Switches of the fast path (see the module docstring for tolerances and defaults)."""

    cache_control_embedding: bool = True
    channels_last: bool = False
    fused_qkv: bool = False
    vae_dtype: str | None = None  # "bfloat16" | "float16" | "float32"; None keeps the engine dtype
    compile: bool = False
    compile_mode: str = "default"
    cuda_graphs: bool = False
    fp8: bool = False

    def __post_init__(self) -> None:
        if self.vae_dtype is not None and self.vae_dtype not in VAE_DTYPES:
            raise ParameterError("vae_dtype", f"{self.vae_dtype!r} is not one of {', '.join(VAE_DTYPES)}")
        if self.compile_mode not in COMPILE_MODES:
            raise ParameterError(
                "compile_mode", f"{self.compile_mode!r} is not one of {', '.join(COMPILE_MODES)}"
            )
        if self.cuda_graphs and not self.compile:
            raise ParameterError("cuda_graphs", "CUDA graphs come with torch.compile: pass compile as well")

    @classmethod
    def preset(cls, name: str, device: torch.device) -> FastPath:
        """ "eager": exact switches only; "fast": what measured faster on this device type (README, Speed)."""
        if name == "eager":
            return cls()
        if name != "fast":
            raise ParameterError("fast", f"{name!r} is not a preset (eager, fast)")
        if device.type == "cuda":
            return cls(channels_last=True, fused_qkv=True, vae_dtype="bfloat16", compile=True)
        return cls(channels_last=True, fused_qkv=True)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def with_changes(self, **changes: Any) -> FastPath:
        return replace(self, **changes)


def check_fast_request(fast: FastPath, cpu_offload: bool, device: torch.device) -> None:
    """Refuse combinations that would silently lose correctness or speed, before any work starts."""
    if cpu_offload and device.type != "cpu" and (fast.fused_qkv or fast.compile or fast.fp8):
        raise ParameterError(
            "cpu_offload",
            "cannot be combined with fused_qkv/compile/fp8: the fast path keeps every model on the GPU",
        )


# ---- step-invariant ControlNet work ------------------------------------------------------------------------


class CachedConditioningEmbedding(torch.nn.Module):
    """A ControlNet's conditioning embedding that returns its last output while given the same control tensor.

    The control image is fixed for a whole request; the loop passes the same tensor object every step, so its
    embedding (a conv stack at full image resolution) is computed once per request instead of once per step.
    The cache holds the input itself, so its identity cannot be reused by another tensor while cached.
    """

    def __init__(self, inner: torch.nn.Module) -> None:
        super().__init__()
        self.inner = inner
        self._input: torch.Tensor | None = None
        self._version = -1
        self._output: torch.Tensor | None = None

    @torch.compiler.disable
    def forward(self, condition: torch.Tensor) -> torch.Tensor:
        if self._input is condition and self._version == condition._version and self._output is not None:
            return self._output
        output = self.inner(condition)
        self._input, self._version, self._output = condition, condition._version, output
        return output

    def clear(self) -> None:
        self._input = self._output = None


def cache_conditioning_embedding(controlnet: torch.nn.Module) -> None:
    embedding = controlnet.get_submodule("controlnet_cond_embedding")
    if not isinstance(embedding, CachedConditioningEmbedding):
        controlnet.controlnet_cond_embedding = CachedConditioningEmbedding(embedding)


# ---- fused projections ----------------------------------------------------------------------------------------


@torch.no_grad()
def fuse_qkv(model: torch.nn.Module) -> int:
    """Fuse Q/K/V (self-attention) and K/V (cross-attention) of every diffusers Attention in `model`.

    Unlike diffusers' `fuse_qkv_projections`, to_q/to_k/to_v keep existing as views of the fused weight: no
    duplicate memory, and a LoRA merged in place into to_q (identity/lora.py) is seen by the fused matmul too.
    Returns the number of fused attention modules.
    """
    from diffusers.models.attention_processor import Attention, AttnProcessor2_0, FusedAttnProcessor2_0

    fused = 0
    for module in model.modules():
        if not isinstance(module, Attention) or getattr(module, "fused_projections", False):
            continue
        if not isinstance(module.processor, AttnProcessor2_0):
            continue  # only the stock SDPA processor has a fused twin
        module.fuse_projections(fuse=True)
        parts = ("to_q", "to_k", "to_v") if not module.is_cross_attention else ("to_k", "to_v")
        joint = module.to_qkv if not module.is_cross_attention else module.to_kv
        start = 0
        for name in parts:
            linear = getattr(module, name)
            rows = linear.weight.shape[0]
            linear.weight = torch.nn.Parameter(joint.weight[start : start + rows], requires_grad=False)
            if linear.bias is not None:
                linear.bias = torch.nn.Parameter(joint.bias[start : start + rows], requires_grad=False)
            start += rows
        # diffusers annotates `processor` as the plain AttnProcessor class, though it takes any processor.
        module.set_processor(FusedAttnProcessor2_0())  # type: ignore[arg-type]
        fused += 1
    return fused


# ---- compile and fp8 ----------------------------------------------------------------------------------------------


def _compile(module: torch.nn.Module, attribute: str, fast: FastPath) -> None:
    """Replace `module.<attribute>` (a bound method) by its compiled version, static shapes."""
    mode = "reduce-overhead" if fast.cuda_graphs else fast.compile_mode
    original = getattr(module, attribute)
    setattr(module, attribute, torch.compile(original, mode=mode, dynamic=False))


def quantize_fp8(module: torch.nn.Module, device: torch.device) -> None:
    """torchao float8 (dynamic activations, per-row weights) for every Linear; needs CUDA sm89+ and torchao."""
    if device.type != "cuda":
        raise ParameterError(
            "fp8", f"FP8 needs a CUDA GPU of compute capability 8.9 or newer; device is {device}"
        )
    major, minor = torch.cuda.get_device_capability(device)
    if (major, minor) < (8, 9):
        raise ParameterError("fp8", f"FP8 needs compute capability 8.9 or newer; this GPU is {major}.{minor}")
    try:
        from torchao.quantization import Float8DynamicActivationFloat8WeightConfig, PerRow, quantize_
    except ImportError as exc:
        raise ParameterError(
            "fp8", f"FP8 needs the torchao package (pip install torchao); it is not importable ({exc})"
        ) from None
    quantize_(module, Float8DynamicActivationFloat8WeightConfig(granularity=PerRow()))


# ---- entry points: called by the engine's loaders ----------------------------------------------------------------


def _already(module: torch.nn.Module, fast: FastPath) -> bool:
    done = getattr(module, _MARK, None)
    if done is not None and done != fast:
        raise ParameterError(
            "fast",
            f"{type(module).__name__} was prepared with other fast-path switches ({done}); load it again",
        )
    return done is not None


def prepare_controlnet(controlnet: torch.nn.Module, fast: FastPath, device: torch.device) -> torch.nn.Module:
    """Apply the switches to a ControlNet (once; the engine caches the result)."""
    if _already(controlnet, fast):
        return controlnet
    if fast.channels_last:
        # torch's Module.to overloads omit the documented to(memory_format=...) form.
        controlnet.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    if fast.fused_qkv:
        fuse_qkv(controlnet)
    if fast.fp8:  # after fusing: the fused projections are the linears that run
        quantize_fp8(controlnet, device)
    if fast.cache_control_embedding:
        cache_conditioning_embedding(controlnet)
    if fast.compile:
        _compile(controlnet, "forward", fast)
    setattr(controlnet, _MARK, fast)
    return controlnet


def prepare_base(base: Any, fast: FastPath, device: torch.device) -> Any:
    """Apply the switches to a base model's UNet and VAE (once; the engine caches the result)."""
    unet, vae = base.pipe.unet, base.pipe.vae
    if _already(unet, fast):
        return base
    if fast.vae_dtype is not None:
        vae.to(VAE_DTYPES[fast.vae_dtype])
        vae.idforge_keep_dtype = True  # engine/base.py decode_latents: no fp32 upcast of this VAE
    if fast.channels_last:
        unet.to(memory_format=torch.channels_last)
        vae.to(memory_format=torch.channels_last)
    if fast.fused_qkv:
        fuse_qkv(unet)
    if fast.fp8:  # after fusing; a LoRA cannot be merged into FP8 weights (FaceID's LoRA: keep fp8 off)
        quantize_fp8(unet, device)
    if fast.compile:
        _compile(unet, "forward", fast)
        _compile(vae.decoder, "forward", fast)
    setattr(unet, _MARK, fast)
    return base
