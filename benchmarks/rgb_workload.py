"""A realistic workload for the performance goals: RGB 64x64 images, a ResNet teacher of ~0.3 GMAC.

The images are Fashion-MNIST (the real data on this machine) upscaled to 64x64 and tinted: each garment gets a
random colour, its background another, darker one, plus a little pixel noise, so the three channels carry
different values and colour says nothing about the class. The config trains a ResNet-14 (width 56, stride-2 stem:
0.32 GMAC at 64x64, 2.1 M parameters) as the teacher and cuts the student from it by structured pruning to at most
1/10 of its MACs, channels in multiples of 16, then distils, calibrates, exports and benchmarks as any run does.

    python -m benchmarks.rgb_workload prepare --out runs/bench/rgb64          # data + config (a few seconds)
    edgecompress run runs/bench/rgb64/rgb64.yaml --out runs/bench/rgb64/run   # the pipeline (~30 min on 2 cores)
    python -m benchmarks.deploy_speed runs/bench/rgb64/run --batches 1,32 --floor --threads 1 --rounds 5
    python -m benchmarks.roofline runs/bench/rgb64/run --threads 1 --rounds 5

The data file is written once (``--force`` rewrites it); the run resumes like any run.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

SIZE = 64

# what both workloads do after distillation: calibrate, export to both runtimes in FP32 and INT8, benchmark
DEPLOY = """\
calibration:
  method: ts
export:
  formats: ["onnx:fp32", "onnx:int8", "openvino:fp32", "openvino:int8"]
  calib_samples: 512
  max_accuracy_drop: 0.015
benchmark:
  devices: [local]
  batch_sizes: [1, 32]
  min_time_s: 0.3
  repeats: 3
  eval_samples: 2000
"""

CONFIG = (
    """\
# RGB 64x64 workload (benchmarks/rgb_workload.py): tinted, upscaled Fashion-MNIST; ResNet teacher of 0.32 GMAC.
name: rgb64
seed: 0
data:
  dataset: npz
  path: {npz}
  val_fraction: 0.1
  calib_size: 512
  max_train: {max_train}
  augment: {{crop_pad: 4, hflip: true}}
teacher:
  # ResNet-14, width 56 (stages 56/112/224), stride-2 stem: 0.32 GMAC and 2.1 M parameters at 64x64
  model: {{family: resnet, params: {{depth: 14, width: 56, stem_stride: 2}}}}
  train: {{epochs: {teacher_epochs}, batch_size: 64, lr: 0.05, warmup_epochs: 0.5}}
distill:
  # pruned to <= 10 % of the teacher's MACs, every layer a multiple of 16 channels (INT8 kernel width)
  student: {{prune_ratio: 0.1, round_to: 16, name: student}}
  assistants: none
  train: {{epochs: {student_epochs}, batch_size: 64, lr: 0.05, warmup_epochs: 0.5}}
  loss: {{kind: kd}}
"""
    + DEPLOY
)


def tint(gray: np.ndarray, rng: np.random.Generator, size: int = SIZE) -> np.ndarray:
    """``[N, 28, 28]`` uint8 gray -> ``[N, size, size, 3]`` uint8: bilinear upscale, random garment/background tints."""
    import torch
    import torch.nn.functional as F

    n = len(gray)
    g = torch.from_numpy(gray).float().div_(255).unsqueeze(1)
    g = F.interpolate(g, size=(size, size), mode="bilinear", align_corners=False).clamp_(0, 1)
    g = g.permute(0, 2, 3, 1).numpy()  # [N, H, W, 1]
    fg = rng.uniform(0.35, 1.0, size=(n, 1, 1, 3)).astype(np.float32)
    bg = rng.uniform(0.0, 0.3, size=(n, 1, 1, 3)).astype(np.float32)
    noise = rng.normal(0.0, 0.03, size=(n, size, size, 3)).astype(np.float32)
    rgb = g * fg + (1.0 - g) * bg + noise
    return np.clip(np.rint(rgb * 255), 0, 255).astype(np.uint8)


def _tint_rows(
    gray: np.ndarray, rows: np.ndarray, rng: np.random.Generator, size: int = SIZE, chunk: int = 2048
) -> np.ndarray:
    """:func:`tint` of ``gray[rows]``, a chunk at a time (the float intermediates of 60k images would not fit)."""
    return np.concatenate([tint(gray[rows[i : i + chunk]], rng, size) for i in range(0, len(rows), chunk)])


def prepare(out: Path, *, max_train: int, max_test: int, seed: int = 0, force: bool = False, size: int = SIZE) -> Path:
    """Write ``out/fmnist_rgb<size>.npz`` (atomic; kept unless ``force``) and return its path."""
    from edgecompress._io import atomic_path
    from edgecompress.data.fashion import CLASSES, load_fashion_mnist

    path = out / f"fmnist_rgb{size}.npz"
    if path.is_file() and not force:
        return path
    xtr, ytr, xte, yte = load_fashion_mnist(None, allow_download=False)
    rng = np.random.default_rng(seed)
    tr = np.sort(rng.permutation(len(xtr))[:max_train])
    te = np.arange(min(max_test, len(xte)))
    x_train, x_test = _tint_rows(xtr, tr, rng, size), _tint_rows(xte, te, rng, size)
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:  # a file object: np.savez would append .npz to a name
        np.savez(
            fh,
            x_train=x_train,
            y_train=ytr[tr].astype(np.int64),
            x_test=x_test,
            y_test=yte[te].astype(np.int64),
            labels=np.array(CLASSES),
        )
    return path


def write_config(out: Path, npz: Path, *, max_train: int, teacher_epochs: int, student_epochs: int) -> Path:
    from edgecompress._io import atomic_write_text

    text = CONFIG.format(
        npz=npz.resolve(), max_train=max_train, teacher_epochs=teacher_epochs, student_epochs=student_epochs
    )
    return atomic_write_text(out / "rgb64.yaml", text)


DISTILL_CONFIG = (
    """\
# RGB 32x32 distillation workload (benchmarks/rgb_workload.py distill): tinted Fashion-MNIST, a converged ResNet-20
# teacher brought in as a checkpoint (as a user brings one), the student pruned from it, the loss decided by trials.
name: rgb32
seed: 0
data:
{data}
teacher:
  model: {{family: resnet, params: {{depth: 20, width: 16}}}}
  checkpoint: {checkpoint}
distill:
  student: {{prune_ratio: 0.1, round_to: 8, name: student}}
  assistants: none
  train: {{epochs: {student_epochs}, batch_size: 128, lr: 0.05, warmup_epochs: 0.5}}
  loss: {{kind: auto}}
"""
    + DEPLOY
)


def distill_workload(out: Path, *, max_train: int, teacher_epochs: int, student_epochs: int) -> Path:
    """Data (32x32), a converged teacher trained on the config's own train split, and the config; returns it."""
    import yaml

    from edgecompress._io import atomic_write_text
    from edgecompress.presets.train_teacher import Recipe, train_teacher

    npz = prepare(out, max_train=max_train, max_test=10000, size=32)
    data = {"dataset": "npz", "path": str(npz.resolve()), "val_fraction": 0.1, "calib_size": 512,
            "augment": {"crop_pad": 4, "hflip": True}}  # fmt: skip
    recipe = Recipe(
        description="RGB 32x32 workload teacher: CIFAR ResNet-20 (width 16), SGD with crop/flip augmentation",
        data=data,
        model={"family": "resnet", "params": {"depth": 20, "width": 16}},
        train={"epochs": teacher_epochs, "batch_size": 128, "lr": 0.1, "warmup_epochs": 1, "weight_decay": 5e-4},
        file="rgb32_teacher.pt",
    )
    checkpoint = out / "rgb32_teacher.pt"
    if not checkpoint.is_file():
        train_teacher(recipe, out=checkpoint, workdir=out / "teacher-train")
    block = yaml.safe_dump(data, sort_keys=False).strip().replace("\n", "\n  ")
    text = DISTILL_CONFIG.format(data="  " + block, checkpoint=checkpoint.resolve(), student_epochs=student_epochs)
    return atomic_write_text(out / "rgb32.yaml", text)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("prepare", help="write the tinted 64x64 data (.npz) and the run config")
    p.add_argument("--out", type=Path, default=Path("runs/bench/rgb64"))
    p.add_argument("--max-train", type=int, default=12000, help="training images kept (default 12000)")
    p.add_argument("--max-test", type=int, default=10000, help="test images kept (default all 10000)")
    p.add_argument("--teacher-epochs", type=int, default=4)
    p.add_argument("--student-epochs", type=int, default=8)
    p.add_argument("--force", action="store_true", help="rewrite the data file")
    d = sub.add_parser("distill", help="32x32 data, a converged teacher (trained once) and a loss-auto config")
    d.add_argument("--out", type=Path, default=Path("runs/bench/rgb32"))
    d.add_argument("--max-train", type=int, default=24000, help="training images kept (default 24000)")
    d.add_argument("--teacher-epochs", type=int, default=30)
    d.add_argument("--student-epochs", type=int, default=10)
    args = ap.parse_args(argv)
    if args.cmd == "distill":
        cfg = distill_workload(args.out, max_train=args.max_train, teacher_epochs=args.teacher_epochs,
                               student_epochs=args.student_epochs)  # fmt: skip
        print(f"config: {cfg}\nnext: edgecompress run {cfg} --out {args.out / 'run'}")
        return 0
    if args.max_train < 100 or args.max_test < 10:
        ap.error("--max-train must be >= 100 and --max-test >= 10")
    npz = prepare(args.out, max_train=args.max_train, max_test=args.max_test, force=args.force)
    cfg = write_config(
        args.out, npz, max_train=args.max_train, teacher_epochs=args.teacher_epochs, student_epochs=args.student_epochs
    )
    print(f"data: {npz} ({npz.stat().st_size / 1e6:.0f} MB)\nconfig: {cfg}")
    print(f"next: edgecompress run {cfg} --out {args.out / 'run'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
