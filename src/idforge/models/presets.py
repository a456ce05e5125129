"""Named published models: where the hub keeps them, which files a job needs, and what ComfyUI users call them.

A preset is what `idforge models fetch NAME` downloads and what the store looks for, by file or folder name,
in a ComfyUI-style models folder. Licences are summarised from the model cards: check the card before use.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from idforge.errors import ModelNotFoundError

ROLES = (
    "base",
    "instantid",
    "identitynet",
    "ipadapter",
    "lora",
    "clip_vision",
    "controlnet",
    "depth_estimator",
    "face_pack",
    "unet",
    "pulid",
    "eva_clip",
    "face_parser",
)

# ComfyUI folders (under models/) that hold each role; the first is where `fetch --models` puts a download.
COMFY_FOLDERS: dict[str, tuple[str, ...]] = {
    "base": ("checkpoints", "diffusers"),
    "instantid": ("instantid",),
    "identitynet": ("controlnet", "instantid"),
    "ipadapter": ("ipadapter", "instantid"),
    "lora": ("loras",),
    "clip_vision": ("clip_vision",),
    "controlnet": ("controlnet",),
    "depth_estimator": ("depth",),
    "face_pack": ("insightface/models",),
    "unet": ("unet", "diffusion_models"),
    "pulid": ("pulid", "ipadapter"),  # cubiq's PuLID_ComfyUI reads models/pulid/
    "eva_clip": ("clip", "clip_vision", "pulid"),
    "face_parser": ("facexlib", "pulid"),  # facexlib's weights folder
}

INSIGHTFACE_NOTE = (
    "insightface model packs are for non-commercial research use only (insightface licence); they are not on a "
    "hub repository we can name reliably: get {name}.zip from the insightface project's model zoo (GitHub releases "
    "of deepinsight/insightface) or the copy your ComfyUI InstantID/IPAdapter install guide points to"
)


@dataclass(frozen=True)
class Preset:
    """One published model.

    `files` are repo-relative paths (exact names, no globs) that together make the model; `subfolder` is the
    part of the repo that is the model itself (a diffusers/transformers folder), "" for the repo root, and None
    when the model is a single file (`files[0]`). `comfy_names` are the file or folder names users keep it under
    in the role's ComfyUI folders.
    """

    name: str
    role: str
    repo_id: str | None
    files: tuple[str, ...]
    subfolder: str | None
    comfy_names: tuple[str, ...]
    licence: str
    family: str | None = None
    description: str = ""
    aliases: tuple[str, ...] = field(default=())

    @property
    def is_file(self) -> bool:
        return self.subfolder is None


def _diffusers_pipeline_files(with_text_encoder_2: bool) -> tuple[str, ...]:
    files = [
        "model_index.json",
        "scheduler/scheduler_config.json",
        "unet/config.json",
        "unet/diffusion_pytorch_model.safetensors",
        "vae/config.json",
        "vae/diffusion_pytorch_model.safetensors",
    ]
    encoders = ["text_encoder", "text_encoder_2"] if with_text_encoder_2 else ["text_encoder"]
    tokenizers = ["tokenizer", "tokenizer_2"] if with_text_encoder_2 else ["tokenizer"]
    for enc in encoders:
        files += [f"{enc}/config.json", f"{enc}/model.safetensors"]
    for tok in tokenizers:
        files += [
            f"{tok}/{n}"
            for n in ("merges.txt", "vocab.json", "special_tokens_map.json", "tokenizer_config.json")
        ]
    return tuple(files)


FACEID_LICENCE = "non-commercial research only (h94/IP-Adapter-FaceID card; uses insightface embeddings)"

_FACEID = (
    # (preset suffix, file stem, family, has a LoRA)
    ("sdxl", "ip-adapter-faceid_sdxl", "sdxl", True),
    ("plusv2-sdxl", "ip-adapter-faceid-plusv2_sdxl", "sdxl", True),
    ("portrait-sdxl", "ip-adapter-faceid-portrait_sdxl", "sdxl", False),
    ("portrait-sdxl-unnorm", "ip-adapter-faceid-portrait_sdxl_unnorm", "sdxl", False),
    ("sd15", "ip-adapter-faceid_sd15", "sd15", True),
    ("plus-sd15", "ip-adapter-faceid-plus_sd15", "sd15", True),
    ("plusv2-sd15", "ip-adapter-faceid-plusv2_sd15", "sd15", True),
    ("portrait-v11-sd15", "ip-adapter-faceid-portrait-v11_sd15", "sd15", False),
)


def _build() -> dict[str, Preset]:
    presets = [
        Preset(
            "sdxl-base",
            "base",
            "stabilityai/stable-diffusion-xl-base-1.0",
            _diffusers_pipeline_files(True),
            "",
            (
                "sd_xl_base_1.0.safetensors",
                "sd_xl_base_1.0_0.9vae.safetensors",
                "stable-diffusion-xl-base-1.0",
            ),
            "CreativeML Open RAIL++-M",
            family="sdxl",
            description="Stable Diffusion XL base 1.0 (InstantID, FaceID SDXL)",
            aliases=("sdxl",),
        ),
        Preset(
            "sd15",
            "base",
            "stable-diffusion-v1-5/stable-diffusion-v1-5",
            _diffusers_pipeline_files(False),
            "",
            (
                "v1-5-pruned-emaonly.safetensors",
                "v1-5-pruned-emaonly-fp16.safetensors",
                "v1-5-pruned.safetensors",
                "stable-diffusion-v1-5",
            ),
            "CreativeML Open RAIL-M",
            family="sd15",
            description="Stable Diffusion 1.5 (FaceID SD1.5 variants)",
            aliases=("sd1.5", "stable-diffusion-v1-5"),
        ),
        Preset(
            "instantid",
            "instantid",
            "InstantX/InstantID",
            (
                "ControlNetModel/config.json",
                "ControlNetModel/diffusion_pytorch_model.safetensors",
                "ip-adapter.bin",
            ),
            "",
            ("InstantX-InstantID", "InstantID"),
            "Apache-2.0 (model card); needs antelopev2, which is non-commercial",
            family="sdxl",
            description="InstantID: IdentityNet (ControlNetModel/) + ip-adapter.bin",
        ),
        Preset(
            "identitynet",
            "identitynet",
            "InstantX/InstantID",
            ("ControlNetModel/config.json", "ControlNetModel/diffusion_pytorch_model.safetensors"),
            "ControlNetModel",
            (
                "instantid-controlnet.safetensors",
                "InstantID-ControlNet.safetensors",
                "instantid_controlnet.safetensors",
                "ControlNetModel",
            ),
            "Apache-2.0 (InstantX/InstantID card)",
            family="sdxl",
            description="InstantID IdentityNet, an SDXL ControlNet driven by face keypoints",
        ),
        Preset(
            "instantid-ipadapter",
            "ipadapter",
            "InstantX/InstantID",
            ("ip-adapter.bin",),
            None,
            ("ip-adapter.bin", "ip-adapter.safetensors", "ip-adapter_instant_id_sdxl.bin"),
            "Apache-2.0 (InstantX/InstantID card)",
            family="sdxl",
            description="InstantID face Resampler + IP cross-attention weights",
        ),
        Preset(
            "clip-vit-h",
            "clip_vision",
            "h94/IP-Adapter",
            ("models/image_encoder/config.json", "models/image_encoder/model.safetensors"),
            "models/image_encoder",
            (
                "CLIP-ViT-H-14-laion2B-s32B-b79K.safetensors",
                "clip-vit-h-14-laion2b-s32b-b79k.safetensors",
                "CLIP-ViT-H-14-laion2B-s32B-b79K",
                "image_encoder",
            ),
            "MIT (laion/CLIP-ViT-H-14-laion2B-s32B-b79K)",
            description="OpenCLIP ViT-H/14 image encoder (FaceID Plus / PlusV2); also laion/CLIP-ViT-H-14-laion2B-s32B-b79K",
            aliases=("laion/CLIP-ViT-H-14-laion2B-s32B-b79K",),
        ),
        Preset(
            "depth-anything-v2-small",
            "depth_estimator",
            "depth-anything/Depth-Anything-V2-Small-hf",
            ("config.json", "model.safetensors", "preprocessor_config.json"),
            "",
            ("Depth-Anything-V2-Small-hf", "depth-anything-v2-small"),
            "Apache-2.0",
            description="Depth Anything V2 Small (transformers AutoModelForDepthEstimation)",
        ),
        Preset(
            "dpt-hybrid-midas",
            "depth_estimator",
            "Intel/dpt-hybrid-midas",
            ("config.json", "model.safetensors", "preprocessor_config.json"),
            "",
            ("dpt-hybrid-midas",),
            "Apache-2.0",
            description="DPT hybrid MiDaS depth estimator",
        ),
        Preset(
            "antelopev2",
            "face_pack",
            None,
            ("scrfd_10g_bnkps.onnx", "glintr100.onnx"),
            "",
            ("antelopev2",),
            "non-commercial research only (insightface)",
            description="insightface pack used by InstantID",
        ),
        Preset(
            "buffalo_l",
            "face_pack",
            None,
            ("det_10g.onnx", "w600k_r50.onnx"),
            "",
            ("buffalo_l",),
            "non-commercial research only (insightface)",
            description="insightface pack used by IP-Adapter FaceID",
        ),
    ]
    for suffix, name, size in (
        ("", "controlnet-depth-sdxl-1.0", "full"),
        ("-small", "controlnet-depth-sdxl-1.0-small", "small"),
        ("-mid", "controlnet-depth-sdxl-1.0-mid", "mid"),
    ):
        presets.append(
            Preset(
                f"controlnet-depth-sdxl{suffix}",
                "controlnet",
                f"diffusers/{name}",
                ("config.json", "diffusion_pytorch_model.safetensors"),
                "",
                (name, f"{name}.safetensors", f"diffusers_{name.replace('-', '_')}.safetensors"),
                "OpenRAIL++ (diffusers model card)",
                family="sdxl",
                description=f"SDXL depth ControlNet ({size})",
            )
        )
    for suffix, stem, family, has_lora in _FACEID:
        presets.append(
            Preset(
                f"faceid-{suffix}",
                "ipadapter",
                "h94/IP-Adapter-FaceID",
                (f"{stem}.bin",),
                None,
                (f"{stem}.bin", f"{stem}.safetensors"),
                FACEID_LICENCE,
                family=family,
                description=f"IP-Adapter FaceID ({stem})",
                aliases=(stem,),
            )
        )
        if has_lora:
            presets.append(
                Preset(
                    f"faceid-{suffix}-lora",
                    "lora",
                    "h94/IP-Adapter-FaceID",
                    (f"{stem}_lora.safetensors",),
                    None,
                    (f"{stem}_lora.safetensors",),
                    FACEID_LICENCE,
                    family=family,
                    description=f"LoRA that goes with {stem}.bin",
                    aliases=(f"{stem}_lora",),
                )
            )
    presets += _pulid_files()
    presets += _few_step_files()
    return {p.name: p for p in presets}


PULID_LICENCE = "Apache-2.0 (guozinan/PuLID card); needs antelopev2, which is non-commercial"


def _pulid_files() -> list[Preset]:
    """PuLID's published files (ToTheBeginning/PuLID, huchenlei/ipadapter_pulid) and the towers it needs."""
    return [
        Preset(
            "pulid-v1",
            "pulid",
            "guozinan/PuLID",
            ("pulid_v1.bin",),
            None,
            ("pulid_v1.bin",),
            PULID_LICENCE,
            family="sdxl",
            description="PuLID v1 for SDXL: MLP IDEncoder (10 ID tokens) + ID K/V of the 70 cross-attention layers",
        ),
        Preset(
            "pulid-v1.1",
            "pulid",
            "guozinan/PuLID",
            ("pulid_v1.1.safetensors",),
            None,
            ("pulid_v1.1.safetensors",),
            PULID_LICENCE,
            family="sdxl",
            description="PuLID v1.1 for SDXL: IDFormer perceiver (32 queries, several references in one pass)",
        ),
        Preset(
            "pulid-comfyui",
            "pulid",
            "huchenlei/ipadapter_pulid",
            ("ip-adapter_pulid_sdxl_fp16.safetensors",),
            None,
            ("ip-adapter_pulid_sdxl_fp16.safetensors",),
            PULID_LICENCE,
            family="sdxl",
            description="PuLID v1 converted for ComfyUI (fp16, image_proj. / ip_adapter. keys)",
        ),
        Preset(
            "eva02-clip-l-14-336",
            "eva_clip",
            "QuanSun/EVA-CLIP",
            ("EVA02_CLIP_L_336_psz14_s6B.pt",),
            None,
            ("EVA02_CLIP_L_336_psz14_s6B.pt", "EVA02_CLIP_L_336_psz14_s6B.safetensors"),
            "MIT (baaivision/EVA)",
            description="EVA02-CLIP-L-14-336 (PuLID's face encoder; the visual tower is used)",
            aliases=("EVA02-CLIP-L-14-336",),
        ),
        Preset(
            "bisenet-face-parsing",
            "face_parser",
            None,
            ("parsing_bisenet.pth",),
            None,
            ("parsing_bisenet.pth",),
            "MIT (xinntao/facexlib; weights from zllrunning/face-parsing.PyTorch)",
            description="facexlib's BiSeNet face parser (PuLID whitens the background with it); get it from the "
            "facexlib v0.2.2 GitHub release",
        ),
    ]


FEW_STEP_LICENCE = "OpenRAIL++ (model card)"


def _few_step_files() -> list[Preset]:
    """The published few-step LoRAs and UNets (SPEC.md section 8), by their file names on the hub."""
    out = [
        Preset(
            "lcm-lora-sdxl",
            "lora",
            "latent-consistency/lcm-lora-sdxl",
            ("pytorch_lora_weights.safetensors",),
            None,
            (
                "lcm-lora-sdxl.safetensors",
                "lcm_lora_sdxl.safetensors",
                "lcm-lora-sdxl/pytorch_lora_weights.safetensors",
            ),
            FEW_STEP_LICENCE,
            family="sdxl",
            description="LCM-LoRA for SDXL (pytorch_lora_weights.safetensors on the hub; keep it as lcm-lora-sdxl.safetensors)",
        )
    ]
    for steps in (2, 4, 8):
        name = f"sdxl_lightning_{steps}step_lora.safetensors"
        out.append(
            Preset(
                f"sdxl-lightning-{steps}step-lora",
                "lora",
                "ByteDance/SDXL-Lightning",
                (name,),
                None,
                (name,),
                FEW_STEP_LICENCE,
                family="sdxl",
                description=f"SDXL-Lightning {steps}-step LoRA",
            )
        )
    for steps, file in (
        (1, "sdxl_lightning_1step_unet_x0.safetensors"),
        *((n, f"sdxl_lightning_{n}step_unet.safetensors") for n in (2, 4, 8)),
    ):
        out.append(
            Preset(
                f"sdxl-lightning-{steps}step-unet",
                "unet",
                "ByteDance/SDXL-Lightning",
                (file,),
                None,
                (file,),
                FEW_STEP_LICENCE,
                family="sdxl",
                description=f"SDXL-Lightning {steps}-step UNet" + (" (x0 prediction)" if steps == 1 else ""),
            )
        )
    for label, file in (
        ("1step", "Hyper-SDXL-1step-lora.safetensors"),
        ("2steps", "Hyper-SDXL-2steps-lora.safetensors"),
        ("4steps", "Hyper-SDXL-4steps-lora.safetensors"),
        ("8steps", "Hyper-SDXL-8steps-lora.safetensors"),
        ("8steps-cfg", "Hyper-SDXL-8steps-CFG-lora.safetensors"),
        ("12steps-cfg", "Hyper-SDXL-12steps-CFG-lora.safetensors"),
    ):
        out.append(
            Preset(
                f"hyper-sdxl-{label}-lora",
                "lora",
                "ByteDance/Hyper-SD",
                (file,),
                None,
                (file,),
                FEW_STEP_LICENCE,
                family="sdxl",
                description=f"Hyper-SD SDXL {label} LoRA",
            )
        )
    return out


PRESETS: dict[str, Preset] = _build()

# What a role resolves to when the caller names nothing.
DEFAULTS: dict[str, str] = {
    "base": "sdxl-base",
    "instantid": "instantid",
    "identitynet": "identitynet",
    "clip_vision": "clip-vit-h",
    "controlnet": "controlnet-depth-sdxl",
    "depth_estimator": "depth-anything-v2-small",
    "face_pack": "antelopev2",
    "pulid": "pulid-v1.1",
    "eva_clip": "eva02-clip-l-14-336",
    "face_parser": "bisenet-face-parsing",
}


def find_preset(name: str) -> Preset | None:
    """The preset called `name` (or by one of its aliases, or its file name), case-insensitively."""
    key = name.strip().lower()
    for preset in PRESETS.values():
        names = (preset.name, *preset.aliases, *preset.comfy_names)
        if key in (n.lower() for n in names):
            return preset
    return None


def get_preset(name: str) -> Preset:
    """Like find_preset, but a missing name is an error that lists the known ones."""
    preset = find_preset(name)
    if preset is None:
        raise ModelNotFoundError(
            name, ["idforge presets"], hint=f"known presets: {', '.join(sorted(PRESETS))}"
        )
    return preset
