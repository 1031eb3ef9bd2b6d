"""The preprocessing contract an app must repeat: ``x = (raw * scale - mean[c]) / std[c]``, layout NCHW.

Light module (pydantic + stdlib; numpy only inside :meth:`Preprocess.apply`), so bundle manifests can embed it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from pydantic import Field, model_validator

from edgecompress._schema import StrictModel

if TYPE_CHECKING:
    import numpy as np


class Preprocess(StrictModel):
    """How raw pixels become the model's input: scale to [0, 1], then per-channel ``(x - mean) / std``."""

    mean: list[float] = Field(description="Per-channel mean of the scaled training pixels.")
    std: list[float] = Field(description="Per-channel std of the scaled training pixels.")
    size: tuple[int, int] = Field(description="(H, W) of the model input.")
    channels: int = Field(ge=1, description="Number of channels (1 gray, 3 RGB).")
    layout: Literal["NCHW"] = Field("NCHW", description="Tensor layout of the model input.")
    scale: float = Field(1.0 / 255.0, gt=0, description="Raw pixel value times scale lies in [0, 1].")

    @model_validator(mode="after")
    def _lengths(self) -> Preprocess:
        if len(self.mean) != self.channels or len(self.std) != self.channels:
            raise ValueError(f"mean/std need {self.channels} values (one per channel)")
        if any(s <= 0 for s in self.std):
            raise ValueError(f"std must be positive, got {self.std}")
        return self

    def apply(self, raw: np.ndarray) -> np.ndarray:
        """Normalize raw ``[N, C, H, W]`` pixels into float32 model input."""
        import numpy as np

        x = np.asarray(raw, dtype=np.float32) * np.float32(self.scale)
        mean = np.asarray(self.mean, dtype=np.float32).reshape(1, -1, 1, 1)
        std = np.asarray(self.std, dtype=np.float32).reshape(1, -1, 1, 1)
        return (x - mean) / std
