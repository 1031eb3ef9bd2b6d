"""Load a verified bundle and predict calibrated probabilities through the bundle's runtime."""

from __future__ import annotations

import logging
import shutil
import tempfile
import threading
from pathlib import Path
from typing import Any

import numpy as np

from edgecompress._contain import contained
from edgecompress.bundle.inputs import _match_channels, check_regular, load_image, to_contract
from edgecompress.bundle.manifest import Manifest
from edgecompress.bundle.verify import check_bundle_path, find_bundle_root, safe_extract, verify_dir
from edgecompress.errors import BundleError, DataError, ResourceError

log = logging.getLogger(__name__)

DEFAULT_TIME_LIMIT_S = 120.0


class PredictTimeout(ResourceError):
    """The model did not finish within the time limit. ``stuck`` is True when its runtime could not be stopped (the
    call still runs in a background thread; a command-line tool should exit)."""

    def __init__(self, problem: str, fix: str, *, stuck: bool) -> None:
        super().__init__(problem, fix)
        self.stuck = stuck


def run_with_limit(runtime: Any, x: np.ndarray, limit_s: float | None) -> np.ndarray:
    """``runtime.run(x)`` in a worker thread, waited for at most ``limit_s`` seconds (None: no limit).

    A graph can loop for ever (an ONNX ``Loop`` of 10^15 iterations): past the limit the run is cancelled where the
    runtime can stop it (ONNX Runtime's terminate flag) and :class:`PredictTimeout` is raised either way.
    """
    if limit_s is None:
        return np.asarray(runtime.run(x))
    box: dict[str, Any] = {}

    def work() -> None:
        try:
            box["out"] = np.asarray(runtime.run(x))
        except BaseException as exc:  # re-raised in the caller's thread
            box["exc"] = exc

    worker = threading.Thread(target=work, name="edgecompress-predict", daemon=True)
    worker.start()
    worker.join(limit_s)
    if worker.is_alive():
        cancel = getattr(runtime, "cancel", None)
        if callable(cancel):
            cancel()
            worker.join(5.0)
        raise PredictTimeout(
            f"the model did not finish within {limit_s:g} s (an endless loop in its graph, or far too slow here)",
            "check the bundle's model, or allow more time (--time-limit)",
            stuck=worker.is_alive(),
        )
    if "exc" in box:
        raise box["exc"]
    return box["out"]


def _get_runtime(name: str) -> Any:
    """The runtime object for ``name`` (``edgecompress.devices.host_runtimes``, errors already user-facing)."""
    from edgecompress.devices.host_runtimes import get_runtime

    return get_runtime(name)


def softmax(z: np.ndarray) -> np.ndarray:
    """Row-wise softmax, numerically stable."""
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


class Predictor:
    """A loaded bundle: ``preprocess`` images, ``predict`` probabilities. Use as a context manager or ``close()``."""

    def __init__(
        self,
        manifest: Manifest,
        bundle_dir: Path,
        runtime: Any,
        tmpdir: Path | None = None,
        *,
        time_limit_s: float | None = DEFAULT_TIME_LIMIT_S,
    ) -> None:
        self.manifest = manifest
        self.bundle_dir = bundle_dir
        self.runtime = runtime
        self.time_limit_s = time_limit_s
        self._tmpdir = tmpdir

    @property
    def labels(self) -> list[str]:
        return list(self.manifest.labels)

    def close(self) -> None:
        """Remove the temporary folder a zipped bundle was extracted to."""
        if self._tmpdir is not None:
            shutil.rmtree(self._tmpdir, ignore_errors=True)
            self._tmpdir = None

    def __enter__(self) -> Predictor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        self.close()

    def _check_input(self, x: Any) -> np.ndarray:
        contract = self.manifest.model.input
        want = "[" + ", ".join(str(d) for d in contract.shape) + "]"
        if not isinstance(x, np.ndarray):
            raise DataError(f"predict expects a numpy array {want}, got {type(x).__name__}", "pass np.ndarray input")
        if not np.issubdtype(x.dtype, np.floating):
            raise DataError(
                f"predict expects {contract.dtype} input {want}, got {x.dtype}",
                "convert raw images with Predictor.preprocess(images) first",
            )
        if x.ndim != len(contract.shape):
            fix = "add a batch axis: x[None]" if x.ndim == len(contract.shape) - 1 else f"reshape the input to {want}"
            raise DataError(f"input has shape {list(x.shape)}, the model expects {want} ({contract.layout})", fix)
        for axis, (got, dim) in enumerate(zip(x.shape[1:], contract.shape[1:], strict=True), start=1):
            if isinstance(dim, int) and got != dim:
                raise DataError(
                    f"input has shape {list(x.shape)}, the model expects {want} ({contract.layout}): axis {axis} is "
                    f"{got}, not {dim}",
                    "resize/convert the images with Predictor.preprocess, or check the channel order",
                )
        if x.shape[0] == 0:
            raise DataError("input batch is empty", "pass at least one sample")
        return np.ascontiguousarray(x, dtype=np.dtype(contract.dtype))

    def _run(self, x: np.ndarray) -> np.ndarray:
        batch = self.manifest.model.input.shape[0]
        if not isinstance(batch, int) or batch == x.shape[0]:
            return run_with_limit(self.runtime, x, self.time_limit_s)
        outs = []  # a fixed-batch model: run in chunks of its batch size, padding the last one
        for start in range(0, x.shape[0], batch):
            chunk = x[start : start + batch]
            n = chunk.shape[0]
            if n < batch:
                chunk = np.concatenate([chunk, np.repeat(chunk[-1:], batch - n, axis=0)])
            outs.append(run_with_limit(self.runtime, chunk, self.time_limit_s)[:n])
        return np.concatenate(outs)

    def predict(self, x: np.ndarray) -> np.ndarray:
        """Class probabilities ``[N, K]`` (float32, rows sum to 1) for a normalized input batch.

        Applies the temperature when it is not folded into the model, and softmax when the model outputs logits.

        Raises:
            DataError: the input's type, dtype or shape does not match the manifest's input contract.
            BundleError: the model's output does not match the labels, or holds NaN or infinite values.
            PredictTimeout: the model ran longer than ``time_limit_s``.
        """
        out = self._run(self._check_input(x)).astype(np.float64)
        k = len(self.manifest.labels)
        if out.ndim != 2 or out.shape[1] != k:
            raise BundleError(
                f"the model returned shape {list(out.shape)}, the manifest lists {k} labels",
                "rebuild the bundle; its labels and model do not match",
            )
        bad = ~np.isfinite(out).all(axis=1)
        if bad.any():
            raise BundleError(
                f"the model returned NaN or infinite outputs for {int(bad.sum())} of {len(out)} input(s) (first: "
                f"#{int(np.argmax(bad))}); no probability can be given",
                "check that the input matches the bundle's preprocessing; if it does, the model is broken: rebuild it",
            )
        if self.manifest.model.output.kind == "logits":
            if not self.manifest.temperature.folded and self.manifest.temperature.value:
                out = out / self.manifest.temperature.value
            out = softmax(out)
        return out.astype(np.float32)

    def preprocess(self, images: list[np.ndarray] | np.ndarray) -> np.ndarray:
        """Turn raw images (each ``HxW`` or ``HxWxC``, already at the model's size) into the model input.

        Values are brought to the manifest's input contract first (:func:`edgecompress.bundle.inputs.to_contract`:
        uint8 as 8-bit, uint16 as 16-bit, floats as already in ``value_range``), then ``(raw * scale - mean) / std``
        per channel in the manifest's layout. Grayscale images are repeated to 3 channels for RGB models; RGB images
        are averaged for 1-channel models. Use :meth:`predict_images` for files of any size.
        """
        pre = self.manifest.preprocessing
        if isinstance(images, np.ndarray) and images.ndim in (2, 3) and (images.ndim == 2 or images.shape[-1] <= 4):
            images = [images]
        batch = []
        for img in images:
            a = np.asarray(img)
            if a.ndim == 2:
                a = a[:, :, None]
            if a.ndim != 3:
                raise DataError(f"image has shape {list(a.shape)}", "give HxW or HxWxC images")
            if tuple(a.shape[:2]) != tuple(pre.size):
                raise DataError(
                    f"image is {a.shape[0]}x{a.shape[1]}, the model expects {pre.size[0]}x{pre.size[1]} (HxW)",
                    "resize it first, or use predict_images(paths) which resizes",
                )
            batch.append(_match_channels(to_contract(a, pre, source="image"), pre.channels))
        x: np.ndarray = np.stack(batch) * np.float32(pre.scale)
        x = (x - np.asarray(pre.mean, np.float32)) / np.asarray(pre.std, np.float32)
        if pre.layout == "NCHW":
            x = x.transpose(0, 3, 1, 2)
        return np.ascontiguousarray(x, dtype=np.float32)

    def load_images(self, paths: list[Path]) -> list[np.ndarray]:
        """Read image files (8- or 16-bit, any format Pillow reads) or ``.npy`` arrays as float32 ``HxWxC`` in the
        input contract's units, in the model's colour mode and size (:mod:`edgecompress.bundle.inputs`)."""
        return [load_image(Path(p), self.manifest.preprocessing) for p in paths]

    def predict_images(self, paths: list[Path], *, top_k: int = 5) -> list[dict[str, Any]]:
        """Predict image files; each result is ``{"image", "top": [{"label", "index", "probability"}]}``."""
        paths = [Path(p) for p in paths]
        if top_k < 1:
            raise DataError(f"top_k is {top_k}", "give at least 1")
        for p in paths:  # all refused before any is opened (a FIFO blocks its reader)
            check_regular(p)
        probs = self.predict(self.preprocess(self.load_images(paths)))
        results = []
        for path, row in zip(paths, probs, strict=True):
            top = np.argsort(-row, kind="stable")[:top_k]
            results.append(
                {
                    "image": str(path),
                    "top": [{"label": self.labels[i], "index": int(i), "probability": float(row[i])} for i in top],
                }
            )
        return results


def load_bundle(
    path: Path, *, threads: int | None = None, time_limit_s: float | None = DEFAULT_TIME_LIMIT_S
) -> Predictor:
    """Verify a bundle (folder or ``.zip``), then load its model with its runtime.

    ``time_limit_s`` bounds each model call of :meth:`Predictor.predict` (None: no limit).

    Raises:
        BundleError: the bundle fails verification (see :func:`edgecompress.bundle.verify.verify_bundle`).
        MissingExtraError / DeviceError: the runtime is not installed or cannot load the model.
    """
    path = Path(path)
    check_bundle_path(path)
    tmpdir = None
    if path.is_dir():
        root = find_bundle_root(path)
    else:
        tmpdir = Path(tempfile.mkdtemp(prefix="edgecompress-bundle-"))
        try:
            root = find_bundle_root(safe_extract(path, tmpdir / "x"))
        except BaseException:
            shutil.rmtree(tmpdir, ignore_errors=True)
            raise
    try:
        manifest = verify_dir(root)
        runtime = _get_runtime(manifest.model.runtime)
        model_file = contained(
            root,
            manifest.model.file,
            what="manifest.json model.file",
            error=BundleError,
            fix="rebuild the bundle with edgecompress, or use the original",
            label="the bundle",
        )
        runtime.load(model_file, threads=threads)
    except BaseException:
        if tmpdir is not None:
            shutil.rmtree(tmpdir, ignore_errors=True)
        raise
    log.info(
        "loaded bundle %s (%s %s via %s)", root, manifest.model.format, manifest.model.precision, manifest.model.runtime
    )
    return Predictor(manifest, root, runtime, tmpdir, time_limit_s=time_limit_s)


def predict_images(
    bundle: Path, paths: list[Path], *, top_k: int = 5, time_limit_s: float | None = DEFAULT_TIME_LIMIT_S
) -> list[dict[str, Any]]:
    """Load ``bundle`` and predict the image files (what ``edgecompress predict BUNDLE IMAGE...`` calls)."""
    with load_bundle(bundle, time_limit_s=time_limit_s) as predictor:
        return predictor.predict_images(paths, top_k=top_k)
