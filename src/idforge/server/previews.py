"""Free previews for the studio, before any GPU time is spent: the faces found, the keypoint image, the depth map.

`POST /v1/preview/faces` shows every reference's detected faces (boxes, which one the method uses, why none),
the pose image's face and the keypoint image IdentityNet will see; `POST /v1/preview/depth` shows the depth map
Insta Depth will use. They answer with what a generation would do, because they call the same pieces in the same
order (pick policy, fallback detection sizes, `draw_kps` at the output size, the depth estimator at the output size).

Previews never touch the worker's models: they run on a second, CPU-only `Engine` that loads just the face packs and
the depth estimator, one preview at a time (a lock), in the thread pool. They are authenticated and cost nothing.
The endpoints are in routers/previews.py; this module is the service and its bodies.
"""

import base64
import io
import threading
from typing import TYPE_CHECKING, Any, Literal

from PIL import Image
from pydantic import BaseModel, ConfigDict, Field

from idforge.errors import NoFaceError
from idforge.imageio import load_image
from idforge.server.images import ImagePolicy, image_bytes
from idforge.server.schemas import IMAGE_HELP, RequestFieldError

if TYPE_CHECKING:
    from idforge.engine.session import Engine
    from idforge.methods.registry import Method

FaceStatus = Literal["one_face", "several_faces", "no_face"]
KeypointSource = Literal["pose_image", "kps_image", "face_image"]
PREVIEW_MAX_SIDE = 512  # annotated images are shrunk to this: a preview, not a copy of the upload


class FacesPreviewBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    method: str = Field(
        "instantid",
        max_length=64,
        description="the method (a registered one with face previews) whose face pack and face choice to use",
    )
    face_image: str = Field(..., description=f"Reference face: {IMAGE_HELP}")
    extra_face_images: list[str] = Field(default_factory=list, max_length=7, description="More references")
    pose_image: str | None = Field(
        None, description="InstantID / Insta Depth: the photo giving the keypoints"
    )
    kps_image: str | None = Field(None, description="InstantID: an already drawn keypoint image")
    pose_fallback: bool = Field(False, description="InstantID: reference keypoints when the pose has no face")
    width: int | None = Field(None, ge=64, le=2048, multiple_of=8, description="output width (with height)")
    height: int | None = Field(None, ge=64, le=2048, multiple_of=8, description="output height (with width)")


class DepthPreviewBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    pose_image: str = Field(..., description=f"Pose image: {IMAGE_HELP}")
    width: int | None = Field(None, ge=64, le=2048, multiple_of=8, description="output width (with height)")
    height: int | None = Field(None, ge=64, le=2048, multiple_of=8, description="output height (with width)")


class FoundFace(BaseModel):
    bbox: list[float] = Field(..., description="x1, y1, x2, y2 in the image's pixels")
    score: float


class ImageFaces(BaseModel):
    field: str = Field(..., description="the request field this image came from, e.g. extra_face_images[0]")
    width: int
    height: int
    faces: list[FoundFace] = Field(..., description="left to right")
    used: int | None = Field(..., description="index of the face the method uses; null when none is found")
    status: FaceStatus
    message: str = Field(..., description="one line for a person: what was found and what will be used")
    annotated: str = Field(..., description="base64 JPEG: boxes drawn, the used face in green")


class KeypointsPreview(BaseModel):
    image: str = Field(..., description="base64 PNG: the keypoint image at the output size")
    source: KeypointSource
    width: int
    height: int


class FacesPreviewResponse(BaseModel):
    method: str
    references: list[ImageFaces]
    pose: ImageFaces | None = None
    keypoints: KeypointsPreview | None = Field(None, description="InstantID and Insta Depth only")
    warnings: list[str] = Field(default_factory=list)
    problems: list[str] = Field(default_factory=list, description="what would make the generation fail")


class DepthPreviewResponse(BaseModel):
    image: str = Field(..., description="base64 PNG: the depth map at the output size")
    width: int
    height: int


def _png_b64(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def _jpeg_b64(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, format="JPEG", quality=88)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def _output_size(body: Any, source_size: tuple[int, int]) -> tuple[int, int]:
    """The generation's output size: both given, or InstantID's resize rule on the keypoint source."""
    from idforge.engine.sizing import instantid_size
    from idforge.errors import ParameterError

    if (body.width is None) != (body.height is None):
        raise ParameterError(
            "width" if body.width is None else "height", "give both width and height, or neither"
        )
    if body.width is not None:
        return body.width, body.height
    return instantid_size(*source_size)


class PreviewService:
    """A CPU-only Engine for previews (face packs, depth estimator), used by one preview at a time."""

    def __init__(self, models_dirs: list[str], face_models: str | None, policy: ImagePolicy) -> None:
        self.models_dirs = models_dirs
        self.face_models = face_models
        self.policy = policy
        self.lock = threading.Lock()
        self._engine: Engine | None = None

    @property
    def engine(self) -> "Engine":  # quoted: this module has no __future__ annotations (FastAPI reads them)
        if self._engine is None:
            from idforge.engine.session import Engine, ModelChoice

            choice = ModelChoice(face_models=self.face_models, models_dirs=list(self.models_dirs))
            self._engine = Engine(choice, device="cpu", dtype="float32")
        return self._engine

    def _image(self, value: str, field: str) -> Image.Image:
        return load_image(
            image_bytes(value, field, self.policy), name=field, max_pixels=self.policy.max_pixels
        )

    def _analyse(
        self, analyzer, image: Image.Image, field: str, pick: str | int, det_size: int
    ) -> tuple[ImageFaces, Any]:
        """Every face the generation's search finds in `image`, and the one its pick policy takes (or None)."""
        from idforge.faces.analysis import fallback_sizes, pick_index
        from idforge.faces.draw import draw_faces

        faces = analyzer.find_faces(image, det_size=det_size, name=field)
        used = pick_index(faces, pick, field) if faces else None
        status: FaceStatus
        if not faces:
            sizes = fallback_sizes(det_size, analyzer.largest_stride)
            status = "no_face"
            message = str(NoFaceError(field, sizes, "and with the image padded by 25%"))
        elif len(faces) == 1:
            status, message = "one_face", f"{field}: one face found; it is used"
        else:
            rules: dict[str | int, str] = {"largest": "the largest", "score": "the most confident"}
            rule = rules.get(pick, f"face {pick}")
            status = "several_faces"
            message = f"{field}: {len(faces)} faces found; {rule} (#{used}, green) is used"
        annotated = draw_faces(image, faces, used)
        annotated.thumbnail((PREVIEW_MAX_SIDE, PREVIEW_MAX_SIDE))
        found = [FoundFace(bbox=[round(float(v), 2) for v in f.bbox], score=round(f.score, 4)) for f in faces]
        summary = ImageFaces(
            field=field,
            width=image.width,
            height=image.height,
            faces=found,
            used=used,
            status=status,
            message=message,
            annotated=_jpeg_b64(annotated),
        )
        return summary, (faces[used] if used is not None else None)

    def faces(self, body: FacesPreviewBody) -> FacesPreviewResponse:
        from idforge.engine.sizing import scale_kps
        from idforge.faces.draw import draw_kps

        method = preview_method(body.method)
        takes = method.body.model_fields
        search = method.face_search
        fields = ["face_image"] + [f"extra_face_images[{i}]" for i in range(len(body.extra_face_images))]
        references = [
            self._image(v, f) for v, f in zip([body.face_image, *body.extra_face_images], fields, strict=True)
        ]
        pose = (
            self._image(body.pose_image, "pose_image") if body.pose_image and "pose_image" in takes else None
        )
        ready_kps = (
            self._image(body.kps_image, "kps_image") if body.kps_image and "kps_image" in takes else None
        )
        with self.lock:
            analyzer = self.engine.face_analyzer(None, default=search.pack)
            found = [
                self._analyse(analyzer, img, f, search.pick, search.det_size)
                for img, f in zip(references, fields, strict=True)
            ]
            pose_found = (
                self._analyse(analyzer, pose, "pose_image", "largest", search.det_size) if pose else None
            )

        problems = [summary.message for summary, face in found if face is None]
        warnings: list[str] = []
        keypoints = None
        if "keypoints" in method.previews:
            source: KeypointSource = "face_image"
            kps_face, source_image = found[0][1], references[0]
            if ready_kps is not None:
                source, kps_face, source_image = "kps_image", None, ready_kps
            elif pose is not None and pose_found is not None and pose_found[1] is not None:
                source, kps_face, source_image = "pose_image", pose_found[1], pose
            elif pose_found is not None:
                if "pose_fallback" not in takes:  # the method always falls back (Insta Depth)
                    warnings.append("pose_image: no face found; the face image's keypoints are used")
                elif body.pose_fallback:
                    warnings.append("pose_image: no face found; the reference face's keypoints are used")
                else:  # the generation would refuse this pose: show no keypoints it would not use
                    kps_face = None
                    problems.append(
                        pose_found[0].message + "; turn on pose_fallback to use the reference keypoints"
                    )
            if source == "kps_image" or kps_face is not None:
                width, height = _output_size(body, source_image.size)
                if ready_kps is not None:  # source == "kps_image"
                    drawn = ready_kps.convert("RGB").resize((width, height), Image.Resampling.BICUBIC)
                else:
                    drawn = draw_kps(
                        (width, height), scale_kps(kps_face.kps, source_image.size, (width, height))
                    )
                keypoints = KeypointsPreview(image=_png_b64(drawn), source=source, width=width, height=height)
        return FacesPreviewResponse(
            method=body.method,
            references=[summary for summary, _ in found],
            pose=pose_found[0] if pose_found else None,
            keypoints=keypoints,
            warnings=warnings,
            problems=problems,
        )

    def depth(self, body: DepthPreviewBody) -> DepthPreviewResponse:
        from idforge.control.depth import engine_depth_estimator

        pose = self._image(body.pose_image, "pose_image")
        width, height = _output_size(body, pose.size)
        with self.lock:
            depth_map = engine_depth_estimator(self.engine).estimate(pose, (width, height))
        return DepthPreviewResponse(image=_png_b64(depth_map), width=width, height=height)


def preview_method(name: str) -> "Method":  # quoted: no __future__ annotations here (FastAPI reads them)
    """The registered method a face preview is for; a 400 naming `method` when it has no face preview."""
    from idforge.methods.registry import methods

    choices = [m for m in methods() if "faces" in m.previews]
    for method in choices:
        if method.name == name:
            return method
    raise RequestFieldError(
        "method", f"{name!r} has no face preview (one of {', '.join(m.name for m in choices)})"
    )
