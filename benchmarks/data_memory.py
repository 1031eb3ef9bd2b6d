"""Peak memory of ``edgecompress.data.load_splits`` on RGB 3x96x96 images, against the size of the data as uint8.

Issue 14 item 6: loading must not need the float32 (or float64) copy of the dataset; the goal is a peak RSS within
2x of the uint8 size at 10k and 50k images. The images are real: Fashion-MNIST (``/usr/share/datasets/fashion-mnist``,
``apt-get install dataset-fashion-mnist``) upscaled 28 -> 96 (bilinear) and tinted to RGB with a random colour per
image, written as an ``.npz`` of uint8 NHWC arrays (streamed, so the writer never holds the whole array) or, for
``--folder``, as a folder of PNGs (one sub-folder per class).

Each measurement runs in a fresh child process; the peak is the kernel's high-water mark of that process's resident
set (``VmHWM`` in ``/proc/self/status``; ``ru_maxrss`` where there is no /proc — on Linux ``ru_maxrss`` of a spawned
child starts at the parent's peak, so it is not used there), no psutil. The child imports, loads the splits
(``data.calib_size`` min(512, n/10), seed 0), then reads every train batch once through ``split.x`` (what a
training epoch does). ``--baseline-src DIR`` measures another source tree the same way, e.g. the
code before this change: ``git archive 9b9023c src | tar -x -C /tmp/ec-before`` then ``--baseline-src
/tmp/ec-before/src``.

    PYTHONPATH=src python -m benchmarks.data_memory                       # 10k and 50k images, ~3 min
    PYTHONPATH=src python benchmarks/data_memory.py --counts 2000 --folder 2000
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

SIZE = 96
FASHION = Path("/usr/share/datasets/fashion-mnist")


def _fashion(n: int) -> tuple[np.ndarray, np.ndarray]:
    from edgecompress.data.fashion import load_fashion_mnist

    x, y, xt, yt = load_fashion_mnist(FASHION if FASHION.is_dir() else None, allow_download=False)
    x, y = np.concatenate([x, xt]), np.concatenate([y, yt])
    if n > len(x):
        raise SystemExit(f"at most {len(x)} Fashion-MNIST images, asked for {n}")
    return x[:n], y[:n]


def _rgb96(gray: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Upscale 28x28 gray images to 96x96 (bilinear) and tint each with a random colour: ``[n, 96, 96, 3]`` uint8."""
    from PIL import Image

    up = np.stack([np.asarray(Image.fromarray(g).resize((SIZE, SIZE), Image.BILINEAR)) for g in gray])
    tint = rng.uniform(0.35, 1.0, (len(gray), 1, 1, 3)).astype(np.float32)
    return np.rint(up[..., None] * tint).astype(np.uint8)


def write_npz(path: Path, n: int, *, chunk: int = 500, seed: int = 0) -> int:
    """Write ``x_train`` ``[n, 96, 96, 3]`` uint8 and ``y_train`` into an uncompressed .npz, chunk by chunk.

    Returns:
        The size of the image array in bytes.
    """
    gray, y = _fashion(n)
    rng = np.random.default_rng(seed)
    header = {"descr": np.dtype(np.uint8).str, "fortran_order": False, "shape": (n, SIZE, SIZE, 3)}
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED, allowZip64=True) as zf:
        with zf.open("x_train.npy", "w", force_zip64=True) as fh:
            np.lib.format.write_array_header_2_0(fh, header)
            for i in range(0, n, chunk):
                fh.write(_rgb96(gray[i : i + chunk], rng).tobytes())
        with zf.open("y_train.npy", "w") as fh:
            np.lib.format.write_array(fh, y.astype(np.int64))
    return n * SIZE * SIZE * 3


def write_folder(root: Path, n: int, *, seed: int = 0) -> int:
    """Write ``n`` RGB PNGs as ``root/<class>/<i>.png``; returns the uint8 size of the images."""
    from PIL import Image

    from edgecompress.data.fashion import CLASSES

    gray, y = _fashion(n)
    rng = np.random.default_rng(seed)
    for k in range(len(CLASSES)):
        (root / f"c{k}").mkdir(parents=True, exist_ok=True)
    for i in range(0, n, 500):
        for j, img in enumerate(_rgb96(gray[i : i + 500], rng)):
            Image.fromarray(img, "RGB").save(root / f"c{y[i + j]}" / f"{i + j:06d}.png", compress_level=1)
    return n * SIZE * SIZE * 3


def peak_rss() -> int:
    """This process's peak resident set in bytes (``VmHWM``; ``ru_maxrss`` without /proc)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def child(kind: str, path: str, calib: int) -> dict[str, Any]:
    """Runs inside the measured process: load, read one epoch of batches, report the peak RSS."""
    import edgecompress.data as data_pkg
    from edgecompress.data import DataConfig, load_splits

    base = peak_rss()
    t0 = time.perf_counter()
    splits = load_splits(DataConfig(dataset=kind, path=Path(path), calib_size=calib), seed=0)
    load_s = time.perf_counter() - t0
    after_load = peak_rss()
    train = splits.train
    checksum = 0.0
    for i in range(0, len(train.y), 256):  # one epoch of batches, as the trainer reads them
        checksum += float(np.asarray(train.x[i : i + 256])[:, :, 0, 0].sum())
    peak = peak_rss()
    raw = getattr(train, "raw", None)
    return {
        "source": str(Path(data_pkg.__file__).parent),
        "sizes": splits.sizes(),
        "stored_dtype": str(raw.dtype if raw is not None else np.asarray(train.x[:1]).dtype),
        "baseline_rss": base,
        "after_load_rss": after_load,
        "peak_rss": peak,
        "load_s": round(load_s, 2),
        "checksum": checksum,
    }


def measure(kind: str, path: Path, n: int, src: str | None) -> dict[str, Any]:
    """One fresh child process; ``src`` replaces PYTHONPATH (another source tree) when given."""
    env = dict(os.environ, OMP_NUM_THREADS="1")
    if src is not None:
        env["PYTHONPATH"] = src
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", kind, str(path), str(min(512, n // 10))]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)  # noqa: S603 (own script)
    if out.returncode != 0:
        return {"error": (out.stderr.strip().splitlines() or ["failed"])[-1], "exit": out.returncode}
    return json.loads(out.stdout.strip().splitlines()[-1])


def _gb(v: float) -> str:
    return f"{v / 1e9:.2f} GB"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--counts", default="10000,50000", help="image counts for the .npz measurement")
    p.add_argument("--folder", type=int, default=0, help="also measure a folder of this many PNGs (0 = off)")
    p.add_argument("--baseline-src", default=None, help="another source tree to measure the same way (before/after)")
    p.add_argument("--baseline-max", type=int, default=10000, help="largest count measured with --baseline-src")
    p.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    p.add_argument("--child", nargs=3, metavar=("KIND", "PATH", "CALIB"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        print(json.dumps(child(args.child[0], args.child[1], int(args.child[2]))))
        return 0
    rows = []
    with tempfile.TemporaryDirectory(prefix="ec-datamem-") as tmp:
        cases = [("npz", int(c)) for c in args.counts.split(",") if c.strip()]
        cases += [("folder", args.folder)] if args.folder else []
        for kind, n in cases:
            path = Path(tmp) / (f"rgb96-{n}.npz" if kind == "npz" else f"rgb96-{n}")
            t0 = time.perf_counter()
            uint8 = write_npz(path, n) if kind == "npz" else write_folder(path, n)
            print(f"wrote {n} images ({_gb(uint8)} as uint8) in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
            sources = [("this tree", None)]
            if args.baseline_src and n <= args.baseline_max:
                sources.append(("baseline", args.baseline_src))
            for label, src in sources:
                r = measure(kind, path, n, src)
                r.update({"kind": kind, "images": n, "uint8_bytes": uint8, "code": label})
                if "peak_rss" in r:
                    r["ratio"] = round(r["peak_rss"] / uint8, 2)
                rows.append(r)
                print(json.dumps(r), file=sys.stderr)
            if kind == "npz":
                path.unlink()
    print("| source | images | code | stored as | uint8 size | peak RSS | peak / uint8 | import baseline | load s |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        if "error" in r:
            print(
                f"| {r['kind']} | {r['images']} | {r['code']} | — | {_gb(r['uint8_bytes'])} | failed: {r['error']} |||"
            )
            continue
        print(
            f"| {r['kind']} | {r['images']:,} | {r['code']} | {r['stored_dtype']} | {_gb(r['uint8_bytes'])} | "
            f"{_gb(r['peak_rss'])} | {r['ratio']:.2f}x | {_gb(r['baseline_rss'])} | {r['load_s']} |"
        )
    if args.out is not None:
        from edgecompress._io import atomic_write_json

        atomic_write_json(args.out, {"rows": rows, "python": sys.version.split()[0], "numpy": np.__version__})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
