"""Shared test helpers, in one place (test files import nothing from each other).

Plain functions and classes, imported as ``from conftest import NAME`` (pytest puts tests/ on ``sys.path``), and
fixtures. Heavy imports (torch, runtimes) stay inside the functions, so collecting the suite stays light.

- The runtime template: the tiny CNN, its ONNX file and reference logits, and :class:`RuntimeContract`, the tests
  every runtime backend passes (subclassed in ``tests/test_runtime_<backend>.py``; the device tests reuse the model).
- A throw-away ``sshd`` on a loopback port (:class:`Sshd`) for the SSH transport tests.
- The reliability helpers: tiny digits configs, the CLI as a subprocess, the one-line error checks, and the
  catalogue writer (``EDGECOMPRESS_WRITE_CATALOGUE=path`` appends every observed message to ``path``; render it with
  ``python tests/conftest.py catalogue.jsonl > table.md``).
- :func:`bn_teacher`, the conv-BN teacher of the data-free tests.
"""

from __future__ import annotations

import contextlib
import copy
import getpass
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pytest
import yaml

if TYPE_CHECKING:
    from edgecompress.devices.config import DeviceProfile


# ----------------------------------------------------------------------------------------------------------------------
# Runtime template

INPUT_SHAPE = (3, 8, 8)
NUM_CLASSES = 5


def tiny_model():  # noqa: ANN201 - a torch.nn.Module
    """The tiny CNN (same weights on every call: seeded)."""
    import torch

    torch.manual_seed(0)
    torch.set_num_threads(1)
    return torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3, padding=1),
        torch.nn.BatchNorm2d(8),
        torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(1),
        torch.nn.Flatten(),
        torch.nn.Linear(8, NUM_CLASSES),
    ).eval()


def tiny_onnx(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, np.ndarray, np.ndarray]:
    """The tiny CNN as ONNX (dynamic batch) plus a probe batch and its torch logits; built once per session."""
    root = tmp_path_factory.getbasetemp() / "tiny-model"
    model_path, ref_path = root / "tiny.onnx", root / "reference.npz"
    if not model_path.is_file():
        import torch

        model = tiny_model()
        x = torch.randn(6, *INPUT_SHAPE)
        root.mkdir(parents=True, exist_ok=True)
        torch.onnx.export(
            model,
            (x[:1],),
            str(model_path),
            input_names=["input"],
            output_names=["logits"],
            dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
            dynamo=False,
        )
        with torch.no_grad():
            np.savez(ref_path, x=x.numpy(), logits=model(x).numpy())
    ref = np.load(ref_path)
    return model_path, ref["x"], ref["logits"]


class RuntimeContract:
    """Subclasses set ``runtime_name`` (and ``options``) and provide the ``artifact`` fixture (a model file path)."""

    runtime_name: str = ""
    options: dict = {}
    atol: float = 1e-4
    missing_suffix: str = ".onnx"

    @pytest.fixture(scope="class")
    def reference(self, tmp_path_factory: pytest.TempPathFactory) -> tuple[np.ndarray, np.ndarray]:
        _, x, logits = tiny_onnx(tmp_path_factory)
        return x, logits

    @pytest.fixture(scope="class")
    def loaded(self, artifact: Path):  # noqa: ANN201 - a Runtime
        from edgecompress.devices.host_runtimes import get_runtime

        rt = get_runtime(self.runtime_name, **self.options)
        rt.load(artifact, threads=1)
        return rt

    def test_runtime_name(self, loaded) -> None:
        assert loaded.name == self.runtime_name

    def test_run_shape_and_dtype(self, loaded, reference) -> None:
        x, _ = reference
        out = loaded.run(x)
        assert out.shape == (len(x), NUM_CLASSES)
        assert out.dtype == np.float32
        assert np.isfinite(out).all()

    def test_matches_torch_reference(self, loaded, reference) -> None:
        x, logits = reference
        np.testing.assert_allclose(loaded.run(x), logits, atol=self.atol, rtol=self.atol)

    def test_batch_one_matches_batch_n(self, loaded, reference) -> None:
        x, _ = reference
        full = loaded.run(x)
        singles = np.concatenate([loaded.run(x[i : i + 1]) for i in range(len(x))])
        np.testing.assert_allclose(singles, full, atol=self.atol, rtol=self.atol)

    def test_info_fields(self, loaded) -> None:
        info = loaded.info()
        for key in ("runtime", "version", "providers", "precision", "threads"):
            assert key in info, key
        assert info["runtime"] == self.runtime_name
        assert info["version"]

    def test_missing_file_is_a_clear_error(self, tmp_path: Path) -> None:
        from edgecompress.devices.host_runtimes import get_runtime
        from edgecompress.errors import DeviceError

        rt = get_runtime(self.runtime_name, **self.options)
        with pytest.raises(DeviceError, match="not found"):
            rt.load(tmp_path / f"missing{self.missing_suffix}")

    def test_harness_measures_it(self, loaded, reference) -> None:
        from edgecompress.devices.agent import measure

        x, _ = reference
        m = measure(loaded, x[:2], warmup=1, min_time_s=0.0, min_iters=3, repeats=2)
        assert m["batch"] == 2 and m["iterations"] >= 6 and m["repeats"] == 2
        assert 0 < m["p50"] <= m["p99"] and m["throughput"] > 0


# ----------------------------------------------------------------------------------------------------------------------
# A throw-away sshd on a loopback port

SSHD = Path("/usr/sbin/sshd")
NO_SSHD = "/usr/sbin/sshd is not installed (apt-get install openssh-server)"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def keygen(path: Path) -> str:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(path)], check=True)  # noqa: S603 S607
    return path.with_suffix(".pub").read_text().strip()


def descendants(pid: int) -> list[int]:
    """Processes below ``pid`` (sshd's connection children call setsid, so a process group would miss them)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    out, todo = [], [pid]
    while todo:
        for c in children.get(todo.pop(), []):
            out.append(c)
            todo.append(c)
    return out


class Sshd:
    """A throw-away sshd: host key, authorized user key, known_hosts, all under ``root``."""

    def __init__(self, root: Path) -> None:
        self.root, self.port = root, free_port()
        root.mkdir(parents=True, exist_ok=True)
        host_pub = keygen(root / "host_key")
        user_pub = keygen(root / "user_key")
        (root / "authorized_keys").write_text(user_pub + "\n")
        (root / "known_hosts").write_text(f"[127.0.0.1]:{self.port} {' '.join(host_pub.split()[:2])}\n")
        (root / "sshd_config").write_text(
            "\n".join(
                [
                    f"Port {self.port}",
                    "ListenAddress 127.0.0.1",
                    f"HostKey {root / 'host_key'}",
                    f"PidFile {root / 'sshd.pid'}",
                    f"AuthorizedKeysFile {root / 'authorized_keys'}",
                    "PubkeyAuthentication yes",
                    "PasswordAuthentication no",
                    "KbdInteractiveAuthentication no",
                    "UsePAM no",
                    "StrictModes no",
                    "PermitRootLogin prohibit-password",
                    "Subsystem sftp internal-sftp",
                    "PrintMotd no",
                    "LogLevel ERROR",
                    # bash sources the user's ~/.bashrc for a command run over ssh unless SHLVL says it is nested; this
                    # machine's .bashrc runs `pyenv init`, whose rehash waits 60 s on a stale lock left by a killed
                    # process and made every remote command time out. The tests are about the transport, not dotfiles.
                    "SetEnv SHLVL=1",
                ]
            )
            + "\n"
        )
        if os.geteuid() == 0:
            Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # sshd's privilege-separation directory
        self.proc: subprocess.Popen | None = None
        self.start()

    def start(self) -> None:
        log = open(self.root / "sshd.log", "ab")  # noqa: SIM115 - sshd writes to it until stopped
        self.proc = subprocess.Popen(  # noqa: S603
            [str(SSHD), "-D", "-e", "-f", str(self.root / "sshd_config")], stdout=log, stderr=log
        )
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", self.port)) == 0:
                    return
            if self.proc.poll() is not None:
                pytest.fail(f"sshd exited: {(self.root / 'sshd.log').read_text()[-800:]}")
            time.sleep(0.05)
        pytest.fail("sshd did not start listening")

    def kill(self) -> None:
        """Kill sshd and every session below it (our own processes), dropping live connections."""
        if self.proc is None:
            return
        for pid in [*descendants(self.proc.pid), self.proc.pid]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        self.proc.wait(timeout=10)
        self.proc = None

    def profile(self, **overrides: Any) -> DeviceProfile:
        from edgecompress.devices.config import DeviceProfile

        fields = {
            "name": "ssh-loopback",
            "transport": "ssh",
            "host": "127.0.0.1",
            "port": self.port,
            "user": getpass.getuser(),
            "identity_file": self.root / "user_key",
            "known_hosts_file": self.root / "known_hosts",
            "python": sys.executable,
            "workdir": str(self.root / "remote"),
            "runtimes": ["onnxruntime", "tensorrt"],
            "formats": ["onnx:*"],
        }
        return DeviceProfile(**(fields | overrides))


# ----------------------------------------------------------------------------------------------------------------------
# Reliability: tiny configs, the CLI, one-line checks, the catalogue

ROOT = Path(__file__).resolve().parents[1]
DIGITS = yaml.safe_load((ROOT / "examples" / "digits.yaml").read_text())
FIX = " — fix: "


def tiny_config(**sections: Any) -> dict[str, Any]:
    """examples/digits.yaml made fast: 2 epochs of 12 steps per hop (a few seconds; the teacher reaches ~90 %, so the
    quality gates pass; the student's allowed drop is widened: these are tests of mechanics, the gates have their
    own), ONNX FP32 only, one tiny benchmark."""
    cfg = copy.deepcopy(DIGITS)
    fast = {"epochs": 2, "max_steps_per_epoch": 12, "warmup_epochs": 0, "lr": 0.3}
    cfg["teacher"]["train"].update(fast)
    cfg["distill"]["train"].update(fast)
    cfg["distill"]["max_accuracy_drop"] = 0.5
    cfg["export"]["formats"] = ["onnx:fp32"]
    cfg["benchmark"].update({"batch_sizes": [1], "min_time_s": 0.0, "repeats": 1, "eval_samples": 64})
    for key, value in sections.items():
        cfg[key] = value
    return cfg


def write_yaml(path: Path, data: Any) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(data, sort_keys=False) if not isinstance(data, str) else data)
    return path


def cli(*args: str, timeout: float = 300, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """``python -m edgecompress ARGS`` in a subprocess (argument list, no shell)."""
    full_env = {**os.environ, "PYTHONWARNINGS": "ignore", **(env or {})}
    return subprocess.run(  # noqa: S603
        [sys.executable, "-m", "edgecompress", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=full_env,
        cwd=ROOT,
    )


def one_error_line(res: subprocess.CompletedProcess, code: int | None = None) -> str:
    """Assert the user-facing contract of a failed command; return its one stderr line."""
    assert res.returncode != 0, f"expected a failure, got 0; stdout={res.stdout[-500:]!r}"
    if code is not None:
        assert res.returncode == code, (res.returncode, res.stderr[-2000:])
    assert "Traceback" not in res.stderr, res.stderr[-3000:]
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1, f"expected one stderr line, got {len(lines)}:\n{res.stderr[-3000:]}"
    line = lines[0]
    assert line.startswith("error: "), line
    assert FIX in line and line.split(FIX, 1)[1].strip(), f"no fix in: {line}"
    return line


def one_line_message(exc: BaseException) -> str:
    """Assert that a library error is one line naming problem and fix; return it."""
    text = str(exc)
    assert "\n" not in text, text
    assert FIX in text and text.split(FIX, 1)[1].strip(), f"no fix in: {text}"
    return text


def record(group: str, case: str, given: str, how: str, outcome: str, message: str) -> None:
    """Append one observed catalogue entry to ``$EDGECOMPRESS_WRITE_CATALOGUE`` (when set)."""
    path = os.environ.get("EDGECOMPRESS_WRITE_CATALOGUE")
    if not path:
        return
    row = {"group": group, "case": case, "input": given, "how": how, "outcome": outcome, "message": message}
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(json.dumps(row) + "\n")


def render_catalogue(jsonl: Path) -> str:
    """The Markdown table of docs/reliability.md from a recorded catalogue (one row per observed case)."""
    order = ["config", "data", "checkpoint", "device", "export", "numerics", "bundle", "resource", "interrupt",
             "received", "app"]  # fmt: skip
    rows = [json.loads(line) for line in Path(jsonl).read_text().splitlines() if line.strip()]
    rows.sort(key=lambda r: (order.index(r["group"]) if r["group"] in order else 99, r["case"]))
    out = [
        "| # | group | case | input | where | exit / outcome | message the user sees |",
        "|---|---|---|---|---|---|---|",
    ]
    for i, r in enumerate(rows, 1):
        msg = r["message"].replace("|", "\\|")
        given = r["input"].replace("|", "\\|")
        out.append(f"| {i} | {r['group']} | {r['case']} | {given} | {r['how']} | {r['outcome']} | {msg} |")
    return "\n".join(out) + "\n"


# ----------------------------------------------------------------------------------------------------------------------
# Data-free


def bn_teacher(seed: int = 0):  # noqa: ANN201 - a torch.nn.Module
    """A tiny conv-BN teacher (1 channel in, 4 classes) for the data-free tests: BN statistics to invert."""
    import torch
    from torch import nn

    torch.manual_seed(seed)
    m = nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, 4),
    )
    # give the BN layers non-trivial running statistics, as a trained teacher has
    m.train()
    with torch.no_grad():
        for _ in range(5):
            m(torch.rand(16, 1, 8, 8) * 2 + 0.5)
    return m.eval()


if __name__ == "__main__":  # python tests/conftest.py catalogue.jsonl > table.md
    print(render_catalogue(Path(sys.argv[1])), end="")


# ------------------------------------------------------------------------------------------- a digits bundle model


N_TRAIN = 1000  # digits images the logistic regression is fitted on; the rest are held out


def digits_onnx(path: Path) -> tuple[Path, np.ndarray, np.ndarray]:
    """A logistic regression on scikit-learn's digits as ONNX (Flatten + Gemm on ``(v / 16 - 0.5) / 0.5``).

    Returns the model path and the held-out images (8x8 floats in [0, 16]) with their labels.
    """
    import onnx
    from onnx import TensorProto, helper, numpy_helper
    from sklearn.datasets import load_digits
    from sklearn.linear_model import LogisticRegression

    digits = load_digits()
    x, y = digits.images.astype(np.float32), digits.target
    norm = ((x[:N_TRAIN] / 16.0 - 0.5) / 0.5).reshape(N_TRAIN, -1)
    clf = LogisticRegression(max_iter=300).fit(norm, y[:N_TRAIN])
    graph = helper.make_graph(
        [
            helper.make_node("Flatten", ["input"], ["flat"], axis=1),
            helper.make_node("Gemm", ["flat", "w", "b"], ["logits"], transB=1),
        ],
        "digits",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 1, 8, 8])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 10])],
        [
            numpy_helper.from_array(clf.coef_.astype(np.float32), "w"),
            numpy_helper.from_array(clf.intercept_.astype(np.float32), "b"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save_model(model, str(path))
    return path, x[N_TRAIN:], y[N_TRAIN:]


def digits_fields() -> dict:
    """Manifest fields of the digits bundle: raw values in [0, 16] (the data's own range), scale 1/16."""
    return {
        "model": {
            "format": "onnx",
            "precision": "fp32",
            "runtime": "onnxruntime",
            "input": {"names": ["input"], "shape": ["batch", 1, 8, 8]},
            "output": {"name": "logits", "kind": "logits", "calibrated": True},
        },
        "preprocessing": {
            "mean": [0.5],
            "std": [0.5],
            "size": [8, 8],
            "channels": 1,
            "scale": 1.0 / 16.0,
            "input_dtype": "float32",
            "value_range": [0.0, 16.0],
            "color_mode": "L",
        },
        "labels": [str(i) for i in range(10)],
    }


def bn_net(width: int):  # noqa: ANN201 - a torch.nn.Module
    """A conv-BN-ReLU net for 1x8x8 inputs and 4 classes (the chain and gate tests' members)."""
    import torch

    return torch.nn.Sequential(
        torch.nn.Conv2d(1, width, 3, padding=1),
        torch.nn.BatchNorm2d(width),
        torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(2),
        torch.nn.Flatten(),
        torch.nn.Linear(4 * width, 4),
    )


def two_conv_net(width: int = 8, classes: int = 4):  # noqa: ANN201 - an nn.Sequential
    """conv-BN-ReLU, conv-ReLU, global pool, linear: the fast-eval and teacher-precision tests' network."""
    from torch import nn

    return nn.Sequential(
        nn.Conv2d(1, width, 3, padding=1, bias=False),
        nn.BatchNorm2d(width),
        nn.ReLU(),
        nn.Conv2d(width, width, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(width, classes),
    )


def proto_splits(n: int = 192):  # noqa: ANN201 - a namespace with train/val
    """4 classes of 1x8x8 inputs (a random prototype per class plus noise): ``n`` train and 64 val samples."""
    from types import SimpleNamespace as NS

    protos = np.random.default_rng(0).normal(size=(4, 1, 8, 8)).astype(np.float32)

    def part(k: int, seed: int) -> NS:
        r = np.random.default_rng(seed)
        y = r.integers(0, 4, k).astype(np.int64)
        return NS(x=(protos[y] + 0.7 * r.normal(size=(k, 1, 8, 8))).astype(np.float32), y=y)

    return NS(train=part(n, 1), val=part(64, 2))


# ---------------------------------------------------------------------------------- a finished run, without training


def synthetic_run(root: Path) -> Path:
    """A finished run directory, as ``edgecompress run`` leaves it, built in a second without training anything.

    The digits logistic regression (:func:`digits_onnx`) is its one artifact (``onnx-fp32``); ``run.json`` records
    every stage in ``root/stages/<name>-<key>/`` with absolute paths, the benchmark folder holds the shipped
    ``eval.npz`` (normalized digits and labels), and ``config.resolved.yaml`` is the digits example's. ``edgecompress
    bench root`` re-benchmarks it, rewrites the report and bundles it, like a received run.
    """
    from edgecompress.config import dump_config, parse_config
    from edgecompress.export import Artifact
    from edgecompress.pipeline.results import (
        BenchmarkResult,
        CalibrateResult,
        DataResult,
        DistillResult,
        ExportResult,
        RunState,
        StageRecord,
        TeacherResult,
    )

    root = Path(root)
    folders = {name: root / "stages" / f"{name}-{i:012x}" for i, name in enumerate(
        ["data", "teacher", "distill", "calibrate", "export", "benchmark"])}  # fmt: skip
    for folder in folders.values():
        folder.mkdir(parents=True)
    art_dir = folders["export"] / "artifacts" / "onnx-fp32"
    art_dir.mkdir(parents=True)
    model, x, y = digits_onnx(art_dir / "model.onnx")
    np.savez(folders["benchmark"] / "eval.npz", x=((x / 16.0 - 0.5) / 0.5)[:64, None].astype(np.float32), y=y[:64])
    pre = {"mean": [0.5], "std": [0.5], "size": [8, 8], "channels": 1, "layout": "NCHW", "scale": 1 / 16,
           "input_dtype": "float32", "value_range": [0.0, 16.0], "color_mode": "L"}  # fmt: skip
    member = {"name": "student", "role": "student", "params": 650, "macs": 640, "accuracy": 0.9}
    state = RunState(
        config_hash="0" * 64,
        stages=[
            StageRecord(name=n, seconds=0.1, cached=False, output_dir=str(f), key=f.name.rsplit("-", 1)[1])
            for n, f in folders.items()
        ],
        data=DataResult(
            fingerprint="f",
            labels=[str(i) for i in range(10)],
            num_classes=10,
            input_shape=(1, 8, 8),
            preprocess=pre,
            sizes={"train": 1000, "val": 100, "calib": 64, "test": 797},
        ),
        teacher=TeacherResult(spec={"family": "mlp", "params": {}}, params=650, macs=640),
        distill=DistillResult(student_spec={"family": "mlp", "params": {}}, chain={"members": [member]}),
        calibrate=CalibrateResult(temperature=1.0),
        export=ExportResult(
            artifacts=[
                Artifact(
                    name="onnx-fp32",
                    format="onnx",
                    precision="fp32",
                    files=[model],
                    model_file=model,
                    runtime="onnxruntime",
                    size_bytes=model.stat().st_size,
                )
            ]
        ),
        benchmark=BenchmarkResult(rows=[]),
    )
    (root / "run.json").write_text(state.model_dump_json(indent=2))
    cfg = tiny_config()
    cfg["export"]["formats"] = ["onnx:fp32"]
    cfg["bundle"] = {"zip": False}
    (root / "config.resolved.yaml").write_text(dump_config(parse_config(cfg)))
    (root / ".edgecompress").mkdir()
    (root / ".edgecompress" / "run-dir.json").write_text('{"tool": "edgecompress"}')
    return root


def png_claiming(width: int, height: int) -> bytes:
    """A small PNG file whose header claims ``width`` x ``height`` 8-bit gray pixels (a decompression bomb's header)."""
    import struct
    import zlib

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))

    header = chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
    return b"\x89PNG\r\n\x1a\n" + header + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")
