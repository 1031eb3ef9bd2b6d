"""edgecompress.bundle: app bundles (model files, manifest with checksums, runner), verifying and loading them.

Names load lazily so that ``import edgecompress.bundle`` stays light (no numpy, no runtimes).
"""

from __future__ import annotations

from edgecompress._lazy import lazy_exports

_EXPORTS = {
    "BundleConfig": "edgecompress.bundle.config",
    "Manifest": "edgecompress.bundle.manifest",
    "SCHEMA_VERSION": "edgecompress.bundle.manifest",
    "parse_manifest": "edgecompress.bundle.manifest",
    "write_bundle": "edgecompress.bundle.writer",
    "zip_bundle": "edgecompress.bundle.writer",
    "verify_bundle": "edgecompress.bundle.verify",
    "safe_extract": "edgecompress.bundle.verify",
    "sign_bundle": "edgecompress.bundle.sign",
    "verify_signature": "edgecompress.bundle.sign",
    "load_bundle": "edgecompress.bundle.predict",
    "predict_images": "edgecompress.bundle.predict",
    "Predictor": "edgecompress.bundle.predict",
}
__all__ = sorted(_EXPORTS)

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
