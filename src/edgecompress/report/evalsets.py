"""Which images each accuracy of the report is measured on: one accuracy per artifact per evaluation set, named.

The Models table (and the headline) use the whole test split; devices evaluate the first ``benchmark.eval_samples``
test images. When those differ, the device table says which images and how many, and its accuracy columns say
"(device)", so two accuracies of one artifact never stand side by side without a word on why.
"""

from __future__ import annotations

from edgecompress.measurements import BenchRow
from edgecompress.report.render import Section, _bench_section
from edgecompress.report.schema import Report


def test_split(report: Report) -> str:
    """The whole test split, named with its size where known."""
    return f"all {report.test_samples:,} test images" if report.test_samples else "the whole test split"


def models_set(report: Report) -> str:
    """What the Models table's metrics are measured on (the headline uses the same figures)."""
    return (f"Accuracy, ECE, NLL and Brier on {test_split(report)}: chain members in PyTorch, artifacts through their "
            "own runtime. The headline uses these figures.")  # fmt: skip


def eval_set(rows: list[BenchRow], test: int | None) -> str | None:
    """The device table's evaluation set in words, or None when the devices evaluated the whole test split."""
    counts = sorted({r.eval_samples for r in rows if r.ok and r.eval_samples})
    if not counts or (test is not None and counts == [test]):
        return None
    n = " / ".join(f"{c:,}" for c in counts)
    of = f" of the {test:,}" if test else ""
    return (f"Accuracy and ECE in this table are measured on each device on the first {n}{of} test images "
            "(benchmark.eval_samples), so they can differ from the whole-split figures in the Models table and the "
            "headline.")  # fmt: skip


def device_section(report: Report) -> Section:
    """The device × artifact table, the teacher's reference rows last (marked), its evaluation set named."""
    rows = [*report.benchmarks, *report.reference_benchmarks]
    sec = _bench_section(rows, reference_ids={id(r) for r in report.reference_benchmarks})
    note = eval_set(rows, report.test_samples)
    if note and sec.headers:
        sec.paragraphs.insert(0, note)
        sec.headers = [f"{h} (device)" if h in ("Accuracy", "ECE") else h for h in sec.headers]
    return sec
