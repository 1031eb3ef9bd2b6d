"""The ``data:`` section of the config: which dataset, how it is split, how it is augmented (pydantic + stdlib only)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator

from edgecompress._schema import StrictModel

DatasetName = Literal["digits", "fashion-mnist", "npz", "folder", "none"]


class AugmentConfig(StrictModel):
    """Tensor-level training augmentation (no torchvision): random crop with zero padding, optional h-flip."""

    crop_pad: int | Literal["auto"] = Field(
        "auto",
        description="Zero padding (pixels) before a random crop back to size; 0 = off; 'auto' = one eighth of the "
        "image's smaller side, at least 1 (4 on 32x32 as in the CIFAR recipe, 1 on 8x8: a 2-pixel shift of an 8x8 "
        "digit cost a BN-free CNN 20-30 points in 12 epochs).",
    )

    @field_validator("crop_pad")
    @classmethod
    def _pad_range(cls, value: int | str) -> int | str:
        if isinstance(value, int) and not 0 <= value <= 64:
            raise ValueError(f"crop_pad must be 'auto' or 0..64 pixels, got {value}")
        return value

    hflip: bool = Field(False, description="Random horizontal flip with p = 0.5 (off for digits/text-like data).")


class DataConfig(StrictModel):
    """Where the images come from and how train / val / calib / test are cut (seeded, stratified, disjoint)."""

    dataset: DatasetName = Field(
        description="digits (sklearn 8x8), fashion-mnist (IDX files), npz (arrays), folder (root/<class>/*.png), "
        "none (data-free: no training data)."
    )
    path: Path | None = Field(
        None,
        description="fashion-mnist: folder with the IDX files; npz: the .npz file; folder: the image root; "
        "none: optional small labelled .npz (x_val/y_val or x/y) for validation and test.",
    )
    val_fraction: float = Field(
        0.1, gt=0, lt=1, description="Fraction of the training portion held out for validation."
    )
    split_seed: int | None = Field(
        None,
        ge=0,
        le=2**32 - 1,
        description="Seed of the train / val / calib / test cuts (default: the run's seed). Pin it when the teacher "
        "was trained on one split: a run with another seed would otherwise put the teacher's training images in val "
        "and test.",
    )
    calib_size: int = Field(
        512,
        ge=0,
        description="Samples of the training portion held out (disjoint from train and val) for INT8 "
        "calibration; 0 = no calib split.",
    )
    test_fraction: float = Field(
        0.2, gt=0, lt=1, description="Held-out test fraction for datasets without an official test split."
    )
    max_train: int | None = Field(
        None, ge=10, description="Stratified subsample of the training portion (before val/calib are cut), for speed."
    )
    max_test: int | None = Field(None, ge=1, description="Stratified subsample of the test split, for speed.")
    image_size: tuple[int, int] | None = Field(
        None, description="(H, W) that folder images are resized to; required when their sizes differ."
    )
    download: bool = Field(True, description="fashion-mnist: try the public download when no local copy is found.")
    augment: AugmentConfig = Field(default_factory=AugmentConfig, description="Training augmentation.")
    mean: list[float] | None = Field(
        None,
        description="Per-channel normalization mean of the scaled pixels (raw * scale, see value_range). It must "
        "match the teacher checkpoint's own preprocessing: given, it replaces the statistics computed on the training "
        "data (a teacher trained on x/255 without normalization: mean [0, ...], std [1, ...]).",
    )
    std: list[float] | None = Field(
        None,
        description="Per-channel normalization std (> 0) of the scaled pixels; must match the teacher checkpoint's "
        "own preprocessing, like data.mean. Default: computed on the train split.",
    )
    classes: list[str] | None = Field(
        None,
        description="folder: the class order (sub-folder names in the teacher's output order); every sub-folder "
        "must be listed once. Default: folder names sorted.",
    )
    value_range: tuple[float, float] | None = Field(
        None,
        description="(low, high) of the raw pixel values, the range an app feeds; scale = 1 / high. Default by dtype: "
        "uint8 (0, 255), uint16 (0, 65535), float (0, 1). Set it for float pixels in another range, e.g. [0, 255].",
    )
    color_mode: Literal["L", "RGB"] | None = Field(
        None,
        description="Colour mode of the model input (L gray, RGB); images of the other mode are converted and "
        "counted in the report. Default: the data's own (folders: RGB if any image is in colour).",
    )
    input_shape: tuple[int, int, int] | None = Field(
        None, description="dataset 'none' without a path: the teacher's input (C, H, W)."
    )
    num_classes: int | None = Field(None, ge=2, description="dataset 'none' without a path: the number of classes.")

    @field_validator("image_size")
    @classmethod
    def _positive_size(cls, v: tuple[int, int] | None) -> tuple[int, int] | None:
        if v is not None and (v[0] < 1 or v[1] < 1):
            raise ValueError(f"image_size must be two positive integers (H, W), got {v}")
        return v

    @field_validator("input_shape")
    @classmethod
    def _positive_shape(cls, v: tuple[int, int, int] | None) -> tuple[int, int, int] | None:
        if v is not None and min(v) < 1:
            raise ValueError(f"input_shape must be three positive integers (C, H, W), got {v}")
        return v

    @field_validator("std")
    @classmethod
    def _positive_std(cls, v: list[float] | None) -> list[float] | None:
        if v is not None and any(s <= 0 for s in v):
            raise ValueError(f"every std must be > 0, got {v}")
        return v

    @field_validator("classes")
    @classmethod
    def _distinct_classes(cls, v: list[str] | None) -> list[str] | None:
        if v is not None:
            if len(v) < 2:
                raise ValueError(f"classes needs at least two names, got {v}")
            dup = sorted({c for c in v if v.count(c) > 1})
            if dup:
                raise ValueError(f"classes lists {', '.join(map(repr, dup))} more than once")
        return v

    @field_validator("value_range")
    @classmethod
    def _ordered_range(cls, v: tuple[float, float] | None) -> tuple[float, float] | None:
        if v is not None and not (v[0] < v[1] and v[1] > 0):
            raise ValueError(f"value_range must be [low, high] with low < high and high > 0, got {list(v)}")
        return v

    @model_validator(mode="after")
    def _consistent(self) -> DataConfig:
        if self.dataset in ("npz", "folder") and self.path is None:
            raise ValueError(f"dataset '{self.dataset}' needs data.path (the {self._path_kind()})")
        if (self.mean is None) != (self.std is None):
            raise ValueError("give both data.mean and data.std, or neither")
        if self.mean is not None and self.std is not None and len(self.mean) != len(self.std):
            raise ValueError(f"data.mean has {len(self.mean)} values but data.std has {len(self.std)}")
        if self.dataset == "none" and self.path is None and (self.input_shape is None or self.num_classes is None):
            raise ValueError("dataset 'none' without data.path needs data.input_shape (C, H, W) and data.num_classes")
        if self.dataset != "none" and (self.input_shape is not None or self.num_classes is not None):
            raise ValueError("data.input_shape / data.num_classes are only for dataset 'none' (read from the data)")
        if self.classes is not None and self.dataset != "folder":
            raise ValueError("data.classes is for dataset 'folder' (npz files carry their names in 'labels')")
        wanted = {"L": 1, "RGB": 3}.get(self.color_mode or "")
        if wanted is not None and self.input_shape is not None and self.input_shape[0] != wanted:
            raise ValueError(f"color_mode {self.color_mode} does not fit input_shape {self.input_shape}")
        if self.max_train is not None:
            val = int(round(self.val_fraction * self.max_train))
            if val + self.calib_size > self.max_train - val - self.calib_size:
                raise ValueError(
                    f"val ({val}) + calib_size ({self.calib_size}) would leave fewer training samples than that out "
                    f"of max_train {self.max_train}; lower calib_size or val_fraction, or raise max_train"
                )
        return self

    def _path_kind(self) -> str:
        return {"npz": ".npz file", "folder": "image folder root"}.get(self.dataset, "data folder")
