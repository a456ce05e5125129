"""idforge: identity-preserving image generation (InstantID, IP-Adapter FaceID, Insta Depth)."""

from idforge.errors import (
    IdforgeError,
    InputImageError,
    ModelFormatError,
    ModelNotFoundError,
    NoFaceError,
    ParameterError,
)

__version__ = "0.1.0"

__all__ = [
    "IdforgeError",
    "InputImageError",
    "ModelFormatError",
    "ModelNotFoundError",
    "NoFaceError",
    "ParameterError",
    "__version__",
]
