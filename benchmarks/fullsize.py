"""Full-size architectures: idforge against diffusers' own pipelines on identical weights, in the same run.

Every network is built at its real architecture from the configs shipped with idforge (random weights:
idforge/models/fullsize.py), once, and shared by both sides:

- InstantID:          idforge `generate_instantid`   vs `StableDiffusionXLControlNetPipeline(controlnet=IdentityNet)`
- InstantID + depth:  idforge `generate_insta_depth` vs the same pipeline with `[IdentityNet, depth ControlNet]`
- FaceID SDXL:        idforge `generate_faceid`      vs `StableDiffusionXLPipeline` (no ControlNet in FaceID)
- PuLID v1.1:         idforge `generate_pulid`       vs `StableDiffusionXLPipeline` (plain SDXL: the step cost of the
                      ID branch in all 70 cross-attention layers, plus EVA02-L + parser + IDFormer once per call);
                      `--methods ...,pulid` (its full-size parts are built only then)

idforge runs its methods end to end (face analysis with the models folder's face packs, projection, IP attention,
LoRA merge for FaceID, VAE); the diffusers side gets the same prompt, size, steps, guidance and control images.
Forward hooks time each part (text encoders, face, UNet, each ControlNet, VAE decode) on both sides alike; a step is
UNet end to UNet end. FLOPs per forward are counted with torch.utils.flop_counter on weightless (meta) copies, so
TFLOP/s = FLOPs / measured part time. Sides alternate in rounds so that machine noise hits both. Variants:
`default` (the engine's exact switches) and `fast` (FastPath.preset("fast"), applied after the default rounds).

    PYTHONPATH=src nice -n 10 .venv/bin/python benchmarks/fullsize.py                      # CPU: 512 px, 2 steps, bf16
    PYTHONPATH=src python benchmarks/fullsize.py --device cuda --size 1024 --steps 10 --depth full
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import statistics
import tempfile
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from idforge.engine.fastpath import FastPath, prepare_base, prepare_controlnet
from idforge.engine.session import Engine, ModelChoice

PROMPT = "a portrait photo of a person, studio light"
NEGATIVE = "blurry"
GUIDANCE = 5.0


# ---- measuring ------------------------------------------------------------------------------------------------


class RssPeak:
    """Peak resident memory of this process while active (sampled every 10 ms from /proc)."""

    def __init__(self) -> None:
        self.peak = 0
        self._stop = threading.Event()

    @staticmethod
    def now() -> int:
        with open("/proc/self/statm") as handle:
            return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.now())
            time.sleep(0.01)

    def __enter__(self) -> RssPeak:
        self.peak = self.now()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


class PartClock:
    """Forward hooks that add up time per part and mark UNet ends (step boundaries)."""

    def __init__(self, parts: dict[str, torch.nn.Module], sync: Callable[[], None]) -> None:
        self.parts = parts
        self.sync = sync
        self.seconds: dict[str, float] = defaultdict(float)
        self.calls: dict[str, int] = defaultdict(int)
        self.unet_ends: list[float] = []
        self.first_start: float | None = None
        self._open: dict[str, float] = {}
        self._handles: list[Any] = []

    def _pre(self, name: str):
        def hook(module, args, kwargs=None):
            self.sync()
            now = time.perf_counter()
            self._open[name] = now
            if name in ("unet",) or name.startswith("controlnet:"):
                if self.first_start is None:
                    self.first_start = now

        return hook

    def _post(self, name: str):
        def hook(module, args, output):
            self.sync()
            now = time.perf_counter()
            self.seconds[name] += now - self._open.pop(name)
            self.calls[name] += 1
            if name == "unet":
                self.unet_ends.append(now)

        return hook

    def __enter__(self) -> PartClock:
        for name, module in self.parts.items():
            self._handles.append(module.register_forward_pre_hook(self._pre(name)))
            self._handles.append(module.register_forward_hook(self._post(name)))
        return self

    def __exit__(self, *exc: object) -> None:
        for handle in self._handles:
            handle.remove()

    def step_seconds(self) -> list[float]:
        if not self.unet_ends or self.first_start is None:
            return []
        starts = [self.first_start, *self.unet_ends[:-1]]
        return [end - start for start, end in zip(starts, self.unet_ends, strict=True)]


@contextmanager
def timed_call(clock_holder: dict[str, float], name: str, sync: Callable[[], None]) -> Iterator[None]:
    sync()
    started = time.perf_counter()
    yield
    sync()
    clock_holder[name] = clock_holder.get(name, 0.0) + time.perf_counter() - started


# ---- FLOPs ---------------------------------------------------------------------------------------------------


def count_flops(fn: Callable[[], Any]) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        fn()
    return int(counter.get_total_flops())


def meta_flops(size: int, depth_size: str, batch: int = 2) -> dict[str, int]:
    """FLOPs per forward of each part at this size, on weightless meta networks (CFG batch 2)."""
    from idforge.identity.attention import IdentityAttention
    from idforge.models.fullsize import meta_network, shipped_configs

    configs = shipped_configs()
    latent = size // 8
    meta = {"device": "meta", "dtype": torch.bfloat16}
    sample = torch.empty(batch, 4, latent, latent, **meta)
    text = torch.empty(batch, 77, 2048, **meta)
    face = torch.empty(batch, 16, 2048, **meta)
    added = {"text_embeds": torch.empty(batch, 1280, **meta), "time_ids": torch.empty(batch, 6, **meta)}
    image = torch.empty(batch, 3, size, size, **meta)
    t = torch.tensor(500.0, device="meta")
    flops: dict[str, int] = {}
    unet = meta_network("unet", configs).to(torch.bfloat16)
    flops["unet"] = count_flops(lambda: unet(sample, t, encoder_hidden_states=text, added_cond_kwargs=added))
    attention = IdentityAttention(unet)
    layers = {
        layer.index: (torch.empty(layer.hidden, 2048, **meta), torch.empty(layer.hidden, 2048, **meta))
        for layer in attention.cross_layers
    }
    attention.add_adapter("ip", layers)
    attention.set_adapter_inputs("ip", torch.empty(1, 16, 2048, **meta), torch.empty(1, 16, 2048, **meta))
    with attention:
        flops["unet+ip16"] = count_flops(
            lambda: unet(sample, t, encoder_hidden_states=text, added_cond_kwargs=added)
        )

    for role, context in (("identitynet", face), (f"depth_{depth_size}", text)):
        net = meta_network(role, configs).to(torch.bfloat16)
        flops[role] = count_flops(
            lambda net=net, context=context: net(
                sample, t, encoder_hidden_states=context, controlnet_cond=image, added_cond_kwargs=added
            )
        )
        flops[f"{role}|text"] = count_flops(
            lambda net=net: net(
                sample, t, encoder_hidden_states=text, controlnet_cond=image, added_cond_kwargs=added
            )
        )
    vae = meta_network("vae", configs).to(torch.bfloat16)
    flops["vae_decode"] = count_flops(lambda: vae.decode(torch.empty(1, 4, latent, latent, **meta)))
    for role in ("text_encoder", "text_encoder_2"):
        net = meta_network(role, configs).to(torch.bfloat16)
        ids = torch.zeros(batch, 77, dtype=torch.long, device="meta")
        flops[role] = count_flops(lambda net=net, ids=ids: net(ids, output_hidden_states=True))
    return flops


# ---- the two sides ---------------------------------------------------------------------------------------------


@dataclasses.dataclass
class Setup:
    engine: Engine
    full: Any
    face: Path
    pose: Path
    depth_map: Image.Image
    kps_image: Image.Image
    size: int
    steps: int
    depth_size: str


def parts_of(setup: Setup, method: str) -> dict[str, torch.nn.Module]:
    full = setup.full
    parts = {
        "text_encoder": full.text_encoder,
        "text_encoder_2": full.text_encoder_2,
        "unet": full.unet,
        "vae_decode": full.vae.decoder,
    }
    if method in ("instantid", "insta_depth"):
        parts["controlnet:identitynet"] = full.identitynet
    if method == "insta_depth":
        parts[f"controlnet:depth_{setup.depth_size}"] = full.depth[setup.depth_size]
    return parts


def run_idforge(setup: Setup, method: str, seed: int) -> dict[str, Any]:
    from idforge.engine.params import GenerationParams
    from idforge.methods.faceid.core import FaceIDParams, FaceIDRequest
    from idforge.methods.faceid.generate import generate_faceid
    from idforge.methods.insta_depth.generate import InstaDepthRequest, generate_insta_depth
    from idforge.methods.instantid.core import InstantIDRequest
    from idforge.methods.instantid.generate import generate_instantid
    from idforge.methods.preload import FACEID_PRESET

    engine = setup.engine
    engine.face_cache = type(engine.face_cache)(256)  # every run analyses its faces (no cache hits)
    gen = GenerationParams(
        prompt=PROMPT,
        negative_prompt=NEGATIVE,
        steps=setup.steps,
        guidance=GUIDANCE,
        seed=seed,
        width=setup.size,
        height=setup.size,
    )
    extra: dict[str, float] = {}
    original = engine.analyze_face

    def analyze_face(*args, **kwargs):
        with timed_call(extra, "face", sync_for(engine.device)):
            return original(*args, **kwargs)

    engine.analyze_face = analyze_face  # this run's face time (restored by `measure_idforge`)
    if method == "instantid":
        return lambda: generate_instantid(engine, InstantIDRequest(faces=[setup.face], generation=gen)), extra
    if method == "insta_depth":
        request = InstaDepthRequest(
            face=setup.face, pose=setup.pose, generation=gen, depth_map=setup.depth_map
        )
        return lambda: generate_insta_depth(engine, request), extra
    if method == "pulid":
        from idforge.methods.pulid.core import PulidRequest
        from idforge.methods.pulid.generate import generate_pulid

        request = PulidRequest(faces=[setup.face], generation=gen, model="pulid-v1.1")
        return lambda: generate_pulid(engine, request), extra
    request = FaceIDRequest(faces=[setup.face], generation=gen, faceid=FaceIDParams(), adapter=FACEID_PRESET)
    return lambda: generate_faceid(engine, request), extra


def sync_for(device: torch.device) -> Callable[[], None]:
    if device.type == "cuda":
        return torch.cuda.synchronize
    return lambda: None


class DiffusersSide:
    """diffusers' own pipelines over the same module objects."""

    def __init__(self, setup: Setup) -> None:
        from diffusers import StableDiffusionXLControlNetPipeline, StableDiffusionXLPipeline
        from diffusers.models.controlnets.multicontrolnet import MultiControlNetModel

        full = setup.full
        components = full.pipeline().components
        self.setup = setup
        self.instantid = StableDiffusionXLControlNetPipeline(**components, controlnet=full.identitynet)
        depth = full.depth[setup.depth_size]
        self.insta_depth = StableDiffusionXLControlNetPipeline(
            **components, controlnet=MultiControlNetModel([full.identitynet, depth])
        )
        self.faceid = StableDiffusionXLPipeline(**components)
        for pipe in (self.instantid, self.insta_depth, self.faceid):
            pipe.set_progress_bar_config(disable=True)

    def call(self, method: str, seed: int) -> Callable[[], Any]:
        setup = self.setup
        common = {
            "prompt": PROMPT,
            "negative_prompt": NEGATIVE,
            "num_inference_steps": setup.steps,
            "guidance_scale": GUIDANCE,
            "width": setup.size,
            "height": setup.size,
            "generator": torch.Generator("cpu").manual_seed(seed),
        }
        if method == "instantid":
            return lambda: self.instantid(image=setup.kps_image, controlnet_conditioning_scale=0.8, **common)
        if method == "insta_depth":
            return lambda: self.insta_depth(
                image=[setup.kps_image, setup.depth_map], controlnet_conditioning_scale=[0.8, 0.5], **common
            )
        return lambda: self.faceid(**common)  # FaceID and PuLID: against plain SDXL


@contextmanager
def plain_embeddings(full: Any, depth_size: str) -> Iterator[None]:
    """diffusers runs the ControlNets as shipped: without idforge's cached conditioning embedding."""
    from idforge.engine.fastpath import CachedConditioningEmbedding

    nets = [n for n in (full.identitynet, full.depth.get(depth_size)) if n is not None]
    wrapped = {}
    for net in nets:
        if isinstance(net.controlnet_cond_embedding, CachedConditioningEmbedding):
            wrapped[net] = net.controlnet_cond_embedding
            net.controlnet_cond_embedding = wrapped[net].inner
    try:
        yield
    finally:
        for net, wrapper in wrapped.items():
            wrapper.clear()
            net.controlnet_cond_embedding = wrapper


def measure(
    call: Callable[[], Any],
    parts: dict[str, torch.nn.Module],
    device: torch.device,
    extra: dict | None = None,
) -> dict[str, Any]:
    sync = sync_for(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    with RssPeak() as rss, PartClock(parts, sync) as clock:
        sync()
        started = time.perf_counter()
        output = call()
        sync()
        total = time.perf_counter() - started
    latents = getattr(output, "latents", None)
    seconds = dict(clock.seconds)
    if extra:
        seconds |= extra
    return {
        "image_s": total,
        "steps_s": clock.step_seconds(),
        "parts_s": seconds,
        "calls": dict(clock.calls),
        "peak_rss_gb": rss.peak / 2**30,
        "peak_cuda_gb": torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else None,
        "latents": latents,  # idforge's final latents (the output check between variants); dropped from JSON
    }


def summarise(runs: list[dict[str, Any]], flops: dict[str, int], method: str, side: str, depth: str) -> dict:
    steps = [s for run in runs for s in run["steps_s"]]
    parts: dict[str, float] = defaultdict(float)
    calls: dict[str, int] = defaultdict(int)
    for run in runs:
        for name, value in run["parts_s"].items():
            parts[name] += value / len(runs)
        for name, value in run["calls"].items():
            calls[name] += value // len(runs) if len(runs) else 0
    # ID tokens per cross-attention (PuLID: 32 + 8 zero tokens in fidelity mode; its ortho_v2 extras are small)
    tokens = (
        {"instantid": 16, "insta_depth": 16, "faceid": 4, "pulid": 40}[method]
        if side.startswith("idforge")
        else 0
    )
    per_forward = {
        "unet": flops["unet"] + (flops["unet+ip16"] - flops["unet"]) * tokens // 16,
        "controlnet:identitynet": flops["identitynet"]
        if side.startswith("idforge")
        else flops["identitynet|text"],
        f"controlnet:depth_{depth}": flops[f"depth_{depth}"],
        "vae_decode": flops["vae_decode"],
        "text_encoder": flops["text_encoder"],
        "text_encoder_2": flops["text_encoder_2"],
    }
    tflops = {}
    total_flops = 0
    for name, seconds in parts.items():
        if name in per_forward and calls.get(name):
            part_flops = per_forward[name] * calls[name]
            total_flops += part_flops
            tflops[name] = {
                "tflop": round(part_flops / 1e12, 3),
                "tflop_per_s": round(part_flops / 1e12 / seconds, 3) if seconds else None,
            }
    image_s = statistics.median(run["image_s"] for run in runs)
    return {
        "image_s_median": round(image_s, 3),
        "step_s_median": round(statistics.median(steps), 4) if steps else None,
        "steps_s": [round(s, 4) for s in steps],
        "parts_s_mean": {k: round(v, 4) for k, v in sorted(parts.items())},
        "calls_per_image": dict(calls),
        "flops_per_image_tflop": round(total_flops / 1e12, 3),
        "achieved_tflop_per_s_image": round(total_flops / 1e12 / image_s, 3),
        "parts_tflop": tflops,
        "peak_rss_gb": round(max(run["peak_rss_gb"] for run in runs), 2),
        "peak_cuda_gb": round(max(run["peak_cuda_gb"] for run in runs), 2)
        if runs[0]["peak_cuda_gb"]
        else None,
    }


# ---- main -----------------------------------------------------------------------------------------------------


def build_setup(args, kit: Path) -> Setup:
    from idforge.demo.samples import synthetic_face
    from idforge.methods.preload import preload_engine
    from idforge.models.fullsize import build_full_models

    dtype = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}[args.dtype]
    engine = Engine(ModelChoice(models_dirs=[str(kit)]), device=args.device, dtype=args.dtype)
    full = build_full_models(
        dtype,
        engine.device,
        depth=(args.depth,),
        pulid="pulid" in args.methods.split(","),
        progress=lambda m: print(m, flush=True),
    )
    preload_engine(engine, full, args.depth)
    # The engine's default (exact) switches, as its loaders would apply them.
    fast = engine.fast
    for net in (full.identitynet, full.depth[args.depth]):
        prepare_controlnet(net, fast, engine.device)
    work = Path(tempfile.mkdtemp(prefix="idforge-fullsize-"))
    face = work / "face.png"
    synthetic_face().save(face)
    pose = face
    depth_map = Image.new("RGB", (args.size, args.size), (128, 128, 128))
    return Setup(
        engine,
        full,
        face,
        pose,
        depth_map,
        Image.new("RGB", (args.size, args.size)),
        args.size,
        args.steps,
        args.depth,
    )


def compute_ratios(results: dict[str, dict], methods: list[str], variants: list[str]) -> dict[str, dict]:
    """idforge / diffusers (eager, same weights, same run) per method and variant: step and image time."""
    ratios = {}
    for method in methods:
        ref = results.get(f"{method}|diffusers|default")
        for variant in variants:
            ours = results.get(f"{method}|idforge|{variant}")
            if ref and ours and ref["step_s_median"]:
                ratios[f"{method}|{variant}"] = {
                    "step_ratio_idforge_over_diffusers": round(
                        ours["step_s_median"] / ref["step_s_median"], 4
                    ),
                    "image_ratio_idforge_over_diffusers": round(
                        ours["image_s_median"] / ref["image_s_median"], 4
                    ),
                }
    return ratios


def report_from_raw(args: argparse.Namespace) -> None:
    """Summary JSON and plot from a run's .raw.json (a run stopped before its end keeps what it measured)."""
    raw = json.loads(Path(args.from_raw).read_text())
    flops = meta_flops(args.size, args.depth)
    results = {}
    for key, runs in raw.items():
        method, variant = key.split("|")
        for side, side_runs in runs.items():
            if side_runs:
                results[f"{method}|{side}|{variant}"] = summarise(side_runs, flops, method, side, args.depth)
    methods = list(dict.fromkeys(key.split("|")[0] for key in raw))
    variants = list(dict.fromkeys(key.split("|")[1] for key in raw))
    result = {
        "benchmark": "fullsize",
        "from_raw": str(args.from_raw),
        "device": args.device,
        "device_name": platform.processor() or platform.machine(),
        "dtype": args.dtype,
        "size": args.size,
        "steps": args.steps,
        "depth_controlnet": args.depth,
        "torch": torch.__version__,
        "flops_per_forward_tflop": {k: round(v / 1e12, 4) for k, v in flops.items()},
        "results": results,
        "ratios": compute_ratios(results, methods, variants),
    }
    out = Path(args.out)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result["ratios"], indent=2))
    plot(result, Path(args.plot) if args.plot else out.with_suffix(".png"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="bfloat16", choices=("bfloat16", "float16", "float32"))
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--depth", default="mid", choices=("full", "mid", "small"))
    parser.add_argument("--methods", default="instantid,insta_depth,faceid")
    parser.add_argument(
        "--variants",
        default="default,fast",
        help="default: exact switches; fast: the preset; fp8: fast + FP8",
    )
    parser.add_argument(
        "--fast-methods", default=None, help="methods run in the fast variants (default: all)"
    )
    parser.add_argument("--kit", default=None, help="tiny kit for paths and face packs (built if not given)")
    parser.add_argument("--out", default="benchmarks/results/fullsize_cpu.json")
    parser.add_argument("--plot", default=None, help="PNG (default: --out with .png)")
    parser.add_argument("--from-raw", default=None, help="only summarise and plot this .raw.json")
    args = parser.parse_args()
    if args.from_raw:
        report_from_raw(args)
        return
    methods = args.methods.split(",")
    variants = args.variants.split(",")
    fast_methods = args.fast_methods.split(",") if args.fast_methods else methods
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    raw_path = out.with_suffix(".raw.json")
    raw: dict[str, list] = {}
    finals: dict[tuple[str, str], torch.Tensor] = {}
    output_checks: dict[str, dict[str, float]] = {}

    started = time.perf_counter()
    if args.kit is None:
        from idforge.models.kit import build_kit

        kit = Path(tempfile.mkdtemp(prefix="idforge-kit-")) / "kit"
        build_kit(kit)
    else:
        kit = Path(args.kit)
    setup = build_setup(args, kit)
    print(f"models ready in {time.perf_counter() - started:.0f} s", flush=True)
    flops = meta_flops(args.size, args.depth)
    print("FLOPs per forward (TFLOP):", {k: round(v / 1e12, 3) for k, v in flops.items()}, flush=True)

    # Warm-up (kernels, allocator, the kps image the diffusers side uses): one InstantID call at the size.
    from idforge.engine.params import GenerationParams
    from idforge.methods.instantid.core import InstantIDRequest
    from idforge.methods.instantid.generate import generate_instantid

    warm = generate_instantid(
        setup.engine,
        InstantIDRequest(
            faces=[setup.face],
            generation=GenerationParams(prompt="x", steps=1, seed=0, width=args.size, height=args.size),
        ),
    )
    setup.kps_image = warm.extras["kps_image"]
    diffusers_side = DiffusersSide(setup)
    print(f"warm-up done at {time.perf_counter() - started:.0f} s", flush=True)

    results: dict[str, dict[str, Any]] = {}
    for variant in variants:
        if variant in ("fast", "fp8"):
            fast = FastPath.preset("fast", setup.engine.device)
            if variant == "fp8":
                fast = fast.with_changes(fp8=True)
            base = setup.engine.base_model()
            base.pipe.unet.__dict__.pop("_idforge_fastpath", None)
            prepare_base(base, fast, setup.engine.device)
            for net in (setup.full.identitynet, setup.full.depth[args.depth]):
                net.__dict__.pop("_idforge_fastpath", None)
                prepare_controlnet(net, fast, setup.engine.device)
            setup.engine.fast = fast
        for method in methods if variant == "default" else fast_methods:
            runs: dict[str, list] = {"idforge": [], "diffusers": []}
            if setup.engine.fast.compile:  # compiled once per shape: the first call compiles, unmeasured
                compile_started = time.perf_counter()
                call, _ = run_idforge(setup, method, seed=99)
                call()
                del setup.engine.analyze_face
                print(
                    f"{variant} {method}: compiled in {time.perf_counter() - compile_started:.0f} s",
                    flush=True,
                )
            for round_index in range(args.rounds):
                call, extra = run_idforge(setup, method, seed=round_index)
                runs["idforge"].append(measure(call, parts_of(setup, method), setup.engine.device, extra))
                del setup.engine.analyze_face  # back to the class's method
                if variant == "default":
                    with plain_embeddings(setup.full, args.depth):
                        runs["diffusers"].append(
                            measure(
                                diffusers_side.call(method, round_index),
                                parts_of(setup, method),
                                setup.engine.device,
                            )
                        )
                print(
                    f"{variant} {method} round {round_index}: "
                    f"idforge {runs['idforge'][-1]['image_s']:.1f} s"
                    + (f", diffusers {runs['diffusers'][-1]['image_s']:.1f} s" if runs["diffusers"] else "")
                    + f" (at {time.perf_counter() - started:.0f} s)",
                    flush=True,
                )
            last = runs["idforge"][-1].pop("latents")
            for run in runs["idforge"] + runs["diffusers"]:
                run.pop("latents", None)
            if last is not None:
                finals[(method, variant)] = last
                reference = finals.get((method, "default"))
                if variant != "default" and reference is not None:
                    diff = (last.float() - reference.float()).abs()
                    output_checks[f"{method}|{variant}"] = {
                        "max_abs_diff_latents_vs_default": round(float(diff.max()), 5),
                        "mean_abs_diff_latents_vs_default": round(float(diff.mean()), 6),
                        "reference_abs_mean": round(float(reference.float().abs().mean()), 5),
                    }
            raw[f"{method}|{variant}"] = runs
            raw_path.write_text(json.dumps(raw, indent=1) + "\n")  # kept even if a later part fails
            for side, side_runs in runs.items():
                if side_runs:
                    results[f"{method}|{side}|{variant}"] = summarise(
                        side_runs, flops, method, f"{side}", args.depth
                    )

    ratios = compute_ratios(results, methods, variants)
    peak = 989.0 if setup.engine.device.type == "cuda" else None
    result = {
        "benchmark": "fullsize",
        "device": str(setup.engine.device),
        "device_name": torch.cuda.get_device_name()
        if setup.engine.device.type == "cuda"
        else platform.processor() or platform.machine(),
        "dtype": args.dtype,
        "size": args.size,
        "steps": args.steps,
        "rounds": args.rounds,
        "guidance": GUIDANCE,
        "depth_controlnet": args.depth,
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "fast_preset": FastPath.preset("fast", setup.engine.device).as_dict(),
        "flops_per_forward_tflop": {k: round(v / 1e12, 4) for k, v in flops.items()},
        "bf16_peak_tflop_per_s": peak,
        "build_seconds": setup.full.build_seconds,
        "results": results,
        "ratios": ratios,
        "output_checks": output_checks,
        "wall_s": round(time.perf_counter() - started, 1),
        "notes": [
            "diffusers InstantID/InstantID+depth: StableDiffusionXLControlNetPipeline; IdentityNet gets the text as "
            "context there (no face tokens, no IP attention); idforge adds IP attention with 16 face tokens",
            "diffusers FaceID baseline: StableDiffusionXLPipeline (FaceID has no ControlNet); idforge adds IP "
            "attention (4 tokens) and merges/unmerges the rank-128 LoRA per call",
            "face = face analysis with the models folder's face packs (the tiny kit's on CPU: not antelopev2's size)",
            "a step = UNet end to UNet end (the first from the first ControlNet/UNet start)",
        ],
    }
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(ratios, indent=2))
    plot(result, Path(args.plot) if args.plot else out.with_suffix(".png"))


def plot(result: dict[str, Any], path: Path) -> None:
    """Stacked bars per (method, side, variant): seconds per image split by part, with step ratios."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = list(result["results"].items())
    part_names = sorted({p for _, r in rows for p in r["parts_s_mean"]})
    colours = plt.get_cmap("tab10")
    fig, ax = plt.subplots(figsize=(11, 0.6 * len(rows) + 2.5))
    for y, (_label, r) in enumerate(rows):
        left = 0.0
        for i, part in enumerate(part_names):
            width = r["parts_s_mean"].get(part, 0.0)
            ax.barh(y, width, left=left, color=colours(i % 10), label=part if y == 0 else None)
            left += width
        other = max(r["image_s_median"] - left, 0.0)
        ax.barh(y, other, left=left, color="lightgrey", label="other" if y == 0 else None)
        step = f"{r['step_s_median']:.2f} s/step, " if r["step_s_median"] else ""
        text = f"{r['image_s_median']:.1f} s/image, {step}{r['achieved_tflop_per_s_image']:.2f} TFLOP/s"
        ax.text(left + other, y, "  " + text, va="center", fontsize=8)
    ax.set_yticks(range(len(rows)), [label for label, _ in rows], fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("seconds per image (parts timed by forward hooks)")
    ratios = ", ".join(f"{k}: {v['step_ratio_idforge_over_diffusers']}x" for k, v in result["ratios"].items())
    ax.set_title(
        f"Full-size SDXL networks, random weights: {result['device']} {result['dtype']} {result['size']} px, "
        f"{result['steps']} steps\nstep time idforge / diffusers: {ratios}",
        fontsize=9,
    )
    ax.legend(fontsize=7, loc="lower right")
    ax.set_xlim(0, max(r["image_s_median"] for _, r in rows) * 1.6)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
