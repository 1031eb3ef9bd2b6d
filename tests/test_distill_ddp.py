"""train_model under torchrun: 2 CPU processes (gloo), loss falls and both ranks end with identical weights."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

SCRIPT = textwrap.dedent(
    """
    import hashlib, json, os, sys
    from pathlib import Path
    from types import SimpleNamespace as NS
    import numpy as np
    import torch
    import torch.distributed as dist
    from edgecompress.distill.config import TrainConfig
    from edgecompress.distill.trainer import train_model

    torch.set_num_threads(1)
    out = Path(sys.argv[1])

    def split(n, seed):
        g = np.random.default_rng(seed)
        protos = np.random.default_rng(0).normal(size=(3, 1, 6, 6)).astype(np.float32)
        y = g.integers(0, 3, n).astype(np.int64)
        return NS(x=(protos[y] + 0.7 * g.normal(size=(n, 1, 6, 6))).astype(np.float32), y=y)

    torch.manual_seed(0)  # same initial weights on both ranks (DDP also broadcasts rank 0's)
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 6, 3, padding=1), torch.nn.BatchNorm2d(6), torch.nn.ReLU(),
                                torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(6, 3))
    splits = NS(train=split(192, 1), val=split(48, 2))
    res = train_model(model, splits, TrainConfig(epochs=3, batch_size=32, lr=0.1), workdir=out / "work", seed=0,
                      augment_cfg=NS(crop_pad=1, hflip=True), progress=False, device="cpu")
    h = hashlib.sha256()
    for k, v in res.model.state_dict().items():
        h.update(k.encode()); h.update(v.contiguous().numpy().tobytes())
    rank = dist.get_rank()
    (out / f"rank{rank}.json").write_text(json.dumps(
        {"rank": rank, "world": dist.get_world_size(), "hash": h.hexdigest(),
         "losses": [r["train_loss"] for r in res.history], "best_epoch": res.best_epoch}))
    dist.destroy_process_group()
    """
)


@pytest.mark.timeout(120)
def test_two_process_ddp(tmp_path: Path) -> None:
    script = tmp_path / "ddp_train.py"
    script.write_text(SCRIPT)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        str(script),
        str(tmp_path),
    ]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=110)  # noqa: S603
    assert proc.returncode == 0, proc.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    assert [r["world"] for r in ranks] == [2, 2]
    assert ranks[0]["hash"] == ranks[1]["hash"], "ranks ended with different weights"
    assert ranks[0]["losses"] == ranks[1]["losses"]  # the logged loss is the all-reduced mean
    losses = ranks[0]["losses"]
    assert losses[-1] < losses[0], f"loss did not fall: {losses}"
    # rank 0 wrote the checkpoint; its best weights are the ones both ranks returned
    assert (tmp_path / "work" / "checkpoint.pt").exists()
