"""KD epoch time: edgecompress's trainer vs a naive loop, measured side by side in one run.

Naive loop: the teacher runs forward on every step with autograd on (no ``inference_mode``/``no_grad``), the way
many KD scripts do. Trainer: ``edgecompress.distill.train_model`` — without augmentation the teacher's logits are
computed once per sample (one batched pass) and reused every epoch; with augmentation the teacher runs on every
augmented batch, through its frozen ONNX Runtime graph (``distill.fast_eval``, "fast-fp32") or in bf16 where
``distill.teacher_precision: auto`` chooses it ("fast": on AMX CPUs), and the student trains channels-last. On a CPU
with AVX512-BF16 but no AMX, "fast-bf16" times the forced bf16 teacher beside them.
"eager" is the same trainer with ``fast=False`` (teacher per step in eager ``inference_mode``, NCHW): the trainer
before that change, measured in the same run. Wall and CPU time are both printed (CPU time of this process is the
fair figure on a loaded machine; with ``--threads 1`` it equals the work done). The trainer's wall time includes
everything it does (teacher cache, per-epoch val evaluation, atomic checkpoints); the naive loop does no evaluation
and writes nothing.

Data: real Fashion-MNIST (a subset) from /usr/share/datasets/fashion-mnist when ``edgecompress.data`` can read it,
else random tensors of the same shape (1x28x28, 10 classes); the run says which.

    python -m benchmarks.kd_throughput --samples 6000 --epochs 2 --threads 1 --rounds 3
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace as NS

import numpy as np
import torch
from torch import nn

from edgecompress.distill.config import LossConfig, TrainConfig
from edgecompress.distill.losses import KDLoss
from edgecompress.distill.steps import make_augment
from edgecompress.distill.trainer import epoch_batches, key_seed, lr_at, train_model

FASHION = Path("/usr/share/datasets/fashion-mnist")


def conv_net(channels: list[int], num_classes: int = 10) -> nn.Module:
    layers: list[nn.Module] = []
    cin = 1
    for i, c in enumerate(channels):
        layers += [nn.Conv2d(cin, c, 3, padding=1, bias=False), nn.BatchNorm2d(c), nn.ReLU(inplace=True)]
        if i % 2 == 1:
            layers.append(nn.MaxPool2d(2))
        cin = c
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(cin, num_classes))


def load_data(samples: int) -> tuple[NS, str]:
    try:
        from edgecompress.data.fashion import load_fashion_mnist

        x_tr, y_tr, x_te, y_te = load_fashion_mnist(FASHION, allow_download=False)
        source = f"Fashion-MNIST ({FASHION}), first {samples} train / 1000 test images as val"
    except Exception as exc:  # noqa: BLE001 - fall back to random data of the same shape, and say so
        g = np.random.default_rng(0)
        x_tr = g.integers(0, 256, (samples, 28, 28), dtype=np.uint8)
        y_tr = g.integers(0, 10, samples)
        x_te, y_te = x_tr[:1000], y_tr[:1000]
        source = f"RANDOM tensors shaped like Fashion-MNIST (edgecompress.data unavailable: {exc})"

    def prep(x: np.ndarray) -> np.ndarray:
        return ((x[:, None].astype(np.float32) / 255.0 - 0.286) / 0.353).astype(np.float32)

    train = NS(x=prep(x_tr[:samples]), y=np.asarray(y_tr[:samples], dtype=np.int64))
    val = NS(x=prep(x_te[:1000]), y=np.asarray(y_te[:1000], dtype=np.int64))
    return NS(train=train, val=val), source


def naive_kd(student: nn.Module, teacher: nn.Module, splits: NS, cfg: TrainConfig, loss: LossConfig, aug) -> None:
    """Plain loop: teacher forward with autograd on every step; same batches, schedule and loss as the trainer."""
    x, y = torch.from_numpy(np.asarray(splits.train.x)), torch.from_numpy(splits.train.y)
    opt = torch.optim.SGD(student.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    kd = KDLoss(loss.temperature, loss.alpha)
    teacher.eval()
    n_steps = len(epoch_batches(len(x), cfg, 0, 0))
    for epoch in range(cfg.epochs):
        student.train()
        gen = torch.Generator().manual_seed(key_seed(0, "augment", epoch, 0))
        for s, idx in enumerate(epoch_batches(len(x), cfg, 0, epoch)):
            for g in opt.param_groups:
                g["lr"] = lr_at(epoch * n_steps + s, cfg, n_steps)
            xb = x[idx] if aug is None else aug(x[idx], gen)
            zt = teacher(xb)  # autograd on: builds a graph nobody uses
            out = kd(student(xb), zt.detach(), y[idx])
            opt.zero_grad()
            out["loss"].backward()
            opt.step()


def train_teacher(teacher: nn.Module, splits: NS, epochs: int, batch_size: int) -> float:
    """A few CE epochs, so that its logits (and the bf16 fidelity check on them) are a trained network's."""
    with tempfile.TemporaryDirectory() as tmp:
        cfg = TrainConfig(epochs=epochs, batch_size=batch_size, lr=0.05, augment=False)
        res = train_model(teacher, splits, cfg, workdir=Path(tmp), seed=0, loss=LossConfig(kind="ce"), progress=False,
                          device="cpu")  # fmt: skip
    return res.best_val_accuracy


# trainer variants: name -> (fast, teacher_precision); "fast-fp32" and "fast-bf16" run only with augmentation
# (without it the teacher's logits are cached once per sample and its precision does not matter), and "fast-bf16"
# only where auto would not choose bf16 although the CPU runs it natively (AVX512-BF16 without AMX)
VARIANTS = {"eager": (False, "fp32"), "fast-fp32": (True, "fp32"), "fast": (True, "auto"), "fast-bf16": (True, "bf16")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--samples", type=int, default=6000)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds (median of per-round ratios)")
    ap.add_argument("--teacher-epochs", type=int, default=2, help="CE epochs of the teacher before timing (0: random)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    splits, source = load_data(args.samples)
    torch.manual_seed(0)
    teacher = conv_net([32, 64, 128, 128])
    student = conv_net([8, 16])
    loss = LossConfig(kind="kd", temperature=4.0, alpha=0.9)
    print(f"data: {source}")
    print(f"torch {torch.__version__}, threads {args.threads}, batch {args.batch_size}, epochs {args.epochs}")
    print(
        f"teacher params {sum(p.numel() for p in teacher.parameters())}, "
        f"student params {sum(p.numel() for p in student.parameters())}"
    )
    if args.teacher_epochs:
        acc = train_teacher(teacher, splits, args.teacher_epochs, args.batch_size)
        print(f"teacher trained {args.teacher_epochs} epoch(s) on labels: val accuracy {acc:.4f}")
    teacher.eval()
    from edgecompress.data.config import AugmentConfig
    from edgecompress.distill.teacher_precision import amx_native, bf16_native

    print(f"native bf16 in this CPU's oneDNN (AVX512-BF16/AMX): {bf16_native()}; AMX: {amx_native()}")
    forced_bf16 = bf16_native() and not amx_native()  # auto stays fp32 here: time forced bf16 beside it
    warm = torch.from_numpy(splits.train.x[: args.batch_size])
    for _ in range(3):  # warm up kernels and thread pools before anything is timed
        teacher(warm).sum().backward()
        student(warm).sum().backward()
    teacher.zero_grad(set_to_none=True)
    student.zero_grad(set_to_none=True)
    from edgecompress.distill.fast_eval import frozen_runner

    frozen_runner(teacher, warm[:8])  # one-time imports of the exporter (~3 s CPU once per process), not timed
    init = {k: v.clone() for k, v in student.state_dict().items()}
    times: dict[tuple[bool, str], list[tuple[float, float]]] = {}
    accs: dict[tuple[bool, str], float] = {}
    precision: dict[str, dict | None] = {}
    for r in range(args.rounds):  # interleaved: every variant once per round, order rotated per round
        for augment in (False, True):
            cfg = TrainConfig(epochs=args.epochs, batch_size=args.batch_size, lr=0.05, augment=augment)
            aug_cfg = AugmentConfig(crop_pad=2, hflip=False) if augment else None
            runs = ["naive", *(v for v in VARIANTS if augment or v not in ("fast-fp32", "fast-bf16"))]
            runs = [v for v in runs if v != "fast-bf16" or forced_bf16]
            k = r % len(runs)
            for name in runs[k:] + runs[:k]:
                net = conv_net([8, 16])
                net.load_state_dict(init)
                w0, c0 = time.perf_counter(), time.process_time()
                if name == "naive":
                    naive_kd(net, teacher, splits, cfg, loss, make_augment(aug_cfg) if augment else None)
                else:
                    fast, prec = VARIANTS[name]
                    with tempfile.TemporaryDirectory() as tmp:
                        res = train_model(net, splits, cfg, workdir=Path(tmp), seed=0, teacher=teacher, loss=loss,
                                          augment_cfg=aug_cfg, progress=False, device="cpu", fast=fast,
                                          teacher_precision=prec)  # fmt: skip
                    accs[(augment, name)] = res.best_val_accuracy
                    if augment and name in ("fast", "fast-bf16"):
                        precision[name] = res.teacher_precision
                times.setdefault((augment, name), []).append((time.perf_counter() - w0, time.process_time() - c0))
    print(f"load average after the run: {[round(v, 2) for v in os.getloadavg()]}")
    print(
        f"seconds per epoch, median of {args.rounds} interleaved round(s); speedup = median over rounds of the "
        "ratio measured in the same round (wall = elapsed; cpu = this process's CPU time)"
    )
    print(
        f"{'augment':>8} {'trainer':>9} {'naive wall':>11} {'ours wall':>10} {'x wall':>7} {'naive cpu':>10} "
        f"{'ours cpu':>9} {'x cpu':>6} {'val acc':>8}"
    )
    e = args.epochs
    for augment in (False, True):
        naive = times[(augment, "naive")]
        for name in VARIANTS:
            if (augment, name) not in times:
                continue
            ours = times[(augment, name)]
            xw = statistics.median(n[0] / o[0] for n, o in zip(naive, ours, strict=True))
            xc = statistics.median(n[1] / o[1] for n, o in zip(naive, ours, strict=True))
            print(
                f"{augment!s:>8} {name:>9} {statistics.median(t[0] for t in naive) / e:11.3f} "
                f"{statistics.median(t[0] for t in ours) / e:10.3f} {xw:6.2f}x "
                f"{statistics.median(t[1] for t in naive) / e:10.3f} {statistics.median(t[1] for t in ours) / e:9.3f} "
                f"{xc:5.2f}x {accs[(augment, name)]:8.4f}"
            )
    for name, rec in precision.items():
        if rec:
            print(f"{name} trainer's augmented KD teacher: {rec['precision']} ({rec['reason']}; "
                  f"speedup {rec['speedup']}, agreement {rec['agreement']}, KL {rec['kl']}, "
                  f"{rec['rows']} rows)")  # fmt: skip
    roof = teacher_roofline(teacher, warm, args.threads)
    if roof:
        steps = len(epoch_batches(args.samples, TrainConfig(epochs=1, batch_size=args.batch_size, lr=0.05), 0, 0))
        ours_cpu = statistics.median(t[1] for t in times[(True, "fast-fp32")]) / e
        share = steps * roof["ms"] / 1e3 / ours_cpu
        print(
            f"teacher forward (frozen ONNX Runtime graph, batch {args.batch_size}): {roof['ms']:.1f} ms CPU = "
            f"{roof['gmacs']:.1f} GMAC/s, {roof['fraction']:.0%} of ONNX Runtime's FP32 GEMM peak "
            f"({roof['peak_gmacs']:.1f} GMAC/s) measured beside it; {share:.0%} of the fp32-teacher trainer's "
            "augmented epoch (CPU). "
            + (
                f"With augmentation the teacher runs every step: at the GEMM peak the epoch would be at most "
                f"{1 / (1 - share * (1 - roof['fraction'])):.2f}x faster than this in FP32."
                if roof["fraction"] < 1
                else "The teacher already runs at the FP32 GEMM rate: no FP32 headroom is left in the step that "
                "dominates the augmented epoch."
            )
        )
        if "bf16_ms" in roof:
            print(f"the same teacher in bf16 (channels-last, CPU autocast): {roof['bf16_ms']:.1f} ms CPU = "
                  f"{roof['bf16_gmacs']:.1f} GMAC/s, {roof['ms'] / roof['bf16_ms']:.2f}x the fp32 graph")  # fmt: skip


def teacher_roofline(teacher: nn.Module, batch: torch.Tensor, threads: int, calls: int = 5) -> dict[str, float]:
    """The teacher's frozen-graph forward (what the trainer runs per augmented batch) against ONNX Runtime's FP32
    GEMM peak (the model and runtime settings of ``benchmarks.roofline``), timed alternately in this process: how
    much faster the teacher's step could get in FP32 at all."""
    from edgecompress.devices.host_runtimes import get_runtime
    from edgecompress.distill.fast_eval import frozen_runner
    from edgecompress.distill.teacher_precision import bf16_native, bf16_runner
    from edgecompress.models import count_macs

    from ._common import gemm_fp32_model, gemm_macs, save_model

    run = frozen_runner(teacher, batch[:8])
    if run is None:
        return {}
    gemm = get_runtime("onnxruntime")
    with tempfile.TemporaryDirectory(prefix="kd-peak-") as tmp:
        gemm.load(save_model(gemm_fp32_model(128, 512, 512), Path(tmp) / "gemm_fp32.onnx"), threads=threads)
    xg = np.random.default_rng(0).standard_normal((128, 512)).astype(np.float32)
    t_cpu, g_cpu = [], []
    for _ in range(calls):
        c = time.process_time()
        run(batch)
        t_cpu.append(time.process_time() - c)
        c = time.process_time()
        for _ in range(10):
            gemm.run(xg)
        g_cpu.append((time.process_time() - c) / 10)
    macs = count_macs(teacher, tuple(batch.shape[1:])) * len(batch)
    rate, peak = macs / statistics.median(t_cpu), gemm_macs(128, 512, 512) / statistics.median(g_cpu)
    ms = statistics.median(t_cpu) * 1e3
    out = {"ms": ms, "gmacs": rate / 1e9, "peak_gmacs": peak / 1e9, "fraction": rate / peak}
    bf16 = bf16_runner(teacher) if bf16_native() else None
    if bf16 is not None:
        bf16(batch)
        b_cpu = []
        for _ in range(calls):
            c = time.process_time()
            bf16(batch)
            b_cpu.append(time.process_time() - c)
        out.update(bf16_ms=statistics.median(b_cpu) * 1e3, bf16_gmacs=macs / statistics.median(b_cpu) / 1e9)
    return out


if __name__ == "__main__":
    main()
