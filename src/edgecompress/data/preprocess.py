"""The input contract an app must repeat: what raw pixels it feeds, and how they become the model's input.

Raw input: ``input_dtype`` values in ``value_range`` (8-bit images: uint8 in [0, 255]), colour mode ``color_mode``.
Normalization: ``x = (raw * scale - mean[c]) / std[c]`` with ``scale = 1 / value_range[1]``, layout NCHW.

Light module (pydantic + stdlib; numpy only inside :meth:`Preprocess.apply`), so bundle manifests can embed it.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field, model_validator

from edgecompress._schema import StrictModel

if TYPE_CHECKING:
    import numpy as np

InputDtype = Literal["uint8", "uint16", "float32"]
ColorMode = Literal["L", "RGB"]

# the largest value each integer input dtype can hold (float32: no bound of its own)
DTYPE_MAX: dict[str, float] = {"uint8": 255.0, "uint16": 65535.0}
MODE_OF_CHANNELS: dict[int, str] = {1: "L", 3: "RGB"}


def dtype_for_range(hi: float) -> str:
    """The input dtype a range ``[0, hi]`` implies: uint8 for an integral ``hi`` up to 255, uint16 up to 65535, else
    float32 (an older preprocessing block that gave only ``scale`` is read this way)."""
    if hi > 1 and float(hi).is_integer():
        return "uint8" if hi <= 255 else "uint16" if hi <= 65535 else "float32"
    return "float32"


class Preprocess(StrictModel):
    """How raw pixels become the model's input: ``(raw * scale - mean) / std`` per channel, NCHW.

    ``input_dtype``, ``value_range`` and ``color_mode`` state what an app feeds (an 8-bit PNG: uint8, [0, 255], L or
    RGB); ``scale`` is ``1 / value_range[1]``. Given only ``scale`` (an older manifest), the range is ``[0, 1/scale]``.
    """

    mean: list[float] = Field(
        description="Per-channel mean of the scaled pixels (raw * scale); it must match what the model was trained "
        "with (for a teacher checkpoint: its own preprocessing)."
    )
    std: list[float] = Field(description="Per-channel std of the scaled pixels (raw * scale), > 0.")
    size: tuple[int, int] = Field(description="(H, W) of the model input.")
    channels: int = Field(ge=1, description="Number of channels (1 gray, 3 RGB).")
    layout: Literal["NCHW"] = Field("NCHW", description="Tensor layout of the model input.")
    input_dtype: InputDtype = Field("uint8", description="The dtype of the raw pixels an app feeds.")
    value_range: tuple[float, float] = Field(
        (0.0, 255.0), description="(low, high) of the raw pixel values an app feeds, e.g. (0, 255) for 8-bit images."
    )
    color_mode: ColorMode | None = Field(
        None, description="Colour mode of the raw images (L gray, RGB); derived from channels (1: L, 3: RGB)."
    )
    scale: float = Field(1.0 / 255.0, gt=0, description="raw * scale before (x - mean) / std; 1 / value_range[1].")

    @model_validator(mode="before")
    @classmethod
    def _derive(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        d = dict(data)
        if d.get("value_range") is None and d.get("scale") is not None:  # an older block: scale only
            hi = 1.0 / float(d["scale"]) if float(d["scale"]) > 0 else math.inf
            d["value_range"] = (0.0, hi)
            d.setdefault("input_dtype", dtype_for_range(hi))
        elif d.get("value_range") is not None and d.get("scale") is None:
            hi = float(d["value_range"][1])
            d["scale"] = 1.0 / hi if hi > 0 else 0.0  # hi <= 0 is refused below, scale's own check names it
        if d.get("color_mode") is None and isinstance(d.get("channels"), int):
            d["color_mode"] = MODE_OF_CHANNELS.get(d["channels"])
        return d

    @model_validator(mode="after")
    def _consistent(self) -> Preprocess:
        if len(self.mean) != self.channels or len(self.std) != self.channels:
            raise ValueError(f"mean/std need {self.channels} values (one per channel)")
        if any(s <= 0 for s in self.std):
            raise ValueError(f"std must be positive, got {self.std}")
        lo, hi = self.value_range
        if not (math.isfinite(lo) and math.isfinite(hi)) or lo >= hi or hi <= 0:
            raise ValueError(f"value_range must be (low, high) with low < high and high > 0, got {self.value_range}")
        top = DTYPE_MAX.get(self.input_dtype)
        if top is not None and (lo < 0 or hi > top):
            raise ValueError(f"value_range {self.value_range} does not fit {self.input_dtype} (0..{top:g})")
        if not math.isclose(self.scale * hi, 1.0, rel_tol=1e-6):
            raise ValueError(f"scale {self.scale} must be 1 / value_range[1] = {1 / hi}")
        wanted = MODE_OF_CHANNELS.get(self.channels)
        if self.color_mode is not None and self.color_mode != wanted:
            raise ValueError(f"color_mode {self.color_mode} does not fit {self.channels} channel(s)")
        return self

    def apply(self, raw: np.ndarray) -> np.ndarray:
        """Normalize raw ``[N, C, H, W]`` pixels into float32 model input."""
        import numpy as np

        x = np.array(raw, dtype=np.float32, order="C", copy=True)  # one float32 array, then in place
        x *= np.float32(self.scale)
        x -= np.asarray(self.mean, dtype=np.float32).reshape(1, -1, 1, 1)
        x /= np.asarray(self.std, dtype=np.float32).reshape(1, -1, 1, 1)
        return x
