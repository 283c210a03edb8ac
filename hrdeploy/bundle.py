"""Bundle helpers that need the model zoo: rebuild the eager model a bundle was exported from."""

from __future__ import annotations

import os

from torch import nn

from hrdeploy.manifest import load_manifest


def eager_model_for_bundle(bundle: str | os.PathLike) -> nn.Module:
    """The upstream-form eager model of a bundle: same name, dataset and checkpoint (or seed)."""
    from hrdeploy.zoo import build_model

    m = load_manifest(bundle)["model"]
    return build_model(m["name"], dataset=m["dataset"], checkpoint=m.get("checkpoint"), seed=m.get("seed", 0))
