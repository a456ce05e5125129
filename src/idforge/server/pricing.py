"""Prices in whole credits per delivered image, from the number of denoising steps.

Default (the seed's "affects pricing"): one credit per started block of ten steps, so 4-10 steps cost 1 credit,
11-20 cost 2, and so on. A batch of N images costs N times the per-image price.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from idforge.errors import ParameterError


@dataclass(frozen=True)
class Pricing:
    steps_per_block: int = 10
    credits_per_block: int = 1
    minimum: int = 1
    method_multiplier: dict[str, int] = field(default_factory=dict)  # e.g. {"faceid": 1}

    def __post_init__(self) -> None:
        if self.steps_per_block < 1:
            raise ParameterError("steps_per_block", f"{self.steps_per_block} must be >= 1")
        if self.credits_per_block < 0 or self.minimum < 0:
            raise ParameterError("credits_per_block", "prices cannot be negative")

    def per_image(self, method: str, steps: int) -> int:
        blocks = -(-max(int(steps), 1) // self.steps_per_block)  # ceil: every started block counts
        price = max(blocks * self.credits_per_block, self.minimum)
        return price * self.method_multiplier.get(method, 1)

    def price(self, method: str, steps: int, images: int = 1) -> int:
        """Credits for `images` delivered images of `steps` steps each."""
        return self.per_image(method, steps) * max(int(images), 1)
