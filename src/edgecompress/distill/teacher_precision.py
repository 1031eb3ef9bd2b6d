"""The KD teacher in bfloat16 on CPUs that run it natively: a measured choice, behind a fidelity check.

With augmentation the teacher runs forward on every training batch, and that forward is most of a KD epoch (86 % of
the benchmark's augmented epoch, at the FP32 GEMM rate already: ``benchmarks/kd_throughput.py``). On a CPU whose
oneDNN has a native bf16 path (AVX512-BF16, AMX) the same teacher in bf16 — channels-last, under CPU autocast, so
convolutions and matmuls run in bf16 with fp32 accumulation and the rest stays fp32 — is several times faster.

Lower precision moves the targets the student learns from, so the choice is checked, not assumed:

* **AMX** — with ``auto``, bf16 is used only on a CPU with AMX tiles (Intel Sapphire Rapids and later), where it
  measured 1.8-3.7x fp32 for teachers of 30-58 M MACs. AVX512-BF16 without AMX (e.g. AMD Zen 4) has a native bf16
  path too, but the same teachers measured 0.8-1.65x there, varying from run to run: not worth moving the targets;
* **fidelity** — on the first ``FIDELITY_ROWS`` training rows, the bf16 teacher's top-1 must agree with the fp32
  teacher's on at least ``MIN_AGREEMENT`` of them, and the mean KL(fp32 ‖ bf16) of their softmax at T = 1 (the
  strictest temperature KD uses; a higher T only shrinks it) must be at most ``MAX_KL`` nats;
* **size** — with ``auto``, bf16 is used only for a teacher of at least ``MIN_MACS`` multiply-accumulates per image.
  A smaller one gains little or nothing (per-call overheads and the fp32<->bf16 conversions dominate). The rule is a
  count, not a timing, on purpose: the choice changes the student, so it must come out the same on every run of one
  config on one machine — a timed threshold did not (a teacher measured at 0.3x once measured 1.7x under load, and
  two runs of one config trained different students). The speed is still measured (alternate calls, CPU time) and
  recorded beside the fidelity numbers, for the report; it decides nothing.

``distill.teacher_precision``: ``auto`` (the default: bf16 when the CPU has AMX, the teacher is big enough and it
passes the fidelity check), ``fp32`` (never), ``bf16`` (whenever it passes the fidelity check, whatever the CPU or
the teacher's size; a failure is an error naming the numbers). The choice and its numbers are recorded in the
training checkpoint, so a resumed run keeps the precision it started with (bit-identical to an uninterrupted run),
and in the training result and the report.
"""

from __future__ import annotations

import copy
import logging
import time
from dataclasses import asdict, dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from edgecompress.distill.evaluate import model_device
from edgecompress.distill.fast_eval import Runner, in_layout, set_layout
from edgecompress.errors import TrainingError

log = logging.getLogger(__name__)

Precision = Literal["auto", "fp32", "bf16"]
FIDELITY_ROWS = 512  # training rows the bf16 teacher is compared on
MIN_AGREEMENT = 0.99  # top-1 agreement with the fp32 teacher (near-tied rows may flip; KL bounds the targets)
MAX_KL = 1e-3  # mean KL(fp32 || bf16) at T = 1, nats
# auto: bf16 only for a teacher of at least this many MACs per image. bf16 / fp32 speed of one 128-image batch on one
# AMX core (docs/performance.md, 5.3): 0.9-1.0x at 1.0-2.5 M, 1.1x at 3.9 M, 1.2-1.3x at 7.5 M, 1.4-1.7x at 15 M,
# 1.8-2.3x at 30-41 M, 2.9-3.7x at 58 M.
MIN_MACS = 10_000_000
TIMED_CALLS = 3  # at least this many timed calls per precision (alternating); the fastest of each is compared


@dataclass
class TeacherPrecision:
    """What the KD teacher ran in, and the measurements behind the choice (None where not measured)."""

    precision: str  # "fp32" or "bf16": what the teacher ran in
    requested: str  # distill.teacher_precision
    reason: str
    speedup: float | None = None  # fp32 CPU time / bf16 CPU time for one batch
    agreement: float | None = None  # top-1 agreement, bf16 vs fp32, on ``rows`` training rows
    kl: float | None = None  # mean KL(fp32 || bf16) at T = 1, nats
    rows: int = 0
    macs: int | None = None  # the teacher's multiply-accumulates per image (None: not counted)

    def to_dict(self) -> dict[str, Any]:
        """The fields, plus ``note`` (the report's line, or None)."""
        return {**asdict(self), "note": self.note()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TeacherPrecision:
        def num(k: str) -> float | None:
            return None if d.get(k) is None else float(d[k])

        return cls(
            str(d["precision"]),
            str(d.get("requested", "auto")),
            str(d.get("reason", "")),
            speedup=num("speedup"),
            agreement=num("agreement"),
            kl=num("kl"),
            rows=int(d.get("rows") or 0),
            macs=None if d.get("macs") is None else int(d["macs"]),
        )

    def measured(self) -> str:
        """The numbers in one phrase, e.g. ``3.4x fp32's speed, top-1 agreement 100.00 %, KL 2.1e-06 on 512 rows``."""
        parts = []
        if self.speedup is not None:
            parts.append(f"{self.speedup:.1f}x fp32's speed")
        if self.agreement is not None:
            parts.append(f"top-1 agreement {100 * self.agreement:.2f} %")
        if self.kl is not None:
            parts.append(f"KL {self.kl:.1e} nats at T = 1")
        return ", ".join(parts) + (f" on {self.rows} training images" if self.rows else "")

    def note(self) -> str | None:
        """One line for the report when bf16 was used or measured and refused; None when nothing was tried."""
        if self.precision == "bf16":
            return f"its KD teacher ran in bf16 ({self.measured()})"
        if self.agreement is not None or self.speedup is not None:
            return f"its KD teacher stayed fp32: {self.reason} ({self.measured()})"
        return None


def bf16_native() -> bool:
    """Whether this CPU's oneDNN runs bf16 natively (AVX512-BF16 / AMX; emulated bf16 is slower than fp32)."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except Exception:  # noqa: BLE001 - an old or exotic build: no bf16 path
        return False


def amx_native() -> bool:
    """Whether this CPU has AMX tiles (bf16 at several times the fp32 rate; AVX512-BF16 alone gains far less)."""
    try:
        return bool(torch.cpu._is_amx_tile_supported())
    except Exception:  # noqa: BLE001 - an old or exotic build: treat as absent
        return False


def bf16_runner(model: nn.Module) -> Runner | None:
    """``f(x) -> fp32 logits`` of an eval-mode copy of ``model`` under CPU bf16 autocast, channels-last for 4-D
    inputs; None when the model is not on the CPU or cannot be copied."""
    if model_device(model).type != "cpu":
        return None
    try:
        frozen = copy.deepcopy(model).eval()
    except Exception as exc:  # noqa: BLE001 - a program teacher may refuse a copy
        log.debug("bf16 teacher unavailable: %s", exc)
        return None
    for p in frozen.parameters():
        p.requires_grad_(False)
    set_layout(frozen, torch.channels_last)
    layout = [torch.channels_last]  # NCHW for good once a forward fails in NHWC (a user's x.view after a conv)

    def forward(x: Tensor) -> Tensor:
        with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
            return frozen(in_layout(x, layout[0]) if x.ndim == 4 else x)

    def run(x: Tensor) -> Tensor:
        x = x.detach().to("cpu", torch.float32)
        try:
            z = forward(x)
        except RuntimeError:
            if layout[0] != torch.channels_last or x.ndim != 4:
                raise
            layout[0] = torch.contiguous_format
            set_layout(frozen, torch.contiguous_format)
            z = forward(x)
        return z.float().contiguous().clone()  # out of inference mode: usable as a constant in autograd

    return run


def _eager(model: nn.Module) -> Runner:
    def run(x: Tensor) -> Tensor:
        with torch.inference_mode():
            z = model(x)
        return z.float().clone()

    return run


def choose_teacher_runner(
    teacher: nn.Module,
    probe: Tensor,
    fp32: Runner | None,
    requested: str = "auto",
    *,
    batch_size: int = 128,
) -> tuple[Runner | None, TeacherPrecision]:
    """The runner the trainer calls on every augmented batch, and the record of why.

    Args:
        teacher: the KD teacher (eval mode, frozen).
        probe: the first training rows (float32, up to ``FIDELITY_ROWS`` are used): fidelity and timing inputs.
        fp32: the fp32 frozen runner (``fast_eval.frozen_runner``), or None for eager fp32.
        requested: ``auto`` / ``fp32`` / ``bf16`` (``distill.teacher_precision``).
        batch_size: rows of the timed batch (the training batch).

    Returns:
        (runner, record); the runner is ``fp32`` itself (possibly None: eager) unless bf16 was chosen.

    Raises:
        TrainingError: ``bf16`` was requested and the bf16 teacher fails the fidelity check (or cannot be built).
    """
    if requested == "fp32":
        return fp32, TeacherPrecision("fp32", requested, "requested")
    if requested == "auto" and not bf16_native():
        return fp32, TeacherPrecision("fp32", requested, "this CPU has no native bf16 (AVX512-BF16 / AMX)")
    if requested == "auto" and not amx_native():
        reason = (
            "this CPU runs bf16 on AVX512-BF16 without AMX, where a bf16 teacher measured 0.8-1.65x fp32's speed "
            "(set distill.teacher_precision: bf16 to use it anyway)"
        )
        return fp32, TeacherPrecision("fp32", requested, reason)
    macs = _count_macs(teacher, tuple(probe.shape[1:]))
    if requested == "auto" and (macs is None or macs < MIN_MACS):
        size = "its MACs could not be counted" if macs is None else f"{macs / 1e6:.2f} M MACs per image"
        reason = f"the teacher is too small for bf16 to pay ({size}; auto needs >= {MIN_MACS / 1e6:g} M)"
        return fp32, TeacherPrecision("fp32", requested, reason, macs=macs)
    bf16 = bf16_runner(teacher)
    if bf16 is None:
        if requested == "bf16":
            raise TrainingError(
                "distill.teacher_precision is bf16 but the teacher cannot run in bf16 here (not on the CPU, or it "
                "cannot be copied)",
                "set distill.teacher_precision: auto or fp32",
            )
        return fp32, TeacherPrecision("fp32", requested, "the teacher cannot run in bf16 here")
    ref = fp32 if fp32 is not None else _eager(teacher)
    rows = probe[:FIDELITY_ROWS].float()
    step = max(1, min(batch_size, len(rows)))
    chunks = [rows[i : i + step] for i in range(0, len(rows), step)]
    chunks += [chunks[0]] * max(0, TIMED_CALLS + 1 - len(chunks))  # a small split: time its first rows again
    outs: dict[str, list[Tensor]] = {"fp32": [], "bf16": []}
    secs: dict[str, list[float]] = {"fp32": [], "bf16": []}
    for i, chunk in enumerate(chunks):  # alternately; the first call of each warms it up and is not timed
        for name, run in (("fp32", ref), ("bf16", bf16)):
            c = time.process_time()
            z = run(chunk)
            if i:
                secs[name].append(time.process_time() - c)
            if i * step < len(rows):
                outs[name].append(z)
    z32, z16 = torch.cat(outs["fp32"]), torch.cat(outs["bf16"])
    agreement = (z32.argmax(1) == z16.argmax(1)).float().mean().item()
    kl = F.kl_div(F.log_softmax(z16, 1), F.log_softmax(z32, 1), reduction="batchmean", log_target=True).item()
    speedup = min(secs["fp32"]) / max(min(secs["bf16"]), 1e-9)
    rec = TeacherPrecision(
        "fp32", requested, "", speedup=speedup, agreement=agreement, kl=kl, rows=len(rows), macs=macs
    )
    faithful = agreement >= MIN_AGREEMENT and kl <= MAX_KL
    if not faithful:
        rec.reason = (
            f"bf16 moved its outputs too far (needs top-1 agreement >= {100 * MIN_AGREEMENT:.1f} % and "
            f"KL <= {MAX_KL:g})"
        )
        if requested == "bf16":
            raise TrainingError(
                f"the teacher in bf16 is not faithful to its fp32 self: {rec.measured()}; needs top-1 agreement >= "
                f"{100 * MIN_AGREEMENT:.1f} % and KL <= {MAX_KL:g}",
                "set distill.teacher_precision: fp32 (or auto)",
            )
    else:
        rec.precision, rec.reason = "bf16", "requested" if requested == "bf16" else "AMX, big enough and faithful"
    log.info("KD teacher in %s: %s (%s)", rec.precision, rec.reason, rec.measured())
    return (bf16 if rec.precision == "bf16" else fp32), rec


def _count_macs(teacher: nn.Module, input_shape: tuple[int, ...]) -> int | None:
    """MACs per image, or None when the counter fails on this model (auto then keeps fp32)."""
    from edgecompress.models.build import count_macs

    try:
        return int(count_macs(teacher, input_shape))  # type: ignore[arg-type]
    except Exception as exc:  # noqa: BLE001 - an exotic model: no count, no bf16 by default
        log.debug("cannot count the teacher's MACs: %s", exc)
        return None


def resume_runner(teacher: nn.Module, fp32: Runner | None, record: TeacherPrecision) -> Runner | None:
    """The runner of a recorded choice (a resumed run keeps its precision without timing anything again)."""
    if record.precision == "bf16":
        run = bf16_runner(teacher)
        if run is None:
            raise TrainingError(
                "this run's teacher ran in bf16 and cannot run in bf16 here",
                "resume on a CPU, or delete the checkpoint to start over",
            )
        return run
    return fp32


__all__ = [
    "FIDELITY_ROWS",
    "MAX_KL",
    "MIN_AGREEMENT",
    "MIN_MACS",
    "Precision",
    "TeacherPrecision",
    "amx_native",
    "bf16_native",
    "bf16_runner",
    "choose_teacher_runner",
    "resume_runner",
]
