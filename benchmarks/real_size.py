"""Real-size models: four ImageNet-class networks at 224x224 through the deploy-only pipeline, and prune + distill.

For each of ResNet-18, MobileNetV2, MobileNetV3-small and EfficientNet-B0 (the repository's torchvision-layout
families, 10 classes, RGB 224x224):

1. the teacher is trained briefly here (``--teacher-steps`` AdamW steps, batch 16, then its BatchNorm statistics
   re-estimated) so that its logits separate the classes — pretrained weights cannot be downloaded on this machine;
   a torchvision checkpoint loads the same way;
2. a **deploy-only** pipeline run (``distill: {student: none}``) in a fresh child process: data → teacher (loaded)
   → calibrate → export FP32 / FP16 / INT8 for ONNX Runtime and OpenVINO (accuracy-aware INT8 included) → benchmark
   at batch 1 and 8 → report → bundles. Measured: the child's peak resident set (``VmHWM``, the whole pipeline
   process; the benchmark agent runs in its own processes and its peak is the "runtime RSS" column), the wall time
   of the export stage (ONNX export, quantization, evaluation of every artifact through its runtime) and of the run,
   each artifact's latency p50 and size, and the INT8 top-1 agreement with the FP32 artifact of the same runtime on
   the proxy images the benchmark evaluated (read from the logits the benchmark saved).

``--distill`` adds a prune + distill run at 224x224 (the MobileNetV2 teacher above, a student pruned to half its
MACs, a short KD budget) in a child process, with its peak RSS: the data stay uint8 and are normalized a batch at
a time (:mod:`edgecompress.data.arrays`), so memory is bounded by the model and the batch, not the dataset.

The data file and each trained teacher are written once and reused by a later invocation (delete them to redo).
The proxy images are Fashion-MNIST (``/usr/share/datasets/fashion-mnist``, no download) upscaled to 224x224 and
tinted per image (:func:`benchmarks.rgb_workload.tint`). Timings on a shared machine are labelled so; the command:

    nice -n 10 python -m benchmarks.real_size --out runs/bench/real224 --distill --json runs/bench/real224.json
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from ._common import fmt, machine_info, machine_line, markdown_table, run_and_print

ARCHS = ("resnet18", "mobilenet_v2", "mobilenet_v3_small", "efficientnet_b0")
FORMATS = ["onnx:fp32", "onnx:fp16", "onnx:int8", "openvino:fp32", "openvino:fp16", "openvino:int8"]
SIZE = 224


# ------------------------------------------------------------------------------------------------------- the data


def prepare(out: Path, *, n_train: int, n_test: int, seed: int = 0, chunk: int = 128) -> Path:
    """Write ``out/fmnist_rgb224.npz`` (uint8 NHWC, tinted per image) once; return its path."""
    from edgecompress._io import atomic_path
    from edgecompress.data.fashion import CLASSES, load_fashion_mnist

    from .rgb_workload import tint

    path = out / "fmnist_rgb224.npz"
    if path.is_file():
        return path
    out.mkdir(parents=True, exist_ok=True)
    xtr, ytr, xte, yte = load_fashion_mnist(None, allow_download=False)
    rng = np.random.default_rng(seed)
    tr = np.sort(rng.permutation(len(xtr))[:n_train])

    def tinted(gray: np.ndarray) -> np.ndarray:  # chunks: the float intermediates of 224x224 images are large
        return np.concatenate([tint(gray[i : i + chunk], rng, size=SIZE) for i in range(0, len(gray), chunk)])

    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        np.savez(fh, x_train=tinted(xtr[tr]), y_train=ytr[tr].astype(np.int64), x_test=tinted(xte[:n_test]),
                 y_test=yte[:n_test].astype(np.int64), labels=np.array(CLASSES))  # fmt: skip
    return path


# ------------------------------------------------------------------------------------------------------ the configs


def _data(npz: Path, args: argparse.Namespace) -> dict[str, Any]:
    return {"dataset": "npz", "path": str(npz), "val_fraction": 0.1, "calib_size": args.calib, "max_test": args.eval}


def train_teacher(arch: str, npz: Path, out: Path, args: argparse.Namespace) -> dict[str, Any]:
    """``arch`` trained ``--teacher-steps`` AdamW steps (batch 16) on the pipeline's own train split, then its
    BatchNorm statistics re-estimated on 16 batches (MobileNetV3's BN momentum of 0.01 leaves them near their
    initial values after a short run); saved as a plain state dict, as a user's checkpoint would be."""
    import torch

    from edgecompress._io import atomic_write_json
    from edgecompress.data import DataConfig, load_splits
    from edgecompress.models import ModelSpec, build_model, save_state

    path, record = out / arch / "teacher.pt", out / arch / "teacher.json"
    if path.is_file() and record.is_file():  # trained by an earlier invocation (kept, like the data file)
        return json.loads(record.read_text())
    splits = load_splits(DataConfig(**_data(npz, args)), seed=0)
    c, h, w = splits.input_shape
    model = build_model(ModelSpec(family=arch), in_channels=c, num_classes=splits.num_classes, input_size=(h, w))
    torch.manual_seed(0)
    train, start = splits.train, time.perf_counter()
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=1e-4)
    gen = np.random.default_rng(0)
    model.train()
    for _ in range(args.teacher_steps):
        idx = np.sort(gen.choice(len(train.y), 16, replace=False))
        loss = torch.nn.functional.cross_entropy(model(torch.from_numpy(train.x[idx])), torch.from_numpy(train.y[idx]))
        opt.zero_grad()
        loss.backward()
        opt.step()
    for m in model.modules():  # cumulative averages over the refresh batches
        if isinstance(m, torch.nn.BatchNorm2d):
            m.reset_running_stats()
            m.momentum = None
    with torch.no_grad():
        for _ in range(16):
            model(torch.from_numpy(train.x[np.sort(gen.choice(len(train.y), 16, replace=False))]))
    model.eval()
    assert splits.val is not None
    with torch.no_grad():
        logits = torch.cat([model(torch.from_numpy(splits.val.x[i : i + 32])) for i in range(0, len(splits.val.y), 32)])
    path.parent.mkdir(parents=True, exist_ok=True)
    save_state(model, path)
    val = float((logits.argmax(1).numpy() == splits.val.y).mean())
    res = {"checkpoint": str(path), "seconds": round(time.perf_counter() - start, 1), "val_accuracy": val}
    atomic_write_json(record, res)
    return res


def deploy_config(arch: str, npz: Path, checkpoint: Path, args: argparse.Namespace) -> dict[str, Any]:
    """Deploy-only: the trained teacher as it is, every format, batch 1 and 8."""
    return {
        "name": f"deploy-{arch}",
        "data": _data(npz, args),
        "teacher": {"model": {"family": arch}, "checkpoint": str(checkpoint)},
        "distill": {"student": "none"},
        "calibration": {"method": "ts"},
        "export": {
            "formats": FORMATS,
            "calib_samples": args.calib,
            "int8_calibration": "minmax",
            "int8_recovery": {"qat_steps": args.qat_steps, "qat_batch_size": 16, "max_float_fraction": 0.25},
        },  # fmt: skip
        "benchmark": {
            "devices": ["local"],
            "batch_sizes": [1, 8],
            "threads": args.threads,
            "min_time_s": 0.5,
            "repeats": 3,
            "eval_samples": args.eval,
        },  # fmt: skip
    }


def distill_config(arch: str, npz: Path, checkpoint: Path, args: argparse.Namespace) -> dict[str, Any]:
    """Prune ``arch`` to half its MACs and distill it for a short budget at 224x224."""
    train = {"epochs": 1, "batch_size": 16, "lr": 0.01, "warmup_epochs": 0, "max_steps_per_epoch": args.student_steps}
    return {
        "name": f"distill-{arch}",
        "data": _data(npz, args),
        "teacher": {"model": {"family": arch}, "checkpoint": str(checkpoint)},
        "distill": {
            "student": {"prune_ratio": 0.5, "round_to": 8, "name": "student"},
            "assistants": "none",
            "train": train,
            "loss": {"kind": "kd"},
            "max_accuracy_drop": 1.0,
        },  # fmt: skip
        "calibration": {"method": "ts"},
        "export": {
            "formats": ["onnx:fp32", "onnx:int8"],
            "calib_samples": args.calib,
            "int8_calibration": "minmax",
            "int8_recovery": {"enabled": False},
        },  # fmt: skip
        "benchmark": {
            "devices": ["local"],
            "batch_sizes": [1],
            "threads": args.threads,
            "min_time_s": 0.3,
            "repeats": 2,
            "eval_samples": args.eval,
        },  # fmt: skip
    }


# ------------------------------------------------------------------------------------------- one run, its own process


def peak_rss() -> int:
    """This process's peak resident set in bytes (``VmHWM``)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def child(config: Path, out: Path, until: str | None) -> dict[str, Any]:
    """Inside the measured process: run the pipeline, report its peak RSS and wall time."""
    from edgecompress.config import load_config
    from edgecompress.pipeline import run_pipeline

    start = time.perf_counter()
    run_pipeline(load_config(config), out, until=until, progress=False)
    return {"peak_rss": peak_rss(), "wall_s": round(time.perf_counter() - start, 1)}


def run_child(cfg: dict[str, Any], folder: Path, *, until: str | None = None) -> dict[str, Any]:
    """Write ``cfg`` and run the pipeline on it in a fresh process; its peak RSS, wall time and stage seconds."""
    import yaml

    from edgecompress._io import atomic_write_text

    folder.mkdir(parents=True, exist_ok=True)
    config = atomic_write_text(folder / "config.yaml", yaml.safe_dump(cfg, sort_keys=False))
    cmd = [sys.executable, "-m", "benchmarks.real_size", "--child", str(config), str(folder / "run")]
    cmd += ["--until", until] if until else []
    root = Path(__file__).resolve().parents[1]  # `-m benchmarks.real_size` from the repository root
    res = subprocess.run(cmd, capture_output=True, text=True, check=False, cwd=root)  # noqa: S603 - this script
    if res.returncode != 0:
        tail = "\n".join(res.stderr.strip().splitlines()[-15:])
        raise RuntimeError(f"pipeline child failed for {folder.name} (exit {res.returncode}):\n{tail}")
    out = json.loads(res.stdout.strip().splitlines()[-1])
    state = json.loads((folder / "run" / "run.json").read_text())
    out["stages"] = {s["name"]: round(s["seconds"], 1) for s in state["stages"]}
    return out


# ---------------------------------------------------------------------------------------------------- the numbers


def _agreement(bench_dir: Path, name: str, reference: str) -> float | None:
    """Top-1 agreement of artifact ``name`` with ``reference`` on the images the benchmark evaluated."""
    a, b = bench_dir / "local" / name / "logits.npy", bench_dir / "local" / reference / "logits.npy"
    if not a.is_file() or not b.is_file():
        return None
    la, lb = np.load(a), np.load(b)
    n = min(len(la), len(lb))
    return float((la[:n].argmax(1) == lb[:n].argmax(1)).mean())


def artifact_rows(run: Path) -> list[dict[str, Any]]:
    """One row per exported artifact of a deploy run: size, latency p50 at each batch, agreement with FP32."""
    from edgecompress.pipeline.loaded import load_run

    loaded = load_run(run)
    state = loaded.state
    bench_dir = Path(state.stage_dir("benchmark") or "")
    rows_by = {r.artifact: r for r in (state.benchmark.rows if state.benchmark else []) if r.ok}
    out = []
    for art in state.export.artifacts:
        row = rows_by.get(art.name)
        rec = art.int8_recovery
        out.append(
            {
                "artifact": art.name,
                "ok": art.ok,
                "size_mb": art.size_bytes / 1e6 if art.ok else None,
                "p50_ms": {str(b): s.p50 for b, s in row.latency_ms.items()} if row else {},
                "export_s": art.export_seconds,
                "agreement_fp32": _agreement(bench_dir, art.name, f"{art.format}-fp32") if art.ok else None,
                "accuracy": row.accuracy if row else None,
                "recovery": rec.summary() if rec else None,
                "failure": art.failure,
            }
        )
    return out


def measure_arch(arch: str, npz: Path, args: argparse.Namespace) -> dict[str, Any]:
    base = args.out / arch
    teacher = train_teacher(arch, npz, args.out, args)
    checkpoint = Path(teacher["checkpoint"])
    deploy = run_child(deploy_config(arch, npz, checkpoint, args), base / "deploy")
    state = json.loads((base / "deploy" / "run" / "run.json").read_text())
    return {
        "arch": arch,
        "params": state["teacher"]["params"],
        "macs": state["teacher"]["macs"],
        "teacher_val_accuracy": state["teacher"]["val_accuracy"],  # the deploy run's own measurement
        "teacher_training": teacher,
        "deploy": deploy,
        "artifacts": artifact_rows(base / "deploy" / "run"),
        "checkpoint": str(checkpoint),
    }


def measure_distill(arch: str, checkpoint: Path, npz: Path, args: argparse.Namespace) -> dict[str, Any]:
    folder = args.out / arch / "distill"
    res = run_child(distill_config(arch, npz, checkpoint, args), folder)
    state = json.loads((folder / "run" / "run.json").read_text())
    members = state["distill"]["chain"]["members"]
    return {"arch": arch, **res, "student": members[-1], "teacher_macs": state["teacher"]["macs"],
            "student_val_accuracy": state["distill"]["student_val_accuracy"]}  # fmt: skip


def run_benchmark(args: argparse.Namespace) -> dict[str, Any]:
    args.out = args.out.resolve()  # the child configs name files by absolute path (a config resolves its own)
    args.out.mkdir(parents=True, exist_ok=True)
    npz = prepare(args.out, n_train=args.train, n_test=args.eval)
    report: dict[str, Any] = {"machine": machine_info(args.threads), "command": " ".join(sys.argv), "archs": []}
    report["shared_machine"] = args.shared
    for arch in args.archs:  # one architecture that fails is recorded; the others go on
        try:
            report["archs"].append(measure_arch(arch, npz, args))
        except RuntimeError as exc:
            report.setdefault("failed", {})[arch] = str(exc)
    done = {a["arch"]: a for a in report["archs"]}
    if args.distill:
        arch = "mobilenet_v2" if "mobilenet_v2" in done else next(iter(done), None)
        if arch is None:
            report["distill"] = {"error": "no teacher was trained"}
        else:
            try:
                report["distill"] = measure_distill(arch, Path(done[arch]["checkpoint"]), npz, args)
            except RuntimeError as exc:
                report["distill"] = {"arch": arch, "error": str(exc)}
    return report


# ---------------------------------------------------------------------------------------------------- the tables


def render(report: dict[str, Any]) -> str:
    label = " (shared machine: other jobs ran beside it)" if report.get("shared_machine") else ""
    lines = [f"Machine{label}: {machine_line(report['machine'])}", f"Command: `{report['command']}`", ""]
    rows = []
    for a in report["archs"]:
        dep = a["deploy"]
        for r in a["artifacts"]:
            p50 = r["p50_ms"]
            rows.append([a["arch"], r["artifact"], "yes" if r["ok"] else "failed", fmt(r["size_mb"], ".2f"),
                         fmt(r["export_s"], ".1f"), fmt(p50.get("1"), ".2f"), fmt(p50.get("8"), ".1f"),
                         fmt(r["agreement_fp32"], ".3f")])  # fmt: skip
        lines.append(
            f"- {a['arch']}: {a['params'] / 1e6:.2f} M params, {a['macs'] / 1e9:.2f} G MACs; teacher val accuracy "
            f"{100 * (a['teacher_val_accuracy'] or 0):.1f} % after {a['teacher_training']['seconds']} s "
            f"of training; deploy pipeline peak RSS {dep['peak_rss'] / 2**30:.2f} GiB, wall {dep['wall_s']} s, "
            f"export stage {dep['stages'].get('export')} s, benchmark stage {dep['stages'].get('benchmark')} s"
        )
        for r in a["artifacts"]:
            if r["recovery"]:
                lines.append(f"  - {r['artifact']}: {r['recovery']}")
            elif not r["ok"]:
                lines.append(f"  - {r['artifact']} failed: {r['failure']}")
    headers = ["arch", "artifact", "shipped", "size MB", "export s", "p50 ms b1", "p50 ms b8", "top-1 agree FP32"]
    lines += ["", markdown_table(headers, rows)]
    for arch, error in report.get("failed", {}).items():
        lines += ["", f"{arch} failed: {error.splitlines()[-1]}"]
    d = report.get("distill")
    if d and "error" in d:
        lines += ["", f"prune + distill failed: {d['error'].splitlines()[-1]}"]
    elif d:
        s = d["student"]
        lines += [
            "",
            f"Prune + distill at 224x224 ({d['arch']}, student at {s.get('macs', 0) / max(d['teacher_macs'], 1):.2f}"
            f" of the teacher's MACs, {s.get('params')} params): pipeline peak RSS {d['peak_rss'] / 2**30:.2f} GiB, "
            f"wall {d['wall_s']} s (stages: {', '.join(f'{k} {v} s' for k, v in d['stages'].items())}); student val "
            f"accuracy {100 * (d['student_val_accuracy'] or 0):.1f} % after the short budget",
        ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--child"]:
        until = argv[4] if len(argv) > 4 and argv[3] == "--until" else None
        print(json.dumps(child(Path(argv[1]), Path(argv[2]), until)))
        return 0
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("runs/bench/real224"))
    ap.add_argument("--archs", type=lambda t: [a for a in t.split(",") if a], default=list(ARCHS))
    ap.add_argument("--train", type=int, default=1200, help="training images (tinted Fashion-MNIST at 224)")
    ap.add_argument("--eval", type=int, default=200, help="test images (benchmark evaluation, agreement)")
    ap.add_argument("--calib", type=int, default=128, help="calibration images (INT8)")
    ap.add_argument("--teacher-steps", type=int, default=30, help="teacher training steps (batch 16)")
    ap.add_argument("--student-steps", type=int, default=30, help="--distill: KD steps of the pruned student")
    ap.add_argument("--qat-steps", type=int, default=40, help="QAT steps when accuracy-aware INT8 reaches QAT")
    ap.add_argument("--threads", type=int, default=1, help="runtime threads in the latency benchmark")
    ap.add_argument("--distill", action="store_true", help="also prune + distill at 224x224")
    ap.add_argument("--shared", action="store_true", help="label timings as measured on a shared machine")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)
    unknown = sorted(set(args.archs) - set(ARCHS))
    if unknown:
        ap.error(f"unknown --archs {unknown}; use some of {', '.join(ARCHS)}")
    return run_and_print(run_benchmark, render, args)


if __name__ == "__main__":
    sys.exit(main())
