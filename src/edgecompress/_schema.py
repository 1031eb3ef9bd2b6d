"""The base of every config model: strict (unknown keys rejected) and frozen."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class StrictModel(BaseModel):
    """Pydantic base for config sections: ``extra="forbid"``, frozen, validated defaults."""

    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True, protected_namespaces=())
