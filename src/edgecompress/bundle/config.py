"""Configuration of the ``bundle`` stage (pydantic + stdlib only, so ``edgecompress.config`` stays light)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from edgecompress._schema import StrictModel


class BundleConfig(StrictModel):
    """One app bundle per selected target artifact: model files, manifest, checksums and an optional runner."""

    enabled: bool = Field(True, description="Write bundles at the end of the run.")
    zip: bool = Field(True, description="Also write a deterministic <name>.zip beside each bundle folder.")
    include_runner: bool = Field(
        True, description="Put a standalone run.py + requirements.txt in the bundle showing how to run the model."
    )
    targets: list[str] | Literal["all"] = Field(
        "all",
        description="Artifacts to bundle: 'all', or a list of artifact names, 'format:precision' specs or formats.",
    )

    @field_validator("targets", mode="before")
    @classmethod
    def _one_target(cls, value: object) -> object:
        if isinstance(value, str) and value != "all":
            return [value]
        return value

    @field_validator("targets")
    @classmethod
    def _check_targets(cls, value: list[str] | str) -> list[str] | str:
        if isinstance(value, list):
            if not value:
                raise ValueError("targets is empty; give 'all' or at least one artifact name")
            bad = [t for t in value if not t.strip()]
            if bad:
                raise ValueError("targets contains an empty name")
        return value

    def selects(self, name: str, fmt: str | None = None, precision: str | None = None) -> bool:
        """True when the artifact ``name`` (of ``fmt``/``precision``) is one of the targets to bundle."""
        if self.targets == "all":
            return True
        keys = {name}
        if fmt:
            keys.add(fmt)
            if precision:
                keys.add(f"{fmt}:{precision}")
        return bool(keys.intersection(self.targets))
