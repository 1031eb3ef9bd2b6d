"""The plan of a data-free run, from a measured pilot: how long the configured budget will take on this machine.

Before the first round the runner times one synthesis step (an inner step of FastDFKD, or a pixel step of
DeepInversion, with the adversarial term on: the dearest kind) and one student step on throw-away copies, then logs
the plan, e.g. "220 rounds × k = 5, 40 student steps per round after 20 warm-up rounds: ~31 min". For a FastDFKD run
it also times one DeepInversion step and states what DeepInversion at its published 2,000 steps per batch would need
for the same rounds: the estimated speed-up. (Measured side by side in ``benchmarks/datafree.py``.)
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

DI_PUBLISHED_STEPS = 2000  # NVlabs/DeepInversion, paper parameters (the FastDFKD paper's "DeepInv-2k")


@dataclass(frozen=True)
class Plan:
    """What a run will do from ``start_round`` on, and the pilot's measured costs (seconds)."""

    method: str
    rounds: int
    start_round: int
    warmup_rounds: int
    synthesis_steps_per_round: int
    student_steps_per_round: int
    batch_size: int
    student_batch_size: int
    seconds_per_synthesis_step: float
    seconds_per_student_step: float
    seconds_per_deepinversion_step: float | None = None

    @property
    def synthesis_seconds(self) -> float:
        """Estimated synthesis time of the remaining rounds."""
        return (self.rounds - self.start_round) * self.synthesis_steps_per_round * self.seconds_per_synthesis_step

    @property
    def student_rounds(self) -> int:
        """Remaining rounds that train the student (after warm-up)."""
        return self.rounds - max(self.start_round, self.warmup_rounds)

    @property
    def student_seconds(self) -> float:
        """Estimated student time of the remaining rounds."""
        return max(0, self.student_rounds) * self.student_steps_per_round * self.seconds_per_student_step

    @property
    def minutes(self) -> float:
        """Estimated wall time of the remaining rounds (synthesis + student), in minutes."""
        return (self.synthesis_seconds + self.student_seconds) / 60.0

    def deepinversion_seconds(self, steps: int = DI_PUBLISHED_STEPS) -> float | None:
        """Estimated synthesis time of DeepInversion at ``steps`` per batch for all rounds (None: not timed)."""
        if self.seconds_per_deepinversion_step is None:
            return None
        return self.rounds * steps * self.seconds_per_deepinversion_step

    def text(self) -> str:
        """The one-line plan."""
        what = (
            f"k = {self.synthesis_steps_per_round}"
            if self.method == "fastdfkd"
            else f"{self.synthesis_steps_per_round} DeepInversion steps"
        )
        head = "" if self.start_round == 0 else f"resuming at round {self.start_round + 1}: "
        line = (
            f"{head}{self.rounds} rounds × {what}, {self.student_steps_per_round} student steps per round after "
            f"{self.warmup_rounds} warm-up rounds (batches {self.batch_size} / {self.student_batch_size}): "
            f"~{self.minutes:.1f} min (synthesis ~{self.synthesis_seconds / 60:.1f} min, student "
            f"~{self.student_seconds / 60:.1f} min; pilot: {1e3 * self.seconds_per_synthesis_step:.0f} ms per "
            f"synthesis step, {1e3 * self.seconds_per_student_step:.0f} ms per student step)"
        )
        di = self.deepinversion_seconds()
        full = self.rounds * self.synthesis_steps_per_round * self.seconds_per_synthesis_step
        if di is not None and self.method == "fastdfkd" and full > 0:
            line += (
                f"; DeepInversion at its published {DI_PUBLISHED_STEPS:,} steps per batch would need "
                f"~{di / 3600:.1f} h of synthesis for these rounds (~{di / full:.0f}× this run's)"
            )
        return line

    def to_dict(self) -> dict[str, Any]:
        """JSON-able, with the estimates and the text."""
        out = asdict(self)
        di = self.deepinversion_seconds()
        out.update(
            estimated_minutes=self.minutes,
            estimated_synthesis_seconds=self.synthesis_seconds,
            estimated_student_seconds=self.student_seconds,
            deepinversion_published_steps=DI_PUBLISHED_STEPS,
            estimated_deepinversion_seconds=di,
            text=self.text(),
        )
        return out


def time_it(fn: Any, repeats: int = 2) -> float:
    """Seconds per call of ``fn()``: one untimed warm-up call, then the mean of ``repeats`` calls."""
    import time

    fn()
    t0 = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - t0) / repeats
