"""Catalogue of bad inputs: each is given to the real CLI (a subprocess) and must fail with one stderr line that names
the problem and the fix, no traceback (a traceback only with ``--debug``).

All CLI cases run once, a few at a time, in one module fixture (most fail before torch is imported; the rest need only
the digits data), so the catalogue stays fast. Library-boundary cases (data loaders, checkpoints, exporters,
transports) live in test_reliability_boundary.py. ``EDGECOMPRESS_WRITE_CATALOGUE=path`` records every observed message
(see docs/reliability.md).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import uuid
import zipfile
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from conftest import cli, one_error_line, record, tiny_config, write_yaml

PWNED = Path(f"/tmp/edgecompress-pwned-{uuid.uuid4().hex[:8]}")


@dataclass(frozen=True)
class Case:
    """One bad input: ``make(dir)`` writes its files and returns the CLI arguments."""

    id: str
    group: str
    given: str
    make: Callable[[Path], list[str]]
    expect: tuple[str, ...]
    code: int = 2


def _cfg(d: Path, **sections) -> str:
    return str(write_yaml(d / "cfg.yaml", tiny_config(**sections)))


def _mutated(path: tuple[str, ...], value, *, delete: bool = False) -> Callable[[Path], list[str]]:
    def make(d: Path) -> list[str]:
        cfg = tiny_config()
        node = cfg
        for key in path[:-1]:
            node = node[key]
        if delete:
            del node[path[-1]]
        else:
            node[path[-1]] = value
        return ["validate", str(write_yaml(d / "cfg.yaml", cfg))]

    return make


def _text(content: str) -> Callable[[Path], list[str]]:
    return lambda d: ["validate", str(write_yaml(d / "cfg.yaml", content))]


def _run(d: Path, cfg: dict, *extra: str) -> list[str]:
    return ["run", str(write_yaml(d / "cfg.yaml", cfg)), "--out", str(d / "run"), "--no-progress", *extra]


def _data(dataset: str, path: Path | None, **more) -> dict:
    cfg = tiny_config()
    cfg["data"] = {"dataset": dataset, "val_fraction": 0.2, "calib_size": 4, "test_fraction": 0.2, **more}
    if path is not None:
        cfg["data"]["path"] = str(path)
    return cfg


def _npz(d: Path, **arrays) -> Path:
    path = d / "data.npz"
    np.savez(path, **arrays)
    return path


def _good_xy(n: int = 40, k: int = 4) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (n, 8, 8), dtype=np.uint8), np.arange(n) % k


def _npz_nan(d: Path) -> list[str]:
    x, y = _good_xy()
    x = x.astype(np.float32) / 255
    x[3, 2, 2] = np.nan
    return _run(d, _data("npz", _npz(d, x_train=x, y_train=y)), "--until", "data")


def _folder_mixed(d: Path) -> list[str]:
    from PIL import Image

    for k, size in (("a", 8), ("b", 10)):
        (d / "imgs" / k).mkdir(parents=True)
        for i in range(3):
            Image.fromarray(np.full((size, size), 40 * i, np.uint8)).save(d / "imgs" / k / f"{i}.png")
    return _run(d, _data("folder", d / "imgs"), "--until", "data")


def _teacher_ckpt(d: Path, obj) -> dict:
    import torch

    path = d / "teacher.pt"
    torch.save(obj, path)
    cfg = tiny_config()
    cfg["teacher"] = {"model": cfg["teacher"]["model"], "checkpoint": str(path)}
    return cfg


def _ckpt_wrong_arch(d: Path) -> list[str]:
    import torch

    return _run(d, _teacher_ckpt(d, torch.nn.Linear(64, 10).state_dict()), "--until", "teacher")


class _Pwn:
    def __reduce__(self):
        return (os.system, (f"touch {PWNED}",))


def _ckpt_pickled_code(d: Path) -> list[str]:
    return _run(d, _teacher_ckpt(d, {"weight": _Pwn()}), "--until", "teacher")  # torch.save pickles the call


def _profile(d: Path, **fields) -> str:
    return str(write_yaml(d / "dev.yaml", {"name": "dev", "transport": "ssh", "host": "127.0.0.1", **fields}))


def _with_devices(d: Path, *devices: str) -> list[str]:
    cfg = tiny_config()
    cfg["benchmark"]["devices"] = list(devices)
    return _run(d, cfg)


def _out_under_file(d: Path) -> list[str]:
    (d / "plain").write_text("x")
    return ["run", _cfg(d), "--out", str(d / "plain" / "run"), "--no-progress"]


def _tmpfs(d: Path, options: str) -> Path:
    mnt = d / "mnt"
    mnt.mkdir()
    res = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(mnt)], capture_output=True, text=True)
    if res.returncode != 0:
        raise _Skip(f"cannot mount a tmpfs here ({res.stderr.strip() or res.returncode})")
    return mnt


class _Skip(Exception):
    pass


def _out_readonly(d: Path) -> list[str]:
    return ["run", _cfg(d), "--out", str(_tmpfs(d, "size=1m,ro") / "run"), "--no-progress"]


def _out_full_disk(d: Path) -> list[str]:
    return ["run", _cfg(d), "--out", str(_tmpfs(d, "size=4m") / "run"), "--no-progress"]


# ----------------------------------------------------------------------------------------------------------- bundles
BUNDLE: dict[str, Path] = {}  # filled by the module fixture: a real, verified ONNX bundle


def _bundle_copy(d: Path) -> Path:
    dest = d / "bundle"
    shutil.copytree(BUNDLE["dir"], dest)
    return dest


def _bundle_tamper(d: Path) -> list[str]:
    b = _bundle_copy(d)
    model = b / "model" / "model.onnx"
    model.write_bytes(model.read_bytes()[:-1] + b"\x00")
    return ["verify", str(b)]


def _bundle_missing(d: Path) -> list[str]:
    b = _bundle_copy(d)
    (b / "model" / "model.onnx").unlink()
    return ["verify", str(b)]


def _manifest_edit(edit: Callable[[dict], None], *, resum: bool = True) -> Callable[[Path], list[str]]:
    """Edit manifest.json; with ``resum`` also rewrite SHA256SUMS, as someone who edits both would (then only the
    schema checks stop it)."""

    def make(d: Path) -> list[str]:
        b = _bundle_copy(d)
        data = json.loads((b / "manifest.json").read_text())
        edit(data)
        _write_manifest(b, json.dumps(data), resum=resum)
        return ["verify", str(b)]

    return make


def _write_manifest(bundle: Path, text: str, *, resum: bool = True) -> None:
    from edgecompress.bundle.writer import sums_text

    (bundle / "manifest.json").write_text(text)
    if resum:
        (bundle / "SHA256SUMS").write_text(sums_text(bundle))


def _manifest_broken(d: Path) -> list[str]:
    b = _bundle_copy(d)
    _write_manifest(b, '{"schema_version": 1, "name": ')
    return ["verify", str(b)]


def _zip_with(entry: str, *, symlink: bool = False) -> Callable[[Path], list[str]]:
    def make(d: Path) -> list[str]:
        src = BUNDLE["dir"]
        path = d / "evil.zip"
        with zipfile.ZipFile(path, "w") as zf:
            for f in sorted(src.rglob("*")):
                if f.is_file():
                    zf.write(f, f"{src.name}/{f.relative_to(src).as_posix()}")
            info = zipfile.ZipInfo(entry)
            if symlink:
                info.create_system = 3
                info.external_attr = (0o120777 << 16) & 0xFFFF0000
                zf.writestr(info, "/etc/passwd")
            else:
                zf.writestr(info, "owned")
        return ["verify", str(path)]

    return make


def _unlisted_model(d: Path) -> list[str]:
    b = _bundle_copy(d)
    shutil.copy(b / "model" / "model.onnx", b / "model" / "extra.onnx")
    return ["verify", str(b)]


def _predict_tampered(d: Path) -> list[str]:
    args = _bundle_tamper(d)
    img = d / "x.png"
    shutil.copy(BUNDLE["image"], img)
    return ["predict", args[1], str(img)]


def _predict_not_image(d: Path) -> list[str]:
    (d / "notes.png").write_text("not an image")
    return ["predict", str(BUNDLE["dir"]), str(d / "notes.png")]


def _not_a_zip(d: Path) -> list[str]:
    (d / "bundle.zip").write_bytes(os.urandom(256))
    return ["verify", str(d / "bundle.zip")]


# -------------------------------------------------------------------------------------------------------- the cases
CASES = [
    # configs: schema (cheap: `validate` never imports torch)
    Case(
        "unknown-top-key",
        "config",
        "top-level key `colour: red`",
        _mutated(("colour",), "red"),
        ("colour", "unknown key"),
    ),
    Case(
        "unknown-nested-key",
        "config",
        "`export.formatz`",
        _mutated(("export", "formatz"), ["onnx:fp32"]),
        ("export.formatz",),
    ),
    Case("wrong-type-seed", "config", "`seed: abc`", _mutated(("seed",), "abc"), ("seed", '"abc"')),
    Case("negative-seed", "config", "`seed: -1`", _mutated(("seed",), -1), ("seed",)),
    Case(
        "wrong-type-epochs",
        "config",
        "`teacher.train.epochs: ten`",
        _mutated(("teacher", "train", "epochs"), "ten"),
        ("teacher.train.epochs",),
    ),
    Case(
        "zero-epochs",
        "config",
        "`distill.train.epochs: 0`",
        _mutated(("distill", "train", "epochs"), 0),
        ("distill.train.epochs",),
    ),
    Case(
        "negative-lr",
        "config",
        "`teacher.train.lr: -0.1`",
        _mutated(("teacher", "train", "lr"), -0.1),
        ("teacher.train.lr",),
    ),
    Case(
        "prune-ratio-above-1",
        "config",
        "`distill.student.prune_ratio: 1.5`",
        _mutated(("distill", "student", "prune_ratio"), 1.5),
        ("prune_ratio",),
    ),
    Case(
        "val-fraction-1",
        "config",
        "`data.val_fraction: 1.0`",
        _mutated(("data", "val_fraction"), 1.0),
        ("data.val_fraction",),
    ),
    Case(
        "impossible-split",
        "config",
        "`data.max_train: 100` with `calib_size: 200`",
        _mutated(("data", "max_train"), 100),
        ("calib_size", "max_train"),
    ),
    Case(
        "max-drop-above-1",
        "config",
        "`export.max_accuracy_drop: 2`",
        _mutated(("export", "max_accuracy_drop"), 2),
        ("export.max_accuracy_drop",),
    ),
    Case(
        "bad-format-precision",
        "config",
        "`export.formats: [onnx:int3]`",
        _mutated(("export", "formats"), ["onnx:int3"]),
        ("int3",),
    ),
    Case(
        "unknown-format",
        "config",
        "`export.formats: [tflite:fp32]`",
        _mutated(("export", "formats"), ["tflite:fp32"]),
        ("tflite",),
    ),
    Case(
        "malformed-format",
        "config",
        "`export.formats: ['onnx fp32']`",
        _mutated(("export", "formats"), ["onnx fp32"]),
        ("export.formats",),
    ),
    Case("bad-opset", "config", "`export.opset: 5`", _mutated(("export", "opset"), 5), ("export.opset",)),
    Case(
        "zero-batch",
        "config",
        "`benchmark.batch_sizes: [0]`",
        _mutated(("benchmark", "batch_sizes"), [0]),
        ("batch_sizes",),
    ),
    Case("empty-devices", "config", "`benchmark.devices: []`", _mutated(("benchmark", "devices"), []), ("devices",)),
    Case(
        "unknown-dataset",
        "config",
        "`data.dataset: cifar`",
        _mutated(("data", "dataset"), "cifar"),
        ("data.dataset", "cifar"),
    ),
    Case(
        "npz-without-path",
        "config",
        "`data.dataset: npz` without `data.path`",
        _mutated(("data", "dataset"), "npz"),
        ("data.path",),
    ),
    Case(
        "mean-without-std",
        "config",
        "`data.mean: [0.5]` without `data.std`",
        _mutated(("data", "mean"), [0.5]),
        ("data.std",),
    ),
    Case("bad-run-name", "config", "`name: 'a b;rm -rf ~'`", _mutated(("name",), "a b;rm -rf ~"), ("name",)),
    Case("newer-config-version", "config", "`version: 99`", _mutated(("version",), 99), ("version 99", "newer")),
    Case(
        "missing-teacher",
        "config",
        "no `teacher:` section",
        _mutated(("teacher",), None, delete=True),
        ("teacher", "missing"),
    ),
    Case(
        "teacher-without-source",
        "config",
        "`teacher:` with neither `checkpoint` nor `train`",
        _mutated(("teacher", "train"), None, delete=True),
        ("teacher.checkpoint",),
    ),
    Case(
        "family-and-factory",
        "config",
        "`teacher.model` with both `family` and `factory`",
        _mutated(("teacher", "model", "factory"), "pkg.mod:fn"),
        ("exactly one",),
    ),
    Case(
        "factory-code",
        "config",
        "`teacher.model.factory: \"os.system('id')\"`",
        _mutated(("teacher", "model"), {"factory": "os.system('id')"}),
        ("factory",),
    ),
    Case(
        "config-not-found",
        "config",
        "a config path that does not exist",
        lambda d: ["validate", str(d / "nope.yaml")],
        ("config file not found",),
    ),
    Case(
        "not-yaml", "config", "`data: [1, 2` (broken YAML)", _text("name: x\ndata: [1, 2\n"), ("not valid YAML", "line")
    ),
    Case("config-is-a-list", "config", "a YAML list instead of a mapping", _text("- a\n- b\n"), ("mapping",)),
    Case("empty-config", "config", "an empty file", _text(""), ("mapping",)),
    Case(
        "unknown-until",
        "config",
        "`--until nope`",
        lambda d: ["run", _cfg(d), "--until", "nope", "--out", str(d / "r")],
        ("not a stage",),
    ),
    # configs: names that only resolve at run time (all checked before any work)
    Case(
        "unknown-family",
        "config",
        "`teacher.model.family: transformer`",
        lambda d: _run(
            d, tiny_config(teacher={"model": {"family": "transformer"}, "train": {"epochs": 1}}), "--until", "teacher"
        ),
        ("transformer",),
    ),
    Case(
        "unknown-device",
        "device",
        "`benchmark.devices: [nope]`",
        lambda d: _with_devices(d, "nope"),
        ("unknown device profile 'nope'", "known:"),
    ),
    Case(
        "missing-device-file",
        "device",
        "`benchmark.devices: [missing.yaml]`",
        lambda d: _with_devices(d, str(d / "missing.yaml")),
        ("not found",),
    ),
    Case(
        "ssh-host-injection",
        "device",
        f"ssh profile `host: -oProxyCommand=touch {PWNED}`",
        lambda d: _with_devices(d, _profile(d, host=f"-oProxyCommand=touch {PWNED}")),
        ("host",),
    ),
    Case(
        "ssh-user-metachars",
        "device",
        "ssh profile `user: 'me;touch /tmp/x'`",
        lambda d: _with_devices(d, _profile(d, user="me;touch /tmp/x")),
        ("user",),
    ),
    Case(
        "ssh-workdir-metachars",
        "device",
        "ssh profile `workdir: '/tmp/$(id)'`",
        lambda d: _with_devices(d, _profile(d, workdir="/tmp/$(id)")),
        ("workdir",),
    ),
    Case(
        "ssh-missing-key",
        "device",
        "ssh profile whose `identity_file` does not exist",
        lambda d: _with_devices(d, _profile(d, identity_file=str(d / "no_key"))),
        ("identity_file", "does not exist"),
    ),
    Case(
        "bench-not-a-run",
        "device",
        "`edgecompress bench` on a folder that is not a finished run",
        lambda d: ["bench", str(d)],
        ("not a finished run directory",),
    ),
    # data (the digits loader is fast; these stop with --until data)
    Case(
        "npz-not-found",
        "data",
        "`data.path` to a missing .npz",
        lambda d: _run(d, _data("npz", d / "nope.npz"), "--until", "data"),
        ("npz file not found",),
    ),
    Case(
        "npz-missing-keys",
        "data",
        ".npz with `images`/`targets` instead of `x_train`/`y_train`",
        lambda d: _run(d, _data("npz", _npz(d, images=_good_xy()[0], targets=_good_xy()[1])), "--until", "data"),
        ("x_train", "numpy.savez"),
    ),
    Case("npz-nan-pixels", "data", ".npz whose float images contain a NaN", _npz_nan, ("NaN",)),
    Case(
        "folder-mixed-sizes",
        "data",
        "image folder with 8x8 and 10x10 PNGs",
        _folder_mixed,
        ("differ in size", "image_size"),
    ),
    Case(
        "fashion-dir-missing",
        "data",
        "`dataset: fashion-mnist` with a `data.path` that does not exist",
        lambda d: _run(d, _data("fashion-mnist", d / "fm"), "--until", "data"),
        ("does not exist",),
    ),
    # checkpoints
    Case(
        "ckpt-not-found",
        "checkpoint",
        "`teacher.checkpoint` that does not exist",
        lambda d: _run(
            d,
            tiny_config(teacher={"model": tiny_config()["teacher"]["model"], "checkpoint": str(d / "nope.pt")}),
            "--until",
            "teacher",
        ),
        ("teacher.checkpoint", "nope.pt"),
    ),
    Case(
        "ckpt-wrong-arch",
        "checkpoint",
        "`teacher.checkpoint` saved from another architecture",
        _ckpt_wrong_arch,
        ("does not match the teacher architecture",),
    ),
    Case(
        "ckpt-pickled-code",
        "checkpoint",
        "`teacher.checkpoint` holding a pickled `os.system` call",
        _ckpt_pickled_code,
        ("weights_only",),
    ),
    # disk
    Case(
        "out-under-file",
        "resource",
        "`--out` below a regular file",
        _out_under_file,
        ("cannot create the run directory",),
    ),
    Case("out-read-only", "resource", "`--out` on a read-only tmpfs", _out_readonly, ("run directory",)),
    Case("out-disk-full", "resource", "`--out` on a 4 MiB tmpfs", _out_full_disk, ("MiB free",)),
    # bundles
    Case("bundle-checksum", "bundle", "a bundle whose model's last byte was changed", _bundle_tamper, ("sha256",)),
    Case("bundle-missing-file", "bundle", "a bundle whose model file was deleted", _bundle_missing, ("missing",)),
    Case(
        "bundle-newer-schema",
        "bundle",
        "manifest `schema_version: 99`",
        _manifest_edit(lambda m: m.update(schema_version=99)),
        ("schema",),
    ),
    Case(
        "bundle-bad-schema",
        "bundle",
        "manifest `labels: 'cat'` (not a list)",
        _manifest_edit(lambda m: m.update(labels="cat")),
        ("labels",),
    ),
    Case(
        "bundle-path-in-manifest",
        "bundle",
        "manifest listing the file `../../etc/passwd`",
        _manifest_edit(lambda m: m["files"].update({"../../etc/passwd": "0" * 64})),
        ("..",),
    ),
    Case("bundle-malformed-json", "bundle", "truncated manifest.json", _manifest_broken, ("not valid JSON",)),
    Case(
        "bundle-unlisted-model",
        "bundle",
        "an extra unlisted .onnx file in the bundle",
        _unlisted_model,
        ("not listed",),
    ),
    Case(
        "bundle-manifest-edited",
        "bundle",
        "manifest.json with its labels reversed (SHA256SUMS left as written)",
        _manifest_edit(lambda m: m.update(labels=m["labels"][::-1]), resum=False),
        ("'manifest.json' does not match",),
    ),
    Case("zip-slip-dotdot", "bundle", "zip entry `../evil.txt`", _zip_with("../evil.txt"), ("zip-slip",)),
    Case("zip-slip-absolute", "bundle", "zip entry `/tmp/evil.txt`", _zip_with("/tmp/evil.txt"), ("absolute",)),
    Case(
        "zip-symlink",
        "bundle",
        "zip entry that is a symlink to /etc/passwd",
        _zip_with("b/link", symlink=True),
        ("symbolic link",),
    ),
    Case("zip-garbage", "bundle", "random bytes named bundle.zip", _not_a_zip, ("not a readable zip",)),
    Case(
        "bundle-not-found",
        "bundle",
        "`verify` on a path that does not exist",
        lambda d: ["verify", str(d / "nope")],
        ("does not exist",),
    ),
    Case(
        "predict-tampered",
        "bundle",
        "`predict` with a tampered bundle (refused before loading)",
        _predict_tampered,
        ("sha256",),
    ),
    Case(
        "predict-not-image", "bundle", "`predict` on a text file named .png", _predict_not_image, ("cannot read image",)
    ),
]

IDS = [c.id for c in CASES]
assert len(set(IDS)) == len(IDS)
DEBUG_CASES = ["unknown-nested-key", "npz-missing-keys", "bundle-checksum"]


def _make_bundle(root: Path) -> None:
    import torch
    from PIL import Image

    from edgecompress.bundle import write_bundle

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 3)).eval()
    onnx_path = root / "art" / "model.onnx"
    onnx_path.parent.mkdir(parents=True)
    torch.onnx.export(
        model,
        (torch.zeros(1, 1, 8, 8),),
        str(onnx_path),
        input_names=["input"],
        output_names=["logits"],
        dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
        dynamo=False,
    )
    fields = {
        "model": {"format": "onnx", "precision": "fp32", "runtime": "onnxruntime"},
        "input_shape": [1, 8, 8],
        "preprocessing": {"mean": [0.5], "std": [0.25], "size": [8, 8], "channels": 1, "scale": 1 / 255},
        "labels": ["a", "b", "c"],
        "temperature": {"value": 1.0, "folded": True},
    }
    BUNDLE["dir"] = write_bundle(
        name="tiny", files=[onnx_path], model_file=onnx_path, manifest_fields=fields, out_dir=root / "bundles"
    )
    BUNDLE["image"] = root / "img.png"
    Image.fromarray(np.arange(64, dtype=np.uint8).reshape(8, 8)).save(BUNDLE["image"])


@pytest.fixture(scope="module")
def observed(tmp_path_factory: pytest.TempPathFactory) -> dict[str, subprocess.CompletedProcess | str]:
    """Run every case (3 at a time); a case whose setup cannot run here maps to a skip reason."""
    root = tmp_path_factory.mktemp("catalogue")
    _make_bundle(root)
    # the bundle must be good to begin with, through the same CLI
    good = cli("verify", str(BUNDLE["dir"]))
    assert good.returncode == 0 and good.stdout.startswith("ok:"), good.stderr
    argv: dict[str, list[str] | str] = {}
    for case in CASES:
        d = root / case.id
        d.mkdir()
        try:
            argv[case.id] = case.make(d)
        except _Skip as exc:
            argv[case.id] = str(exc)

    def go(cid: str) -> tuple[str, subprocess.CompletedProcess | str]:
        args = argv[cid]
        return cid, args if isinstance(args, str) else cli(*args)

    debug = {f"debug:{c}": ["--debug", *argv[c]] for c in DEBUG_CASES}
    argv.update(debug)
    with ThreadPoolExecutor(max_workers=3) as pool:
        results = dict(pool.map(go, list(argv)))
    for case in CASES:  # tidy the tmpfs mounts
        mnt = root / case.id / "mnt"
        if mnt.is_dir():
            subprocess.run(["umount", str(mnt)], capture_output=True)
    return results


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_bad_input_gets_one_line(case: Case, observed) -> None:
    res = observed[case.id]
    if isinstance(res, str):
        pytest.skip(res)
    line = one_error_line(res, case.code)
    for part in case.expect:
        assert part.lower() in line.lower(), f"{part!r} not in: {line}"
    record(case.group, case.id, case.given, "edgecompress " + res.args[3], str(res.returncode), line)


@pytest.mark.parametrize("cid", DEBUG_CASES)
def test_debug_shows_the_traceback(cid: str, observed) -> None:
    res = observed[f"debug:{cid}"]
    assert res.returncode != 0
    assert "Traceback (most recent call last)" in res.stderr
    assert "Error:" in res.stderr  # the exception class and its one-line message end the traceback


def test_catalogue_is_large_enough() -> None:
    assert len(CASES) >= 40


def test_no_injection_ran(observed) -> None:
    """Neither the ssh host option nor the pickled checkpoint executed anything."""
    assert not PWNED.exists()
