"""What a person sees: the console of a tiny real run, and its report.html looked at in headless Chromium.

One tiny run on scikit-learn's digits through the command line (module fixture): its console must end with the
headline and show no third-party line; its report must begin with the same headline, measured in that run (the
teacher's reference beside the shipped artifact); its device table names the subset it evaluated. Chromium renders
report.html to ``RUN/report.png`` (kept for CI: set ``EDGECOMPRESS_TEST_ARTIFACTS`` to a folder to keep the run
there) and a probe page checks that the headline block is there, that no table overflows the page width and that
every figure loads. Skipped, with the reason, only where Chromium is not installed (scripts/bootstrap.sh installs it).
"""

from __future__ import annotations

import html
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
# as root on a closed network Chromium needs these (no sandbox, no GPU, no background connections, a fresh profile)
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]  # fmt: skip
WIDTH = 1280
EVAL = 200  # the devices evaluate 200 of the 449 test images: the device table must say so
THIRD_PARTY = [r"INFO:nncf", r"torchvision is not installed", r"FutureWarning", r"copyreg", r"^[IWEF]\d{4} \d\d:",
               r"onnxscript", r"onnx_ir"]  # fmt: skip
PROBE = """<script>
window.addEventListener("load", () => {
  const width = document.documentElement.clientWidth;
  const head = document.getElementById("headline");
  const first = document.querySelector("body > h2");
  const out = {
    width, scrollWidth: document.documentElement.scrollWidth,
    headline: head ? head.innerText : null,
    headlineFirst: !!head && (!first || !!(head.compareDocumentPosition(first) & Node.DOCUMENT_POSITION_FOLLOWING)),
    tables: [...document.querySelectorAll("table")].map(t => Math.ceil(t.getBoundingClientRect().right)),
    images: [...document.images].map(i => ({alt: i.alt, ok: i.complete && i.naturalWidth > 0})),
  };
  const pre = document.createElement("pre");
  pre.id = "probe-result";
  pre.textContent = JSON.stringify(out);
  document.body.appendChild(pre);
});
</script>"""


def _config(path: Path) -> Path:
    import yaml

    cfg = yaml.safe_load((ROOT / "examples" / "digits.yaml").read_text())
    cfg["export"]["formats"] = ["onnx:fp32", "onnx:int8", "openvino:int8"]  # NNCF runs: its chatter must not show
    cfg["benchmark"].update(eval_samples=EVAL, min_time_s=0.05)
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    keep = os.environ.get("EDGECOMPRESS_TEST_ARTIFACTS")
    base = Path(keep) if keep else tmp_path_factory.mktemp("browser")
    base.mkdir(parents=True, exist_ok=True)
    out = base / "tiny-run"
    shutil.rmtree(out, ignore_errors=True)
    config = _config(tmp_path_factory.mktemp("cfg") / "tiny.yaml")
    res = subprocess.run([sys.executable, "-m", "edgecompress", "run", str(config), "--out", str(out), "--no-progress"],
                         capture_output=True, text=True, timeout=1200)  # fmt: skip
    assert res.returncode == 0, res.stderr[-3000:]
    return out, res


def test_console_ends_with_the_headline_and_shows_no_third_party_line(tiny_run) -> None:
    run, res = tiny_run
    tail = res.stdout[res.stdout.rindex("Headline") :]
    assert "p50 batch 32" in tail and "faster" in tail and "Recommended on local:" in tail, tail
    assert tail.rstrip().endswith(f"{run / 'run.log'}"), tail[-400:]
    for pattern in THIRD_PARTY:
        for stream in (res.stdout, res.stderr):
            assert not re.search(pattern, stream, flags=re.M), (pattern, stream[-3000:])
    log = (run / "run.log").read_text()
    assert "stage export: done" in log and "nncf" in log  # what the console left out is in the run's log


def test_the_headline_is_measured_in_the_run(tiny_run) -> None:
    run, _ = tiny_run
    report = json.loads((run / "report.json").read_text())
    (teacher_row_1, *_) = [r for r in report["reference_benchmarks"] if r["ok"]]
    assert teacher_row_1["artifact"] == "teacher-onnx-fp32" and teacher_row_1["eval_samples"] == EVAL
    device = report["headline"]["devices"][0]
    shipped = next(m for m in report["models"] if m["name"] == device["artifact"])
    assert device["shipped"]["accuracy"] == shipped["accuracy"]  # the whole test split's, not the device subset's
    row = next(r for r in report["benchmarks"] if r["artifact"] == device["artifact"])
    for point in device["points"]:
        b = str(point["batch"])
        assert point["shipped_ms"] == row["latency_ms"][b]["p50"]
        assert point["teacher_ms"] == teacher_row_1["latency_ms"][b]["p50"]
        assert point["speedup"] == pytest.approx(point["teacher_ms"] / point["shipped_ms"])
    assert device["bundle"] == f"bundles/{device['artifact']}" and (run / device["bundle"] / "manifest.json").is_file()
    md = (run / "report.md").read_text()
    assert md.index("## Headline") < md.index("## Models")
    assert f"on the first {EVAL} of the {report['test_samples']} test images" in md
    assert "teacher-onnx-fp32" not in {b.name for b in (run / "bundles").iterdir()}  # a reference never ships


def _chromium(args: list[str], profile: Path) -> subprocess.CompletedProcess:
    return subprocess.run([CHROMIUM, *FLAGS, f"--user-data-dir={profile}", f"--window-size={WIDTH},2000", *args],
                          capture_output=True, text=True, timeout=180)  # fmt: skip


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (scripts/bootstrap.sh installs it with apt)")
def test_report_html_in_headless_chromium(tiny_run, tmp_path: Path) -> None:
    run, _ = tiny_run
    page = run / "report.html"
    png = run / "report.png"  # kept under the run folder
    shot = _chromium([f"--screenshot={png}", page.as_uri()], tmp_path / "profile-shot")
    assert shot.returncode == 0 and png.is_file(), shot.stderr[-2000:]
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    probe = tmp_path / "probe.html"  # the report itself carries no script: the probe is a copy with one
    probe.write_text(page.read_text().replace("</body>", PROBE + "</body>"))
    dom = _chromium(["--virtual-time-budget=10000", "--dump-dom", probe.as_uri()], tmp_path / "profile-dom")
    found = re.search(r'<pre id="probe-result">(.*?)</pre>', dom.stdout, flags=re.S)
    assert found, (dom.stdout[-1000:], dom.stderr[-2000:])
    got = json.loads(html.unescape(found.group(1)))
    assert got["headline"] and "Teacher" in got["headline"] and "Shipped" in got["headline"], got["headline"]
    assert got["headlineFirst"], "the headline comes before every other section"
    assert got["width"] > 1000 and got["scrollWidth"] <= got["width"], got
    assert got["tables"] and all(right <= got["width"] for right in got["tables"]), got["tables"]
    assert len(got["images"]) >= 2 and all(img["ok"] for img in got["images"]), got["images"]
