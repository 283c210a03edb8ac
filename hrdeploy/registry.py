"""Model registry: one ModelSpec per architecture name, registered by decorator next to its builder.

Model files in hrdeploy/models/ use `@register_model(...)`; `get_spec(name)` imports them on first use.
"""

from __future__ import annotations

import difflib
import importlib
import pkgutil
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from hrdeploy.datasets import IMAGENET_MEAN, IMAGENET_STD, KEYPOINT_SETS, KeypointSet
from hrdeploy.errors import UserError

TASKS = ("pose_topdown", "pose_bottomup", "segmentation", "detection_neck")


@dataclass(frozen=True)
class Published:
    """A figure from an upstream README or paper, with where it was read."""

    input_size: tuple[int, int]
    params: float | None = None  # count (e.g. 1.1e6)
    macs: float | None = None  # multiply-accumulates as the source counted them
    metric: str | None = None  # e.g. "COCO val AP .648"
    source: str = ""


@dataclass(frozen=True)
class ModelSpec:
    name: str
    family: str
    task: str
    builder: Callable[..., Any]  # builder(num_outputs) -> nn.Module
    default_input_size: tuple[int, int]  # (h, w) for the default dataset
    datasets: tuple[str, ...] = ("coco",)
    input_sizes: dict[str, tuple[int, int]] = field(default_factory=dict)  # per-dataset defaults
    stride: int = 32  # input H and W must divide by this
    output_names: tuple[str, ...] = ("heatmaps",)
    output_strides: tuple[int, ...] = (4,)
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    num_classes: int | None = None  # segmentation / detection outputs, else keypoints of the dataset
    published: tuple[Published, ...] = ()
    upstream: str = ""  # the upstream file the reference network follows

    @property
    def is_pose(self) -> bool:
        return self.task.startswith("pose")

    def input_size(self, dataset: str | None = None) -> tuple[int, int]:
        return self.input_sizes.get(dataset or self.datasets[0], self.default_input_size)

    def keypoint_set(self, dataset: str | None = None) -> KeypointSet | None:
        if not self.is_pose:
            return None
        return KEYPOINT_SETS[dataset or self.datasets[0]]

    def num_outputs(self, dataset: str | None = None) -> int:
        kps = self.keypoint_set(dataset)
        if kps is not None:
            return kps.num_keypoints
        assert self.num_classes is not None
        return self.num_classes


_REGISTRY: dict[str, ModelSpec] = {}
_LOADED = False


def register_model(**fields: Any) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorator: register `builder(num_outputs)` under `fields['name']` (default: its __name__)."""

    def wrap(builder: Callable[..., Any]) -> Callable[..., Any]:
        name = fields.pop("name", builder.__name__)
        if name in _REGISTRY:
            raise ValueError(f"model {name!r} registered twice")
        spec = ModelSpec(name=name, builder=builder, **fields)
        if spec.task not in TASKS:
            raise ValueError(f"{name}: unknown task {spec.task!r}")
        _REGISTRY[name] = spec
        return builder

    return wrap


def _load_all() -> None:
    global _LOADED
    if _LOADED:
        return
    import hrdeploy.models as models_pkg

    for info in pkgutil.iter_modules(models_pkg.__path__):
        importlib.import_module(f"hrdeploy.models.{info.name}")
    _LOADED = True


def list_models() -> list[str]:
    """Names of every registered model, sorted."""
    _load_all()
    return sorted(_REGISTRY)


def get_spec(name: str) -> ModelSpec:
    """The spec of `name`; an unknown name is a UserError that suggests close matches."""
    _load_all()
    if name in _REGISTRY:
        return _REGISTRY[name]
    close = difflib.get_close_matches(name, _REGISTRY, n=3, cutoff=0.5)
    hint = f"did you mean {', '.join(close)}?" if close else "run `hrdeploy list` to see the names"
    raise UserError(f"unknown model {name!r}; {hint}")
