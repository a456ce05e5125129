"""The config files of a kit pipeline folder: scheduler_config.json, model_index.json and the README.

The tiny SD1.5 and SDXL folders and the full-size SDXL folder share most of these files' values (the published
pipelines do too), so each family names only what it adds; the files are written key-sorted, so the bytes are
the same whichever way a dict was put together.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .common import write_json, write_readme

DIFFUSERS_VERSION = "0.42.1"

# The values SD1.5's PNDMScheduler and SDXL's EulerDiscreteScheduler configs share.
_SCHEDULER_VALUES: dict[str, Any] = {
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "beta_start": 0.00085,
    "clip_sample": False,
    "num_train_timesteps": 1000,
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
    "steps_offset": 1,
    "trained_betas": None,
}


def scheduler_config(class_name: str, **values: Any) -> dict[str, Any]:
    """A scheduler_config.json: the shared values plus the family's own `values`."""
    return {"_class_name": class_name, "_diffusers_version": DIFFUSERS_VERSION, **_SCHEDULER_VALUES, **values}


def model_index(pipeline: str, scheduler: str, **entries: Any) -> dict[str, Any]:
    """A model_index.json: one CLIP text encoder and tokenizer, UNet, VAE, no image encoder, plus `entries`."""
    return {
        "_class_name": pipeline,
        "_diffusers_version": DIFFUSERS_VERSION,
        "feature_extractor": [None, None],
        "image_encoder": [None, None],
        "scheduler": ["diffusers", scheduler],
        "text_encoder": ["transformers", "CLIPTextModel"],
        "tokenizer": ["transformers", "CLIPTokenizer"],
        "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"],
        **entries,
    }


def write_pipeline_files(
    root: Path, scheduler: Mapping[str, Any], index: Mapping[str, Any], what: str, seed: int
) -> None:
    """Write a pipeline folder's scheduler config, model index and README (the caller writes the networks)."""
    write_json(root / "scheduler" / "scheduler_config.json", scheduler)
    write_json(root / "model_index.json", index)
    write_readme(root, what, seed)
