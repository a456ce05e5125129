"""The face parser PuLID uses (facexlib's BiSeNet, `parsing_bisenet.pth`), written natively in torch.

facexlib needs torchvision here, so the network is ours, built to read the published file's keys (`cp.resnet.*`,
`cp.arm16/arm32.*`, `cp.conv_head16/32.*`, `cp.conv_avg.*`, `ffm.*`, `conv_out/conv_out16/conv_out32.*`); the
widths are read from the shapes (the published one: ResNet-18 context path of 64/128/256/512 channels, 19 classes).

BiSeNet (face parsing variant): ResNet-18 features at 1/8, 1/16, 1/32; the 1/32 features refined by an attention
refinement module plus a global-average branch, upsampled (nearest) and convolved; likewise for 1/16 with the
upsampled 1/32 path added; a feature fusion module joins the 1/8 ResNet features with the 1/8 context features;
the main head's logits are resized bilinearly (align_corners=True) to the input. Input: RGB in [0, 1] normalised
with ImageNet's mean/std, 512 x 512 (the aligned FFHQ crop).

Labels (CelebAMask-HQ order): 0 background, 1 skin, 2 l_brow, 3 r_brow, 4 l_eye, 5 r_eye, 6 eye_g, 7 l_ear, 8 r_ear,
9 ear_r, 10 nose, 11 mouth, 12 u_lip, 13 l_lip, 14 neck, 15 neck_l, 16 cloth, 17 hair, 18 hat. PuLID whitens labels
0, 16, 18, 7, 8, 9, 14, 15 (`BACKGROUND_LABELS`) and keeps the rest (face, features and hair) in grey.
"""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F
from torch import nn

from idforge.errors import ModelFormatError

BACKGROUND_LABELS = (0, 16, 18, 7, 8, 9, 14, 15)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
PARSE_SIZE = 512


class ConvBNReLU(nn.Module):
    def __init__(self, cin: int, cout: int, ks: int = 3, padding: int = 1) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, ks, stride=1, padding=padding, bias=False)
        self.bn = nn.BatchNorm2d(cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x)))


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample = None
        if cin != cout or stride != 1:
            self.downsample = nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        residual = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
        shortcut = x if self.downsample is None else self.downsample(x)
        return F.relu(shortcut + residual)


def _layer(cin: int, cout: int, stride: int) -> nn.Sequential:
    return nn.Sequential(BasicBlock(cin, cout, stride), BasicBlock(cout, cout, 1))


class ResNet18(nn.Module):
    def __init__(self, w: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, w, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(w)
        self.layer1 = _layer(w, w, 1)
        self.layer2 = _layer(w, 2 * w, 2)
        self.layer3 = _layer(2 * w, 4 * w, 2)
        self.layer4 = _layer(4 * w, 8 * w, 2)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x = F.max_pool2d(F.relu(self.bn1(self.conv1(x))), kernel_size=3, stride=2, padding=1)
        feat8 = self.layer2(self.layer1(x))
        feat16 = self.layer3(feat8)
        return feat8, feat16, self.layer4(feat16)


class AttentionRefinement(nn.Module):
    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.conv = ConvBNReLU(cin, cout)
        self.conv_atten = nn.Conv2d(cout, cout, 1, bias=False)
        self.bn_atten = nn.BatchNorm2d(cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feat = self.conv(x)
        atten = torch.sigmoid(self.bn_atten(self.conv_atten(feat.mean(dim=(2, 3), keepdim=True))))
        return feat * atten


class ContextPath(nn.Module):
    def __init__(self, w: int, mid: int) -> None:
        super().__init__()
        self.resnet = ResNet18(w)
        self.arm16 = AttentionRefinement(4 * w, mid)
        self.arm32 = AttentionRefinement(8 * w, mid)
        self.conv_head32 = ConvBNReLU(mid, mid)
        self.conv_head16 = ConvBNReLU(mid, mid)
        self.conv_avg = ConvBNReLU(8 * w, mid, ks=1, padding=0)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        feat8, feat16, feat32 = self.resnet(x)
        avg = self.conv_avg(feat32.mean(dim=(2, 3), keepdim=True))
        feat32_sum = self.arm32(feat32) + F.interpolate(avg, feat32.shape[2:], mode="nearest")
        feat32_up = self.conv_head32(F.interpolate(feat32_sum, feat16.shape[2:], mode="nearest"))
        feat16_sum = self.arm16(feat16) + feat32_up
        feat16_up = self.conv_head16(F.interpolate(feat16_sum, feat8.shape[2:], mode="nearest"))
        return feat8, feat16_up, feat32_up


class FeatureFusion(nn.Module):
    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.convblk = ConvBNReLU(cin, cout, ks=1, padding=0)
        self.conv1 = nn.Conv2d(cout, cout // 4, 1, bias=False)
        self.conv2 = nn.Conv2d(cout // 4, cout, 1, bias=False)

    def forward(self, fsp: torch.Tensor, fcp: torch.Tensor) -> torch.Tensor:
        feat = self.convblk(torch.cat([fsp, fcp], dim=1))
        atten = torch.sigmoid(self.conv2(F.relu(self.conv1(feat.mean(dim=(2, 3), keepdim=True)))))
        return feat * atten + feat


class ParserOutput(nn.Module):
    def __init__(self, cin: int, mid: int, classes: int) -> None:
        super().__init__()
        self.conv = ConvBNReLU(cin, mid)
        self.conv_out = nn.Conv2d(mid, classes, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv_out(self.conv(x))


class BiSeNet(nn.Module):
    """The face parser; `forward` returns the main head's logits (B, classes, H, W) at the input size."""

    def __init__(self, state: dict[str, torch.Tensor]) -> None:
        super().__init__()
        try:
            w = state["cp.resnet.conv1.weight"].shape[0]
            mid = state["cp.arm16.conv.conv.weight"].shape[0]
            fuse = state["ffm.convblk.conv.weight"].shape[0]
            head_mid = state["conv_out16.conv.conv.weight"].shape[0]
            self.classes = state["conv_out.conv_out.weight"].shape[0]
        except KeyError as exc:
            raise ModelFormatError(f"face parser (BiSeNet): missing '{exc.args[0]}'") from None
        self.cp = ContextPath(w, mid)
        self.ffm = FeatureFusion(2 * w + mid, fuse)
        self.conv_out = ParserOutput(fuse, fuse, self.classes)
        self.conv_out16 = ParserOutput(mid, head_mid, self.classes)
        self.conv_out32 = ParserOutput(mid, head_mid, self.classes)
        try:
            self.load_state_dict(state, strict=True)
        except RuntimeError as exc:
            raise ModelFormatError(
                f"face parser (BiSeNet) does not fit its weights: {str(exc).splitlines()[0]}"
            ) from None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feat8, feat_cp8, _ = self.cp(x)
        out = self.conv_out(self.ffm(feat8, feat_cp8))
        return F.interpolate(out, x.shape[2:], mode="bilinear", align_corners=True)


def load_face_parser(path: str | os.PathLike) -> BiSeNet:
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ModelFormatError(f"{path}: not a file")
    try:
        if path.lower().endswith(".safetensors"):
            from safetensors.torch import load_file

            state = dict(load_file(path, device="cpu"))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # unreadable container
        raise ModelFormatError(f"{path}: unreadable checkpoint ({str(exc).splitlines()[0]})") from exc
    if not isinstance(state, dict):
        raise ModelFormatError(f"{path}: expected a state dict, found {type(state).__name__}")
    state = {k.removeprefix("module."): v for k, v in state.items()}
    floats = {k: (v.float() if v.is_floating_point() else v) for k, v in state.items()}
    return BiSeNet(floats).eval()


def face_features_image(parser: BiSeNet, aligned: torch.Tensor) -> torch.Tensor:
    """PuLID's input to EVA: the aligned crop (B, 3, 512, 512) RGB in [0, 1] with the background labels white
    and everything else grey (0.299 R + 0.587 G + 0.114 B on all three channels)."""
    mean = torch.tensor(IMAGENET_MEAN, dtype=aligned.dtype, device=aligned.device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, dtype=aligned.dtype, device=aligned.device).view(1, 3, 1, 1)
    labels = parser((aligned - mean) / std).argmax(dim=1, keepdim=True)
    background = torch.zeros_like(labels, dtype=torch.bool)
    for label in BACKGROUND_LABELS:
        background |= labels == label
    gray = (0.299 * aligned[:, 0:1] + 0.587 * aligned[:, 1:2] + 0.114 * aligned[:, 2:3]).repeat(1, 3, 1, 1)
    return torch.where(background, torch.ones_like(aligned), gray)
