"""Reference check before generation: is this photo a good identity reference? Plain advice, not a verdict.

Measured on the chosen face (the same choice generation makes):
- size: the shorter side of the face box in pixels (under 100 px the embedding carries little identity);
- sharpness: the variance of the Laplacian of the aligned 112x112 grey crop (the crop the recogniser sees, so the
  number does not depend on the photo's resolution); under 50 the face is usually visibly blurred;
- yaw: estimated from the 5 keypoints. After undoing the roll (the eye line made horizontal), the nose tip's
  offset from the eyes' midpoint, in units of the eye distance, is o = (p/d) tan(yaw) for a nose that stands
  p = 0.6 d in front of the eyes (a rough anthropometric ratio, ours), so yaw = atan(o / 0.6);
- several faces: generation uses one of them (the largest for InstantID, the best scored for FaceID).
The thresholds are ours, rough guides for real photos; the kit's synthetic faces only exercise the arithmetic.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import cv2
import numpy as np

from idforge.faces.align import norm_crop
from idforge.faces.analysis import Face, FaceAnalyzer, pick_index
from idforge.imageio import ImageSource, load_image, pil_to_bgr

MIN_FACE_PX = 100
MIN_SHARPNESS = 50.0
MAX_YAW_DEG = 30.0
NOSE_DEPTH_RATIO = 0.6


@dataclass
class ReferenceCheck:
    """What the check measured on one reference photo, and the advice that follows."""

    image: str
    faces_found: int
    sizes_tried: list[int]
    face_index: int | None = None
    face_px: float | None = None
    sharpness: float | None = None
    yaw_deg: float | None = None
    advice: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.advice

    def to_json(self) -> dict[str, Any]:
        return {
            "image": self.image,
            "faces_found": self.faces_found,
            "face_index": self.face_index,
            "face_px": None if self.face_px is None else round(self.face_px, 1),
            "sharpness": None if self.sharpness is None else round(self.sharpness, 1),
            "yaw_deg": None if self.yaw_deg is None else round(self.yaw_deg, 1),
            "sizes_tried": self.sizes_tried,
            "advice": self.advice,
            "ok": self.ok,
        }


def estimate_yaw(kps: np.ndarray) -> float:
    """Yaw in degrees from 5 keypoints (see the module docstring); positive when the nose points to image right."""
    points = np.asarray(kps, dtype=np.float64).reshape(5, 2)
    left_eye, right_eye, nose = points[0], points[1], points[2]
    eye_vector = right_eye - left_eye
    distance = float(np.hypot(*eye_vector))
    if distance == 0.0:
        return 0.0
    roll = math.atan2(eye_vector[1], eye_vector[0])
    cos, sin = math.cos(-roll), math.sin(-roll)
    offset = nose - (left_eye + right_eye) / 2.0
    along_eyes = cos * offset[0] - sin * offset[1]
    return math.degrees(math.atan((along_eyes / distance) / NOSE_DEPTH_RATIO))


def laplacian_sharpness(bgr: np.ndarray, kps: np.ndarray) -> float:
    """Variance of the Laplacian of the aligned 112x112 grey face crop."""
    crop = norm_crop(bgr, np.asarray(kps, dtype=np.float32), 112)
    grey = cv2.cvtColor(crop, cv2.COLOR_BGR2GRAY)
    return float(cv2.Laplacian(grey, cv2.CV_64F).var())


def face_advice(face_px: float, sharpness: float, yaw: float, faces_found: int, rule: str) -> list[str]:
    """Plain sentences for what is likely to weaken the likeness."""
    advice = []
    if face_px < MIN_FACE_PX:
        advice.append(
            f"face is {face_px:.0f} px (under {MIN_FACE_PX} px): results will be weak; use a closer or larger photo"
        )
    if sharpness < MIN_SHARPNESS:
        advice.append(
            f"face looks blurred (sharpness {sharpness:.0f}, under {MIN_SHARPNESS:.0f}): use a sharper photo"
        )
    if abs(yaw) > MAX_YAW_DEG:
        advice.append(
            f"face is turned about {abs(yaw):.0f} degrees (over {MAX_YAW_DEG:.0f}): a frontal photo gives a stronger likeness"
        )
    if faces_found > 1:
        advice.append(f"{faces_found} faces found; {rule} is used: crop the photo to the person to be sure")
    return advice


def check_face(
    bgr: np.ndarray, faces: list[Face], index: int, name: str, sizes: list[int], rule: str
) -> ReferenceCheck:
    face = faces[index]
    width, height = float(face.bbox[2] - face.bbox[0]), float(face.bbox[3] - face.bbox[1])
    face_px = min(width, height)
    sharpness = laplacian_sharpness(bgr, face.kps)
    yaw = estimate_yaw(face.kps)
    return ReferenceCheck(
        image=name,
        faces_found=len(faces),
        sizes_tried=sizes,
        face_index=index,
        face_px=face_px,
        sharpness=sharpness,
        yaw_deg=yaw,
        advice=face_advice(face_px, sharpness, yaw, len(faces), rule),
    )


def check_reference(
    analyzer: FaceAnalyzer,
    image: ImageSource,
    *,
    name: str = "image",
    pick: str | int = "largest",
    det_size: int = 640,
) -> ReferenceCheck:
    """Measure the face generation would use in `image` and give advice; a photo with no face says so."""
    picture = load_image(image, name=name)
    faces, sizes = analyzer.detect_faces(picture, det_size=det_size, name=name)
    if not faces:
        return ReferenceCheck(
            image=name,
            faces_found=0,
            sizes_tried=sizes,
            advice=[
                f"no face found (detection sizes tried: {', '.join(map(str, sizes))}): use another photo"
            ],
        )
    index = pick_index(faces, pick, name)
    rule = {"largest": "the largest", "score": "the best-scored"}.get(str(pick), f"face {index}")
    return check_face(pil_to_bgr(picture), faces, index, name, sizes, rule)
