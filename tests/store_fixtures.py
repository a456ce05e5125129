"""Tiny diffusers SDXL / SD1.5 folders for the model-store tests (seeded, random, written once per session).

Used until / besides the project's tiny kit: they are built from diffusers' and transformers' own classes so the
single-file tests check our LDM writer against diffusers' independent reader.
"""

from __future__ import annotations

from pathlib import Path

import torch

CONFIGS = Path(__file__).resolve().parents[1] / "src" / "idforge" / "models" / "configs"


def _randomize(module: torch.nn.Module, generator: torch.Generator) -> None:
    with torch.no_grad():
        for _, p in module.named_parameters():
            p.copy_(torch.randn(p.shape, generator=generator) * 0.1)


def tiny_pipeline_dir(out: Path, family: str, seed: int = 0) -> Path:
    """Write a tiny random diffusers pipeline folder of `family` ('sdxl' or 'sd15') to `out`.

    Under the engine's process-wide loading lock: a server thread of an earlier test may still be loading models,
    and diffusers' weightless-init patch is global, so a module built beside it could land on the meta device."""
    from idforge.engine.session import MODEL_LOADING_LOCK

    with MODEL_LOADING_LOCK:
        return _tiny_pipeline_dir(out, family, seed)


def _tiny_pipeline_dir(out: Path, family: str, seed: int) -> Path:
    from diffusers import (
        AutoencoderKL,
        EulerDiscreteScheduler,
        StableDiffusionPipeline,
        StableDiffusionXLPipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    g = torch.Generator().manual_seed(seed)
    vocab, merges = str(CONFIGS / "clip-bpe" / "vocab.json"), str(CONFIGS / "clip-bpe" / "merges.txt")
    te_config = dict(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        vocab_size=49408,
        max_position_embeddings=77,
        projection_dim=32,
        hidden_act="quick_gelu",
    )
    text_encoder = CLIPTextModel(CLIPTextConfig(**te_config))
    _randomize(text_encoder, g)
    tokenizer = CLIPTokenizer(vocab, merges, pad_token="<|endoftext|>")
    vae = AutoencoderKL(
        block_out_channels=(8, 16),
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        norm_num_groups=8,
        layers_per_block=1,
        latent_channels=4,
        sample_size=32,
    )
    _randomize(vae, g)
    scheduler = EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")
    if family == "sdxl":
        te2 = CLIPTextModelWithProjection(
            CLIPTextConfig(**dict(te_config, hidden_act="gelu", projection_dim=24))
        )
        _randomize(te2, g)
        unet = UNet2DConditionModel(
            block_out_channels=(32, 64),
            layers_per_block=2,
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
            transformer_layers_per_block=(1, 2),
            attention_head_dim=(2, 4),
            cross_attention_dim=64,
            norm_num_groups=8,
            sample_size=8,
            addition_embed_type="text_time",
            addition_time_embed_dim=8,
            projection_class_embeddings_input_dim=6 * 8 + 24,
            use_linear_projection=True,
        )
        _randomize(unet, g)
        pipe = StableDiffusionXLPipeline(
            vae=vae,
            text_encoder=text_encoder,
            text_encoder_2=te2,
            tokenizer=tokenizer,
            tokenizer_2=CLIPTokenizer(vocab, merges, pad_token="!"),
            unet=unet,
            scheduler=scheduler,
        )
    else:
        unet = UNet2DConditionModel(
            block_out_channels=(32, 64),
            layers_per_block=1,
            down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
            attention_head_dim=4,
            cross_attention_dim=32,
            norm_num_groups=8,
            sample_size=8,
        )
        _randomize(unet, g)
        pipe = StableDiffusionPipeline(
            vae=vae,
            text_encoder=text_encoder,
            tokenizer=tokenizer,
            unet=unet,
            scheduler=scheduler,
            safety_checker=None,
            feature_extractor=None,
            requires_safety_checker=False,
        )
    pipe.save_pretrained(out)
    return out


def fake_hf_cache(cache: Path, repo_id: str, files: dict[str, bytes], commit: str = "0" * 40) -> Path:
    """Lay out files as huggingface_hub's cache does: blobs, a snapshot of symlinks, refs/main -> commit."""
    import hashlib

    repo = cache / ("models--" + repo_id.replace("/", "--"))
    snapshot = repo / "snapshots" / commit
    for name, data in files.items():
        blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
        blob.parent.mkdir(parents=True, exist_ok=True)
        blob.write_bytes(data)
        link = snapshot / name
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(blob)
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / "main").write_text(commit)
    return snapshot
