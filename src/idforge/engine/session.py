"""The engine session: loads each model once, keeps it in memory across calls, caches face analysis by content.

Front ends (Python API, CLI, HTTP worker) hold one `Engine` and call its methods; everything a call needs that was
already loaded for an earlier call is reused.
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from PIL import Image

from idforge.engine.base import BaseModel
from idforge.engine.device import resolve_device, resolve_dtype
from idforge.engine.fastpath import FastPath, prepare_base, prepare_controlnet
from idforge.engine.loading import check_controlnet_fits, load_base_model, load_controlnet
from idforge.errors import ModelNotFoundError

if TYPE_CHECKING:
    from idforge.models.store import ModelStore

# One model load at a time in the whole process, across every Engine (the server's worker, the studio's preview
# engine, Ray replicas in one process). diffusers/accelerate build weightless modules by patching
# `nn.Module.register_parameter` globally, not per thread: two loads interleaving can restore each other's patch
# and leave every later module on the meta device.
MODEL_LOADING_LOCK = threading.RLock()


@dataclass
class ModelChoice:
    """Which models to use: each a path, a hub id, a preset name or None for the default."""

    base: str | None = None
    instantid: str | None = None
    face_models: str | None = None
    faceid_adapter: str | None = None
    clip_vision: str | None = None
    depth_controlnet: str | None = None
    depth_estimator: str | None = None
    models_dirs: list[str] = field(default_factory=list)
    offline: bool | None = None


def image_digest(image: Image.Image) -> str:
    """Content hash of an image's pixels: the key for cached face analysis."""
    array = np.asarray(image.convert("RGB"))
    digest = hashlib.sha256(array.tobytes())
    digest.update(str(array.shape).encode())
    return digest.hexdigest()


class LRUCache:
    """A small thread-safe LRU map (face analysis results, projected tokens)."""

    def __init__(self, capacity: int = 256) -> None:
        self.capacity = capacity
        self._items: OrderedDict[Any, Any] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: Any) -> Any | None:
        with self._lock:
            if key not in self._items:
                return None
            self._items.move_to_end(key)
            return self._items[key]

    def put(self, key: Any, value: Any) -> None:
        with self._lock:
            self._items[key] = value
            self._items.move_to_end(key)
            while len(self._items) > self.capacity:
                self._items.popitem(last=False)

    def __len__(self) -> int:
        return len(self._items)


class Engine:
    """Holds loaded models and caches; one per process (the HTTP server's worker owns one)."""

    def __init__(
        self,
        models: ModelChoice | None = None,
        *,
        device: str = "auto",
        dtype: str = "auto",
        fast: FastPath | str | None = None,
    ) -> None:
        self.models = models or ModelChoice()
        self.device = resolve_device(device)
        if isinstance(fast, str):  # a preset name: "eager" | "fast"
            fast = FastPath.preset(fast, self.device)
            if dtype == "auto" and self.device.type == "cuda":
                dtype = "bfloat16"
        self.fast = fast or FastPath()  # engine/fastpath.py: applied once to each model as it loads
        self.dtype = resolve_dtype(dtype, self.device)
        self._loaded: dict[tuple[str, str], Any] = {}
        self.face_cache = LRUCache(256)
        self._lock = threading.RLock()
        self._store: ModelStore | None = None

    # -- model store -------------------------------------------------------------------------------------------
    @property
    def store(self) -> ModelStore:
        if self._store is None:
            from idforge.models.store import ModelStore

            self._store = ModelStore([Path(d) for d in self.models.models_dirs], offline=self.models.offline)
        return self._store

    def resolve(self, role: str, spec: str | None) -> Path:
        """A local path for a model role (the store searches paths, models dirs, caches, the hub)."""
        resolved = self.store.resolve(role, spec)
        return Path(resolved.path)

    def cached(self, kind: str, key: str, load: Callable[[], Any]) -> Any:
        """The model stored under (kind, key), loaded once by `load()`: how every loader keeps models in memory."""
        with self._lock:
            if (kind, key) not in self._loaded:
                with MODEL_LOADING_LOCK:
                    self._loaded[(kind, key)] = load()
            return self._loaded[(kind, key)]

    # -- loaders -------------------------------------------------------------------------------------------------
    def base_model(self, spec: str | None = None, *, family: str = "sdxl") -> BaseModel:
        spec = spec if spec is not None else self.models.base
        if spec is None:
            path = Path(self.store.default("base", "sdxl-base" if family == "sdxl" else "sd15").path)
        else:
            path = self.resolve("base", spec)

        def load():
            return prepare_base(load_base_model(path, self.dtype, self.device), self.fast, self.device)

        return self.cached("base", str(path), load)

    def controlnet(self, path: Path, base: BaseModel, name: str):
        def load():
            model = load_controlnet(path, self.dtype, self.device, base_unet_config=dict(base.unet.config))
            check_controlnet_fits(model, base, name)
            return prepare_controlnet(model, self.fast, self.device)

        return self.cached("controlnet", f"{path}|{base.source}", load)

    def face_analyzer(self, spec: str | None = None, default: str = "antelopev2"):
        from idforge.faces.analysis import FaceAnalyzer
        from idforge.models.store import resolve_face_pack

        spec = spec if spec is not None else self.models.face_models
        pack = resolve_face_pack(
            spec, models_dirs=[Path(d) for d in self.models.models_dirs], default=default
        )
        providers = ["CUDAExecutionProvider", "CPUExecutionProvider"] if self.device.type == "cuda" else None
        return self.cached("faces", str(pack), lambda: FaceAnalyzer(pack, providers=providers))

    def adapter(self, path: Path):
        from idforge.identity.checkpoint import load_adapter_checkpoint

        return self.cached("adapter", str(path), lambda: load_adapter_checkpoint(str(path)))

    def projection(self, path: Path):
        from idforge.identity.projection import build_projection

        def load():
            module = build_projection(self.adapter(path))
            return module.to(device=self.device, dtype=torch.float32).eval()

        return self.cached("projection", str(path), load)

    # -- face analysis with a content cache ------------------------------------------------------------------------
    def analyze_face(self, analyzer, image: Image.Image, *, name: str, pick: str | int, det_size: int):
        """The chosen face of an image; repeated reference photos are analysed once."""
        key = (id(analyzer), image_digest(image), str(pick), det_size)
        face = self.face_cache.get(key)
        if face is None:
            face = analyzer.get_face(image, pick=pick, det_size=det_size, name=name)
            self.face_cache.put(key, face)
        return face

    @contextmanager
    def loras(self, base: BaseModel, specs: Sequence[Any]) -> Iterator[None]:
        """Apply extra LoRAs (e.g. LCM-LoRA) for one generation and restore the UNet exactly afterwards."""
        from idforge.identity.lora import apply_lora_file

        handles = []
        try:
            for spec in specs:
                path = self.resolve("lora", spec.path)
                handles.append(apply_lora_file(base.unet, path, spec.strength))
            yield
        finally:
            for handle in reversed(handles):
                handle.remove()

    @contextmanager
    def unet_weights(self, base: BaseModel, spec: str | None) -> Iterator[None]:
        """Run with the UNet weights of a replacement file (e.g. SDXL-Lightning's `_unet.safetensors`) and put the
        original weights back bit for bit afterwards; `None` changes nothing. The file's tensors stay cached on
        the CPU, the originals are kept on the UNet's device during the call."""
        if spec is None:
            yield
            return
        from idforge.engine.unet_file import load_unet_state, swap_unet_weights

        path = self.resolve("unet", spec)
        state = self.cached("unet_file", f"{path}|{base.source}", lambda: load_unet_state(path, base.unet))
        originals = swap_unet_weights(base.unet, state)
        try:
            yield
        finally:
            swap_unet_weights(base.unet, originals)

    def loaded_models(self) -> list[str]:
        return [f"{kind}:{key}" for kind, key in self._loaded]


def require(value: Any, what: str, hint: str) -> Any:
    if value is None:
        raise ModelNotFoundError(what, [], hint)
    return value


def as_list(value: Any | Sequence[Any] | None) -> list[Any]:
    if value is None:
        return []
    if isinstance(value, list | tuple):
        return list(value)
    return [value]
