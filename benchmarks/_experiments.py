"""Shared helpers of ``benchmarks/takd.py``, ``kd_diagnosis.py`` and ``calibration.py`` (not part of the library).

What lives here: the mean ± std arithmetic and markdown tables of the result files, loading the Fashion-MNIST splits
the experiments use, building the plain-CNN members, a trained model "as it teaches" (z / T with its logits cached
once), training and evaluating one student against such a teacher, and a description of the machine.
Training, distillation, calibration and export are the library's (``edgecompress.distill``, ``.calibration``,
``.export``); the scripts only drive them.
"""

from __future__ import annotations

import datetime as _dt
import math
import os
import platform
import subprocess
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgecompress.errors import ConfigError

FASHION = Path("/usr/share/datasets/fashion-mnist")


# ----------------------------------------------------------------------------------------------------------------------
# Arithmetic and tables


def mean_std(values: Iterable[float | None]) -> tuple[float, float, int]:
    """(mean, sample std with ddof=1, n) of the finite values; std is 0 for one value, NaN/NaN/0 for none."""
    vals = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    n = len(vals)
    if n == 0:
        return math.nan, math.nan, 0
    mean = sum(vals) / n
    if n == 1:
        return mean, 0.0, 1
    var = sum((v - mean) ** 2 for v in vals) / (n - 1)
    return mean, math.sqrt(var), n


def fmt_mean_std(values: Iterable[float | None], *, scale: float = 100.0, digits: int = 2) -> str:
    """``"91.23 ± 0.45"`` of ``values × scale`` (percent by default); ``"n/a"`` when there is no finite value.

    A single value prints without the ± part, so a one-seed table does not pretend to know its spread.
    """
    mean, std, n = mean_std(values)
    if n == 0:
        return "n/a"
    if n == 1:
        return f"{mean * scale:.{digits}f}"
    return f"{mean * scale:.{digits}f} ± {std * scale:.{digits}f}"


def fmt_count(n: float | int | None) -> str:
    """Human count: 1442 -> ``1.44k``, 17_530_000 -> ``17.53M``."""
    if n is None or (isinstance(n, float) and not math.isfinite(n)):
        return "n/a"
    n = float(n)
    for unit, div in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= div:
            return f"{n / div:.2f}{unit}"
    return f"{n:.0f}"


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A GitHub markdown table; every row must have one cell per header."""
    for row in rows:
        if len(row) != len(headers):
            raise ConfigError(f"table row {list(row)!r} has {len(row)} cells for {len(headers)} headers", "fix the row")
    lines = ["| " + " | ".join(str(h) for h in headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def group_by(records: Iterable[Mapping[str, Any]], key: str) -> dict[str, list[Mapping[str, Any]]]:
    """Records grouped by ``record[key]``, groups in first-seen order."""
    out: dict[str, list[Mapping[str, Any]]] = {}
    for rec in records:
        out.setdefault(str(rec[key]), []).append(rec)
    return out


def aggregate(
    records: Iterable[Mapping[str, Any]], key: str, metrics: Sequence[str]
) -> dict[str, dict[str, tuple[float, float, int]]]:
    """Per group of ``key``: ``{metric: (mean, std, n)}`` over the group's records (missing values skipped)."""
    return {
        name: {m: mean_std(r.get(m) for r in group) for m in metrics} for name, group in group_by(records, key).items()
    }


# ----------------------------------------------------------------------------------------------------------------------
# Data and models


def load_fashion(*, max_train: int | None, max_test: int | None, calib_size: int, seed: int = 0) -> Any:
    """Fashion-MNIST splits (train / val / calib / test, normalized with train statistics) from the local IDX files.

    The data seed is fixed by the caller (the experiments keep it at 0, so every training seed sees the same splits).
    """
    from edgecompress.data import DataConfig, load_splits

    cfg = DataConfig(
        dataset="fashion-mnist",
        path=FASHION,
        max_train=max_train,
        max_test=max_test,
        calib_size=calib_size,
        download=False,
    )
    return load_splits(cfg, seed=seed)


def build_cnn(channels: Sequence[int], pool_every: int, splits: Any, *, seed: int) -> Any:
    """A randomly initialized plain CNN of the ``cnn`` family (initialization seeded by ``seed``)."""
    import torch

    from edgecompress.models import ModelSpec, build_model

    torch.manual_seed(seed)
    c, h, w = splits.input_shape
    spec = ModelSpec(family="cnn", params={"channels": list(channels), "pool_every": pool_every})
    return build_model(spec, in_channels=c, num_classes=splits.num_classes, input_size=(h, w))


# ----------------------------------------------------------------------------------------------------------------------
# Teachers and students


@dataclass
class Teacher:
    """A trained model as it teaches: ``module`` (z / T when calibrated) and its logits, computed once, as taught."""

    name: str
    module: Any  # nn.Module handed to train_model (TemperatureScaled when calibrated)
    train_logits: Any  # Tensor [n_train, K], what the student's loss sees
    test_logits: Any  # Tensor [n_test, K], the reference of the fidelity metrics
    temperature: float  # fitted on val (1.0 when not calibrated)
    accuracy: float  # test, raw logits
    val_accuracy: float
    ece: float  # test, raw logits


def as_teacher(name: str, model: Any, splits: Any, *, calibrate: bool = True) -> Teacher:
    """``model`` (trained) as it teaches: temperature-scaled on val when ``calibrate`` (as ``distill_chain`` does)."""
    import torch

    from edgecompress.distill import TemperatureScaled, predict_logits
    from edgecompress.distill.evaluate import compute_metrics, fit_temperature

    val, test = predict_logits(model, splits.val.x), predict_logits(model, splits.test.x)
    t = fit_temperature(val, torch.from_numpy(splits.val.y)) if calibrate else 1.0
    raw = compute_metrics(test, torch.from_numpy(splits.test.y))
    return Teacher(
        name=name,
        module=TemperatureScaled(model, t) if calibrate else model,
        train_logits=predict_logits(model, splits.train.x) / t,
        test_logits=test / t,
        temperature=t,
        accuracy=raw["accuracy"],
        val_accuracy=float((val.argmax(1) == torch.from_numpy(splits.val.y)).float().mean()),
        ece=raw["ece"],
    )


def train_student(
    model: Any,
    splits: Any,
    cfg: Any,
    *,
    workdir: Path,
    seed: int,
    loss: Any,
    teacher: Teacher | None,
    reference: Any = None,
) -> tuple[dict[str, Any], Any]:
    """Train ``model`` (``train_model``, resumable in ``workdir``) from ``teacher`` (None: labels only) and evaluate it.

    Every model is selected on val (best val-accuracy epoch) and its T is fitted on val; test is only evaluated.
    Fidelity (top-1 agreement, KL(p_ref ‖ p_student) on test) is against ``reference`` (test logits of the original
    teacher as it taught), else against ``teacher``. Returns (row of metrics, the trained model).
    """
    import torch

    from edgecompress.distill import predict_logits, train_model
    from edgecompress.distill.evaluate import compute_metrics, fidelity, fit_temperature

    res = train_model(
        model,
        splits,
        cfg,
        workdir=workdir,
        seed=seed,
        teacher=None if teacher is None else teacher.module,
        loss=loss,
        progress=False,
        teacher_logits=None if teacher is None else teacher.train_logits,
    )
    val, test = predict_logits(res.model, splits.val.x), predict_logits(res.model, splits.test.x)
    t = fit_temperature(val, torch.from_numpy(splits.val.y))
    y_test = torch.from_numpy(splits.test.y)
    before, after = compute_metrics(test, y_test), compute_metrics(test / t, y_test)
    ref = reference if reference is not None else (None if teacher is None else teacher.test_logits)
    fid = fidelity(test, ref) if ref is not None else {"agreement": None, "kl": None}
    row = {
        "seed": seed,
        "accuracy": before["accuracy"],
        "val_accuracy": res.best_val_accuracy,
        "ece_before": before["ece"],
        "ece_after": after["ece"],
        "nll": after["nll"],
        "agreement": fid["agreement"],
        "kl": fid["kl"],
        "temperature": t,
        "best_epoch": res.best_epoch,
        "lr": res.lr,
        "recoveries": res.recoveries,
        "val_curve": [round(h["val_accuracy"], 4) for h in res.history],
        "seconds": sum(h.get("seconds", 0.0) for h in res.history),
    }
    return row, res.model


def summary_rows(
    rows: Sequence[Mapping[str, Any]], key: str, names: Sequence[str], columns: Sequence[tuple[str, float, int]]
) -> list[list[Any]]:
    """Per name (in order, skipped when absent): [name, n, mean ± std of each (metric, scale, digits) column]."""
    out = []
    for name in names:
        group = [r for r in rows if r[key] == name]
        if group:
            out.append(
                [name, len(group), *(fmt_mean_std((r.get(m) for r in group), scale=s, digits=d) for m, s, d in columns)]
            )
    return out


# The usual result columns: (metric, scale, digits) and their headers.
RESULT_COLUMNS = (
    ("accuracy", 100.0, 2),
    ("ece_before", 100.0, 2),
    ("ece_after", 100.0, 2),
    ("nll", 1.0, 3),
    ("agreement", 100.0, 2),
    ("kl", 1.0, 3),
)
RESULT_HEADERS = (
    "test acc %",
    "ECE % (raw)",
    "ECE % (after TS)",
    "NLL (after TS)",
    "agreement w/ teacher %",
    "KL(teacher‖student)",
)


def per_seed_table(rows: Sequence[Mapping[str, Any]], key: str, names: Sequence[str]) -> str:
    """Raw per-seed numbers: one line per name, test accuracy % of each seed (seed order) and the best epochs."""
    seeds = sorted({int(r["seed"]) for r in rows})
    out = []
    for name in names:
        by_seed = {int(r["seed"]): r for r in rows if r[key] == name}
        if by_seed:
            cells = [f"{100 * by_seed[s]['accuracy']:.2f}" if s in by_seed else "—" for s in seeds]
            epochs = ", ".join(str(by_seed[s].get("best_epoch", "?")) for s in seeds if s in by_seed)
            out.append([name, *cells, epochs])
    return markdown_table([key, *(f"seed {s} test acc %" for s in seeds), "best epochs"], out)


# ----------------------------------------------------------------------------------------------------------------------
# Provenance


def cpu_model() -> str:
    """``lscpu``'s model name (``platform.processor()`` when lscpu is absent)."""
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10, check=False).stdout
    except (OSError, subprocess.SubprocessError):
        out = ""
    for line in out.splitlines():
        if line.startswith("Model name:"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def machine_info(threads: int) -> dict[str, Any]:
    """CPU model, cores, load average at start, torch version, UTC date, torch threads used."""
    import torch

    try:
        load = os.getloadavg()
    except OSError:
        load = (math.nan, math.nan, math.nan)
    return {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "load_average_at_start": [round(v, 2) for v in load],
        "torch": torch.__version__,
        "torch_threads": threads,
        "python": platform.python_version(),
        "date_utc": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
    }


def machine_line(info: Mapping[str, Any]) -> str:
    """One markdown line describing the machine of a run."""
    load = info.get("load_average_at_start")
    return (
        f"Machine: {info.get('cpu')}, {info.get('cores')} cores (shared with other jobs; load average at start "
        f"{load}), torch {info.get('torch')} with {info.get('torch_threads')} thread(s); {info.get('date_utc')}."
    )


def write_outputs(out_dir: Path, stem: str, payload: dict[str, Any], markdown: str) -> tuple[Path, Path]:
    """Write ``<stem>.json`` and ``<stem>.md`` atomically into ``out_dir``."""
    from edgecompress._io import atomic_write_json, atomic_write_text

    out_dir.mkdir(parents=True, exist_ok=True)
    j, m = out_dir / f"{stem}.json", out_dir / f"{stem}.md"
    atomic_write_json(j, payload)
    atomic_write_text(m, markdown.rstrip() + "\n")
    return j, m


def parse_methods(text: str, known: Sequence[str], what: str = "method") -> list[str]:
    """``"kd,dist"`` -> ``["kd", "dist"]``; ``"all"`` -> every known name; unknown names are a :class:`ConfigError`."""
    if text.strip() == "all":
        return list(known)
    names = [t.strip() for t in text.split(",") if t.strip()]
    bad = [n for n in names if n not in known]
    if bad or not names:
        raise ConfigError(f"unknown {what}(s) {bad or text!r}", f"choose from: {', '.join(known)} (or 'all')")
    return names


def start(args: Any, known: Sequence[str], *, what: str, quiet: Sequence[str]) -> list[str] | None:
    """Shared start of an experiment script: logging, ``--methods`` / ``--seeds`` checks, torch threads.

    Returns the methods to run, or None after printing a one-line error (the script then exits with 2).
    """
    import logging
    import sys

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s", stream=sys.stderr)
    for noisy in quiet:
        logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        methods = parse_methods(args.methods, known, what)
        if args.seeds is not None and args.seeds < 1:
            raise ConfigError(f"--seeds {args.seeds} is below 1", "give at least one seed")
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return None
    import torch

    torch.set_num_threads(args.threads)
    return methods
