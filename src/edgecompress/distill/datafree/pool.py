"""The unbounded pool of synthesized batches, on disk as 8-bit pixels (the official code's PNG pool, as raw bytes).

Every round appends its best batch: ``images.u8`` (N × C × H × W bytes, pixels in [0, 1] quantized to 0..255, as a
PNG stores them) and ``labels.i64`` (the synthesis targets, int64). The student reads batches through a read-only
memory map, so the process holds no copy of the pool (memory stays bounded; the OS pages it in and out).

Appends are not atomic, and need not be: the run's checkpoint records how many images the pool held when it was
written, and a resumed run truncates both files to that count before it continues (:meth:`Pool.truncate`), which
discards whatever a killed process had appended after its last checkpoint. :meth:`Pool.sync` (fsync) runs before each
checkpoint, so the count never points past the bytes on disk.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

IMAGES, LABELS = "images.u8", "labels.i64"


class Pool:
    """An append-only pool of uint8 images and int64 labels under ``root``.

    Args:
        root: the folder (created).
        shape: (C, H, W) of one image.
        fresh: start empty (delete what is there); otherwise open what is there (see :meth:`truncate`).
    """

    def __init__(self, root: str | Path, shape: Sequence[int], *, fresh: bool = True) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.shape = tuple(int(v) for v in shape)
        self.item = int(np.prod(self.shape))
        self.images, self.labels = self.root / IMAGES, self.root / LABELS
        if fresh:
            for p in (self.images, self.labels):
                p.write_bytes(b"")
        self.count = min(self.images.stat().st_size // self.item, self.labels.stat().st_size // 8)
        self._map: np.memmap | None = None
        self._map_count = -1

    def __len__(self) -> int:
        return self.count

    def add(self, x: torch.Tensor, y: torch.Tensor) -> None:
        """Append a batch of pixels in [0, 1] ([N, C, H, W]) and their labels."""
        px = (x.detach().cpu().clamp(0.0, 1.0) * 255.0).round().to(torch.uint8).numpy()
        if px.shape[1:] != self.shape:
            raise ValueError(f"pool images are {self.shape}, got a batch of {tuple(px.shape[1:])}")
        labels = y.detach().cpu().to(torch.int64).numpy()
        with open(self.images, "ab") as fi, open(self.labels, "ab") as fl:
            fi.write(np.ascontiguousarray(px).tobytes())
            fl.write(np.ascontiguousarray(labels).tobytes())
        self.count += int(px.shape[0])

    def sync(self) -> None:
        """fsync both files (before a checkpoint records :attr:`count`)."""
        for p in (self.images, self.labels):
            fd = os.open(p, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)

    def truncate(self, count: int) -> None:
        """Keep the first ``count`` images (a resume: drop what was appended after the checkpoint).

        Raises:
            ValueError: the files hold fewer than ``count`` images (the pool does not belong to the checkpoint).
        """
        if count > self.count:
            raise ValueError(f"the pool holds {self.count} images, the checkpoint counts {count}")
        os.truncate(self.images, count * self.item)
        os.truncate(self.labels, count * 8)
        self.count, self._map, self._map_count = count, None, -1

    def _images(self) -> np.memmap:
        if self._map is None or self._map_count != self.count:
            self._map = np.memmap(self.images, dtype=np.uint8, mode="r", shape=(self.count, *self.shape))
            self._map_count = self.count
        return self._map

    def pixels(self, idx: torch.Tensor) -> torch.Tensor:
        """The images at ``idx`` as float pixels in [0, 1]."""
        if self.count == 0:
            raise RuntimeError("the image pool is empty")
        arr = np.asarray(self._images()[idx.numpy()])  # fancy indexing copies the rows out of the map
        return torch.from_numpy(arr).float().div_(255.0)

    def targets(self, idx: torch.Tensor) -> torch.Tensor:
        """The labels at ``idx``."""
        lab = np.fromfile(self.labels, dtype=np.int64, count=self.count)
        return torch.from_numpy(lab[idx.numpy()])

    def batches(self, steps: int, batch_size: int, gen: torch.Generator) -> list[torch.Tensor]:
        """``steps`` batches of indices from shuffled passes over the pool (a new pass when one runs out), as the
        official code's shuffled DataLoader over the pool, rebuilt each round, iterates."""
        bs = min(batch_size, self.count)
        need = steps * bs
        perms = [torch.randperm(self.count, generator=gen) for _ in range(-(-need // self.count))]
        return list(torch.cat(perms)[:need].split(bs))
