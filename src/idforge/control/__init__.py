"""Control-image preparation for ControlNets beside IdentityNet (depth maps today)."""

from idforge.control.depth import DepthEstimator, depth_to_image, engine_depth_estimator, normalise_depth

__all__ = ["DepthEstimator", "depth_to_image", "engine_depth_estimator", "normalise_depth"]
