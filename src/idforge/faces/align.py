"""Face alignment: the similarity transform from 5 keypoints to the ArcFace template, and the aligned crop.

The recogniser was trained on crops made this way, so the maths must match insightface's `norm_crop`:
a least-squares similarity (Umeyama 1991, rotation + uniform scale + translation, no reflection).
"""

from __future__ import annotations

import cv2
import numpy as np

# ArcFace 112x112 template: left eye, right eye, nose, left mouth corner, right mouth corner.
ARCFACE_TEMPLATE = np.array(
    [
        [38.2946, 51.6963],
        [73.5318, 51.5014],
        [56.0252, 71.7366],
        [41.5493, 92.3655],
        [70.7299, 92.2041],
    ],
    dtype=np.float32,
)


def template_for(image_size: int = 112) -> np.ndarray:
    """The template for a square crop of `image_size`: x size/112 when size % 112 == 0, else x size/128 shifted +8*size/128 in x."""
    if image_size <= 0:
        raise ValueError(f"image_size must be positive, got {image_size}")
    if image_size % 112 == 0:
        ratio = float(image_size) / 112.0
        shift_x = 0.0
    else:
        ratio = float(image_size) / 128.0
        shift_x = 8.0 * ratio
    dst = ARCFACE_TEMPLATE * ratio  # float32, as the reference computes it
    dst[:, 0] += shift_x
    return dst


def umeyama(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """3x3 similarity matrix T minimising sum ||T(src_i) - dst_i||^2 (scale estimated, reflection excluded)."""
    src = np.asarray(src, dtype=np.float64)
    dst = np.asarray(dst, dtype=np.float64)
    count, dim = src.shape
    src_mean = src.mean(axis=0)
    dst_mean = dst.mean(axis=0)
    src_c = src - src_mean
    dst_c = dst - dst_mean
    cov = dst_c.T @ src_c / count
    signs = np.ones(dim, dtype=np.float64)
    if np.linalg.det(cov) < 0:
        signs[dim - 1] = -1.0
    u, s, vt = np.linalg.svd(cov)
    rank = np.linalg.matrix_rank(cov)
    transform = np.eye(dim + 1, dtype=np.float64)
    if rank == 0:
        return np.full((dim + 1, dim + 1), np.nan)
    if rank == dim - 1:
        if np.linalg.det(u) * np.linalg.det(vt) > 0:
            transform[:dim, :dim] = u @ vt
        else:
            last = signs[dim - 1]
            signs[dim - 1] = -1.0
            transform[:dim, :dim] = u @ np.diag(signs) @ vt
            signs[dim - 1] = last
    else:
        transform[:dim, :dim] = u @ np.diag(signs) @ vt
    src_var = src_c.var(axis=0).sum()
    scale = 1.0 / src_var * (s @ signs)
    transform[:dim, dim] = dst_mean - scale * (transform[:dim, :dim] @ src_mean)
    transform[:dim, :dim] *= scale
    return transform


def estimate_norm(kps: np.ndarray, image_size: int = 112) -> np.ndarray:
    """2x3 affine matrix mapping the 5 keypoints (image coordinates) onto the template for `image_size`."""
    kps = np.asarray(kps, dtype=np.float32)
    if kps.shape != (5, 2):
        raise ValueError(f"expected 5 keypoints of shape (5, 2), got {kps.shape}")
    return umeyama(kps, template_for(image_size))[0:2, :]


def norm_crop(img: np.ndarray, kps: np.ndarray, image_size: int = 112) -> np.ndarray:
    """Aligned square crop of `img` (any channel order, kept), bilinear, border value 0."""
    matrix = estimate_norm(kps, image_size)
    return cv2.warpAffine(img, matrix, (image_size, image_size), borderValue=0.0)


# facexlib's FFHQ template for 512 x 512 crops (FaceRestoreHelper, face_size 512), same keypoint order.
FFHQ_512_TEMPLATE = np.array(
    [
        [192.98138, 239.94708],
        [318.90277, 240.1936],
        [256.63416, 314.01935],
        [201.26117, 371.41043],
        [313.08905, 371.15118],
    ],
    dtype=np.float32,
)
FFHQ_BORDER_RGB = (132, 133, 135)  # facexlib pads with BGR (135, 133, 132), a grey


def ffhq_crop(img_rgb: np.ndarray, kps: np.ndarray, size: int = 512) -> np.ndarray:
    """The aligned FFHQ crop PuLID's face parser and EVA02-CLIP read (facexlib's `align_warp_face`): a similarity
    transform fitted robustly (cv2.estimateAffinePartial2D, LMEDS) from the 5 keypoints to the template scaled to
    `size`, bilinear warp, grey constant border."""
    kps = np.asarray(kps, dtype=np.float32)
    if kps.shape != (5, 2):
        raise ValueError(f"expected 5 keypoints of shape (5, 2), got {kps.shape}")
    template = FFHQ_512_TEMPLATE * np.float32(size / 512.0)
    matrix = cv2.estimateAffinePartial2D(kps, template, method=cv2.LMEDS)[0]
    if matrix is None:  # degenerate keypoints: fall back to the least-squares similarity
        matrix = umeyama(kps, template)[0:2, :]
    return cv2.warpAffine(
        img_rgb, matrix, (size, size), borderMode=cv2.BORDER_CONSTANT, borderValue=FFHQ_BORDER_RGB
    )
