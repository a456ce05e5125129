"""Content hashes of model files for reproducible recipes, cached by (path, size, mtime).

Hashing SDXL's 7 GB once is fine; hashing it on every image is not, so hashes are remembered in
~/.cache/idforge/hashes.json (IDFORGE_CACHE overrides the folder).
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from pathlib import Path

_LOCK = threading.Lock()
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".ckpt", ".pt", ".pth", ".onnx", ".json", ".txt")


def _cache_file() -> Path:
    root = Path(os.environ.get("IDFORGE_CACHE", Path.home() / ".cache" / "idforge"))
    return root / "hashes.json"


def _load_cache() -> dict[str, str]:
    try:
        return json.loads(_cache_file().read_text())
    except (OSError, ValueError):
        return {}


def _save_cache(cache: dict[str, str]) -> None:
    path = _cache_file()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(cache, indent=0, sort_keys=True))
        tmp.replace(path)
    except OSError:
        pass  # a read-only home must not break generation


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def model_hash(path: str | Path) -> str | None:
    """sha256 of a file, or of a folder's weight and config files (names and contents); None if absent."""
    path = Path(path)
    if not path.exists():
        return None
    files = (
        [path]
        if path.is_file()
        else sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in _WEIGHT_SUFFIXES)
    )
    key_parts = []
    for file in files:
        stat = file.stat()
        key_parts.append(f"{file.resolve()}:{stat.st_size}:{stat.st_mtime_ns}")
    key = hashlib.sha256("\n".join(key_parts).encode()).hexdigest()
    with _LOCK:
        cache = _load_cache()
        if key in cache:
            return cache[key]
    if path.is_file():
        value = _file_sha256(path)
    else:
        digest = hashlib.sha256()
        for file in files:
            digest.update(str(file.relative_to(path)).encode())
            digest.update(_file_sha256(file).encode())
        value = digest.hexdigest()
    with _LOCK:
        cache = _load_cache()
        cache[key] = value
        _save_cache(cache)
    return value
