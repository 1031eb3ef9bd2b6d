"""A bounded memory bank of synthesized samples (images in the teacher's input space + their target labels)."""

from __future__ import annotations

import torch


class MemoryBank:
    """Keeps at most ``capacity`` samples; a full bank drops the oldest (``fifo``) or keeps a uniform reservoir sample.

    Reservoir sampling (Vitter's algorithm R): the i-th sample ever offered (0-based) replaces a uniformly chosen slot
    with probability capacity/(i+1), so every sample seen so far is kept with equal probability.
    """

    def __init__(self, capacity: int, *, policy: str = "fifo", gen: torch.Generator | None = None) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1, got {capacity}")
        if policy not in ("fifo", "reservoir"):
            raise ValueError(f"unknown bank policy {policy!r}; use 'fifo' or 'reservoir'")
        self.capacity, self.policy = capacity, policy
        self.gen = gen if gen is not None else torch.Generator().manual_seed(0)
        self.x: torch.Tensor | None = None
        self.y: torch.Tensor | None = None
        self.seen = 0

    def __len__(self) -> int:
        return 0 if self.x is None else int(self.x.shape[0])

    def add(self, x: torch.Tensor, y: torch.Tensor) -> None:
        """Add a batch (detached, on CPU)."""
        x, y = x.detach().cpu(), y.detach().cpu().long()
        if self.x is None or self.y is None:
            self.x, self.y = x[: self.capacity].clone(), y[: self.capacity].clone()
            rest_x, rest_y = x[self.capacity :], y[self.capacity :]
            self.seen = len(self)
        else:
            rest_x, rest_y = x, y
        if rest_x.shape[0] == 0:
            return
        if self.policy == "fifo":
            self.x = torch.cat([self.x, rest_x])[-self.capacity :]
            self.y = torch.cat([self.y, rest_y])[-self.capacity :]
            self.seen += rest_x.shape[0]
            return
        for i in range(rest_x.shape[0]):
            if len(self) < self.capacity:
                self.x = torch.cat([self.x, rest_x[i : i + 1]])
                self.y = torch.cat([self.y, rest_y[i : i + 1]])
            else:
                j = int(torch.randint(0, self.seen + 1, (1,), generator=self.gen))
                if j < self.capacity:
                    self.x[j] = rest_x[i]
                    self.y[j] = rest_y[i]
            self.seen += 1

    def sample(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``n`` samples drawn uniformly with replacement from the bank."""
        if self.x is None or self.y is None:
            raise RuntimeError("the memory bank is empty")
        idx = torch.randint(0, len(self), (n,), generator=self.gen)
        return self.x[idx], self.y[idx]

    def epoch(self, batch_size: int) -> list[torch.Tensor]:
        """A random permutation of the bank's indices, cut into batches (one pass over the bank)."""
        perm = torch.randperm(len(self), generator=self.gen)
        return list(perm.split(batch_size))
