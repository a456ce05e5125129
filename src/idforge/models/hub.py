"""Hugging Face hub access: find a model in the standard cache, or download only the files it needs.

Offline-first: the cache is always looked at without the network. Every hub failure (offline, missing repo,
gated repo, network) becomes one ModelNotFoundError naming the repo and what to do. Environment variables are
read at call time (huggingface_hub reads its own once at import), so tests and users can switch them freely.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from idforge.errors import ModelNotFoundError

TRUE = {"1", "true", "yes", "on"}


def offline_mode(offline: bool | None = None) -> bool:
    """True when downloads are off: `offline=True`, or HF_HUB_OFFLINE / TRANSFORMERS_OFFLINE set in the env."""
    if offline is not None:
        return offline
    return any(
        os.environ.get(v, "").strip().lower() in TRUE for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    )


def hub_cache_dir(cache_dir: str | Path | None = None) -> Path:
    """The hub cache huggingface_hub uses: HF_HUB_CACHE, else HF_HOME/hub, else ~/.cache/huggingface/hub."""
    if cache_dir:
        return Path(cache_dir)
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"])
    home = os.environ.get("HF_HOME") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "huggingface"
    )
    return Path(home) / "hub"


def cached_files(repo_id: str, files: Sequence[str], cache_dir: str | Path | None = None) -> Path | None:
    """The cached snapshot folder holding every one of `files`, or None when any is missing."""
    from huggingface_hub import try_to_load_from_cache

    cache = hub_cache_dir(cache_dir)
    snapshot: Path | None = None
    for name in files:
        found = try_to_load_from_cache(repo_id, name, cache_dir=str(cache))
        if not isinstance(found, str):
            return None
        root = Path(found)
        for _ in Path(name).parts:
            root = root.parent
        if snapshot is not None and root != snapshot:
            return None  # files from different revisions: treat as not cached
        snapshot = root
    return snapshot


def download(
    repo_id: str,
    files: Sequence[str],
    *,
    what: str,
    cache_dir: str | Path | None = None,
    local_dir: str | Path | None = None,
    offline: bool | None = None,
) -> Path:
    """Download `files` of `repo_id` (into the hub cache, or `local_dir`) and return the folder holding them.

    `what` names the model in errors. Progress bars are huggingface_hub's own (on unless
    HF_HUB_DISABLE_PROGRESS_BARS is set).
    """
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        OfflineModeIsEnabled,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    cache = hub_cache_dir(cache_dir)
    looked = [f"hub cache {cache} ({repo_id})"]
    fetch_hint = f"run `idforge models fetch {what}` where the hub is reachable, or copy the files there"
    if offline_mode(offline):
        raise ModelNotFoundError(
            what,
            looked,
            hint=f"offline (HF_HUB_OFFLINE or --offline) so {repo_id} was not downloaded; {fetch_hint}",
        )
    try:
        folder = snapshot_download(
            repo_id,
            allow_patterns=list(files),
            cache_dir=str(cache),
            local_dir=str(local_dir) if local_dir else None,
        )
    except GatedRepoError as exc:
        raise ModelNotFoundError(
            what,
            looked,
            hint=f"{repo_id} is gated: accept its licence on the hub page, then log in (`hf auth login`) or set HF_TOKEN",
        ) from exc
    except RepositoryNotFoundError as exc:
        raise ModelNotFoundError(
            what,
            looked,
            hint=f"hub repository {repo_id} does not exist or is private (check the name, or log in)",
        ) from exc
    except RevisionNotFoundError as exc:
        raise ModelNotFoundError(what, looked, hint=f"{repo_id}: revision not found") from exc
    except (LocalEntryNotFoundError, OfflineModeIsEnabled) as exc:
        raise ModelNotFoundError(
            what, looked, hint=f"{repo_id} is not cached and the hub is unreachable or offline; {fetch_hint}"
        ) from exc
    except HfHubHTTPError as exc:
        raise ModelNotFoundError(
            what, looked, hint=f"downloading {repo_id} failed ({exc}); {fetch_hint}"
        ) from exc
    except (OSError, ConnectionError) as exc:
        raise ModelNotFoundError(
            what,
            looked,
            hint=f"network error while downloading {repo_id} ({type(exc).__name__}); {fetch_hint}",
        ) from exc
    root = Path(folder)
    missing = [f for f in files if not (root / f).exists()]
    if missing:
        raise ModelNotFoundError(
            what, [*looked, f"hub repository {repo_id}"], hint=f"the repository has no {', '.join(missing)}"
        )
    return root
