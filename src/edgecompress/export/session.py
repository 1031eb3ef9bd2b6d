"""What one ``export_all`` call shares between exporters: the base ONNX, the chosen INT8 ONNX, PyTorch references."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from edgecompress.errors import ExportError
from edgecompress.export import int8_choice
from edgecompress.export import onnx_export as ox
from edgecompress.export.artifact import run_artifact
from edgecompress.export.config import ExportConfig
from edgecompress.export.contract import ExportContract


class ExportSession:
    """Inputs of one export call and the intermediate models several formats reuse (each made at most once).

    A shared step that failed (e.g. the base ONNX for a model the converter refuses) fails every format that needs
    it with the same error, without being tried again.
    """

    def __init__(
        self,
        model: Any,
        contract: ExportContract,
        cfg: ExportConfig,
        calib_x: np.ndarray | None,
        val_x: np.ndarray | None,
        val_y: np.ndarray | None,
        metadata: dict[str, str],
        work: Path,
    ) -> None:
        self.model, self.contract, self.cfg, self.work = model, contract, cfg, work
        self.calib_x, self.val_x, self.val_y = calib_x, val_x, val_y
        self.metadata = metadata
        self._cache: dict[str, Any] = {}
        self._failed: dict[str, BaseException] = {}

    def torch_logits(self, x: np.ndarray, batch: int = 256) -> np.ndarray:
        """PyTorch outputs (with the contract's softmax head, if any) on ``x``, float32, ``batch`` samples at a time."""
        import torch

        model = ox._with_output_head(self.model, self.contract)
        with ox.eval_mode(model), torch.no_grad():
            out = [model(torch.from_numpy(np.ascontiguousarray(x[i : i + batch]))) for i in range(0, len(x), batch)]
        return torch.cat(out).numpy().astype(np.float32)

    def once(self, key: str, fn: Callable[[], Any]) -> Any:
        """``fn()`` the first time ``key`` is asked for; its result (or its exception) every later time."""
        if key in self._failed:
            raise self._failed[key]
        if key not in self._cache:
            try:
                self._cache[key] = fn()
            except Exception as exc:
                self._failed[key] = exc
                raise
        return self._cache[key]

    def require_calib(self, name: str) -> np.ndarray:
        """The calibration images, or an ExportError naming the format that needs them."""
        if self.calib_x is None or len(self.calib_x) == 0:
            raise ExportError(f"{name} needs calibration samples (calib_x is empty)", "give the data a calib split")
        return self.calib_x

    def base_onnx(self) -> Path:
        """The FP32 ONNX every ONNX-based format starts from."""

        def make() -> Path:
            path = self.work / "base.onnx"
            info = ox.export_onnx(self.model, self.contract, path, simplify=self.cfg.simplify, metadata=self.metadata)
            self._cache["base_info"] = info
            return path

        return self.once("base_onnx", make)

    def base_info(self) -> dict[str, Any]:
        return dict(self._cache.get("base_info", {}))

    def scorer(self) -> tuple[Callable, np.ndarray, str]:
        """Scorer for INT8 candidates: labels on val when given, else fidelity to FP32 on calibration images."""

        def make() -> tuple[Callable, np.ndarray, str]:
            if self.val_x is not None and self.val_y is not None:
                scorer = int8_choice.label_scorer(self.val_y, probabilities=self.contract.output_probabilities)
                return scorer, self.val_x, "val"
            x = self.require_calib("int8")[:256]
            return int8_choice.fidelity_scorer(self.torch_logits(x)), x, "fp32-fidelity-on-calib"

        return self.once("scorer", make)

    def choose_int8(self, build: Callable[[str, bool], tuple[Path, dict]], runtime: str) -> tuple[Path, dict]:
        """Quantize with each configured calibration setting (``build(method, keep_head_float)``), run every
        candidate in ``runtime`` on the scoring data, keep the best; returns the chosen file and its info + record."""
        scorer, x, data = self.scorer()
        chosen, record = int8_choice.choose_int8(
            build,
            lambda cand: run_artifact(runtime, cand[0], x)[0],
            scorer,
            method=self.cfg.int8_calibration,
            keep_head_float=self.cfg.keep_head_float,
        )
        return chosen[0], {**chosen[1], "selection": record, "selection_data": data}

    def int8_onnx(self) -> tuple[Path, dict]:
        """The INT8 QDQ ONNX chosen among calibration methods (ONNX, ORT and TensorRT's explicit-quantization file)."""

        def make() -> tuple[Path, dict]:
            base = self.base_onnx()
            calib = self.require_calib("onnx int8")

            def build(method: str, head: bool) -> tuple[Path, dict]:
                path = self.work / f"int8-{method}-{'headfloat' if head else 'full'}.onnx"
                keep_stem = self.cfg.keep_stem_float
                return path, ox.quantize_int8(
                    base, path, calib, method=method, keep_head_float=head, keep_stem_float=keep_stem
                )

            return self.choose_int8(build, "onnxruntime")

        return self.once("int8_onnx", make)
