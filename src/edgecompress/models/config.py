"""Model specification: a built-in family with params, or a "package.module:function" factory (pydantic + stdlib)."""

from __future__ import annotations

import re
from typing import Any

from pydantic import Field, model_validator

from edgecompress._schema import StrictModel

# The shape of a factory reference. A format check only: what may be imported is decided by the trust list given to
# build_model (config trust_factories / --trust-factory), never by this pattern.
_FACTORY_RE = re.compile(r"^[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*:[A-Za-z_][\w]*$")

OutputSelector = int | str | None
"""Which element of a tuple/list/dict/namedtuple model output holds the logits: an index or a key/field name."""


class ModelSpec(StrictModel):
    """An architecture: exactly one of ``family`` (built-in, see ``edgecompress.models.FAMILIES``) or ``factory``.

    A factory is called with those of ``num_classes=``, ``in_channels=``, ``input_size=`` and ``params`` that its
    signature accepts, and must return an ``nn.Module``; it is imported only from a module the user trusts.
    """

    family: str | None = Field(
        None,
        description="Built-in family: cnn, resnet, mlp; at 224x224 in torchvision's layout: resnet18, mobilenet_v2, "
        "mobilenet_v3_small, efficientnet_b0.",
    )
    params: dict[str, Any] = Field(default_factory=dict, description="Keyword arguments of the family or factory.")
    factory: str | None = Field(
        None, description="'package.module:function' returning an nn.Module; the module must be in trust_factories."
    )
    output: OutputSelector = Field(
        None, description="For a model returning a tuple/list/dict: the index or key of the logits (e.g. 0, 'logits')."
    )

    @model_validator(mode="after")
    def _one_source(self) -> ModelSpec:
        if (self.family is None) == (self.factory is None):
            raise ValueError("give exactly one of model.family (e.g. 'resnet') or model.factory ('pkg.mod:fn')")
        if self.factory is not None and not _FACTORY_RE.match(self.factory):
            raise ValueError(f"model.factory must look like 'package.module:function', got {self.factory!r}")
        return self

    def describe(self) -> str:
        """Short human-readable name, e.g. ``resnet(depth=20)``."""
        args = ", ".join(f"{k}={v}" for k, v in sorted(self.params.items()))
        return f"{self.family or self.factory}({args})"
