"""The bundle manifest (`manifest.json`) declared once with pydantic: export writes it, `Bundle` reads it.

Core sections are typed and bounded (model, input, outputs, keypoints, artifacts); the free sections
(rewrites, export, parity, eval, runtime, versions, ...) are JSON objects that stages record through the
bundle; `stages` holds the preset sections for later stages, typed by hrdeploy.presets. A manifest of the
previous format ("hrdeploy-bundle/1") is read with its defaults filled in and written back as the current one.

Mean/std are on the 0..1 scale of RGB pixels (hrdeploy.pose.preprocess divides uint8 pixels by 255).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, ValidationError, field_serializer, field_validator, model_validator

from hrdeploy.datasets import flip_index
from hrdeploy.errors import UserError
from hrdeploy.limits import MAX_BATCH, MAX_CHANNELS, MAX_INPUT_SIDE, MAX_SEED
from hrdeploy.presets import Stages
from hrdeploy.schema import Bool, Finite3, IndexPairs, Name, Positive3, Precision, bounded_int, describe

FORMAT = "hrdeploy-bundle/2"
FORMAT_V1 = "hrdeploy-bundle/1"
READABLE = (FORMAT, FORMAT_V1)
ENGINE_SUFFIXES = (".engine", ".plan", ".trt")
# Sections the bundle owns; Bundle.record_section cannot replace them.
CORE_SECTIONS = ("format", "model", "input", "outputs", "keypoints", "artifacts")


class _Section(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class ModelInfo(_Section):
    """What the bundle was exported from: registry name, dataset, checkpoint (or seeded weights)."""

    name: Name
    family: str = ""
    task: Name
    dataset: Name
    upstream: str | None = None
    checkpoint: Name | None = None
    seed: bounded_int(0, MAX_SEED) = 0


class InputSpec(_Section):
    """The model input: NCHW float32 of RGB pixels / 255, normalised with mean/std. `shape` names its dynamic
    dims ("batch", "height", "width"); left out, it is the static shape at height x width."""

    name: Name = "input"
    layout: Literal["NCHW"] = "NCHW"
    mean: Finite3
    std: Positive3
    height: bounded_int(1, MAX_INPUT_SIDE)
    width: bounded_int(1, MAX_INPUT_SIDE)
    dynamic_batch: Bool = False
    dynamic_shape: Bool = False
    stride: bounded_int(1, MAX_INPUT_SIDE) = 32
    shape: tuple[int | str, ...]

    @model_validator(mode="before")
    @classmethod
    def _default_shape(cls, data: Any) -> Any:
        if isinstance(data, dict) and "shape" not in data:
            batch = "batch" if data.get("dynamic_batch") is True else 1
            return {**data, "shape": [batch, 3, data.get("height"), data.get("width")]}
        return data

    @field_validator("shape", mode="before")
    @classmethod
    def _shape(cls, v: Any) -> Any:
        limits = (MAX_BATCH, 3, MAX_INPUT_SIDE, MAX_INPUT_SIDE)
        if (not isinstance(v, (list, tuple)) or len(v) != 4
                or any(isinstance(d, bool) or not (isinstance(d, str) or (isinstance(d, int) and 0 < d <= most))
                       for d, most in zip(v, limits, strict=True))):
            raise ValueError(f"must be 4 dims [N, 3, H, W], each a name or an integer in 1..{MAX_BATCH} (N), "
                             f"3 (C), 1..{MAX_INPUT_SIDE} (H, W), not {v!r}")
        return v

    @property
    def size(self) -> tuple[int, int]:
        """(height, width) the bundle was exported at."""
        return self.height, self.width

    @property
    def batch_range(self) -> tuple[int, int]:
        """(min, max) batch of the exported input: its static batch, or 1..MAX_BATCH when dynamic."""
        b = self.static_batch
        return (b, b) if b is not None else (1, MAX_BATCH)

    @property
    def static_batch(self) -> int | None:
        """The fixed batch of the exported input, None when it is dynamic."""
        b = self.shape[0]
        return b if isinstance(b, int) else None


class OutputSpec(_Section):
    name: Name
    stride: bounded_int(1, MAX_INPUT_SIDE) = 1
    channels: bounded_int(1, MAX_CHANNELS) = 1


class KeypointSpec(_Section):
    dataset: str = ""
    names: tuple[str, ...]
    flip_pairs: IndexPairs = ()
    skeleton: IndexPairs = ()

    @model_validator(mode="after")
    def _pairs_in_range(self) -> KeypointSpec:
        for key in ("flip_pairs", "skeleton"):
            if any(i >= len(self.names) for pair in getattr(self, key) for i in pair):
                raise ValueError(f"keypoints.{key} must be a list of [a, b] keypoint index pairs below "
                                 f"{len(self.names)}")
        return self

    @property
    def flip_index(self) -> list[int]:
        return flip_index(len(self.names), self.flip_pairs)


class ArtifactEntry(BaseModel):
    """One artifact: a file inside the bundle, its precision and sha256, plus what the stage that made it
    recorded (converter, calibration, validation, engine profiles, ...)."""

    model_config = ConfigDict(frozen=True, extra="allow")

    file: Name
    precision: Precision | None = None
    sha256: str | None = None
    size_bytes: int | None = None
    metadata: str | None = None
    profiles: list[Any] | None = None

    @field_validator("file")
    @classmethod
    def _file_kind(cls, v: str) -> str:
        if Path(v).is_absolute() or ".." in Path(v).parts:
            raise ValueError(f"{v!r} points outside the bundle; hrdeploy only reads files inside it")
        if artifact_kind(v) is None:
            raise ValueError(f"{v!r} is neither .onnx nor a TensorRT engine ({'/'.join(ENGINE_SUFFIXES)})")
        return v

    @property
    def details(self) -> dict[str, Any]:
        """What the making stage recorded besides the typed fields."""
        return dict(self.model_extra or {})


class Manifest(BaseModel):
    """The whole manifest. Unknown top-level sections are kept (free sections another version recorded)."""

    model_config = ConfigDict(frozen=True, extra="allow")

    format: Literal["hrdeploy-bundle/2"] = FORMAT
    model: ModelInfo
    input: InputSpec
    outputs: tuple[OutputSpec, ...]
    keypoints: KeypointSpec | None = None
    artifacts: dict[Name, ArtifactEntry] = {}
    rewrites: tuple[str, ...] = ()
    export: dict[str, Any] = {}
    stages: Stages = Stages()
    parity: dict[str, Any] = {}
    versions: dict[str, str] = {}

    @field_validator("outputs", mode="before")
    @classmethod
    def _outputs_list(cls, v: Any) -> Any:
        if not isinstance(v, (list, tuple)) or not v:
            raise ValueError("must be a non-empty list of {name, stride, channels}")
        return v

    @field_serializer("stages")
    def _given_stages(self, stages: Stages) -> dict[str, Any]:
        return {k: v for k in type(stages).model_fields if (v := getattr(stages, k).given())}

    def section(self, name: str, default: Any = None) -> Any:
        """Free section `name` (e.g. "export", "eval", "runtime"), or `default` when absent."""
        value = getattr(self, name, None) if name in type(self).model_fields else (self.model_extra or {}).get(name)
        return default if value is None else value

    def to_json(self) -> dict[str, Any]:
        """The manifest as JSON data (what manifest.json holds)."""
        return self.model_dump(mode="json")


def artifact_kind(file: str) -> str | None:
    """'engine' for a TensorRT plan, 'onnx' for an ONNX file, None otherwise."""
    suffix = Path(file).suffix
    return "engine" if suffix in ENGINE_SUFFIXES else "onnx" if suffix == ".onnx" else None


def _upgrade_v1(data: dict[str, Any], where: Path) -> dict[str, Any]:
    """A format-1 manifest as format 2: the input's `color` and `scale` dropped. Format 1 recorded RGB / 255,
    which preprocessing always feeds; any other value was never honoured, so it is refused, not dropped."""
    data = {**data, "format": FORMAT}
    inp = data.get("input")
    if isinstance(inp, dict):
        for key, assumed in (("color", "RGB"), ("scale", 255)):
            if inp.get(key, assumed) != assumed:
                raise UserError(f"{where}: input.{key} {inp[key]!r} is not supported: hrdeploy feeds RGB pixels / 255 "
                                f"(re-export with `hrdeploy export MODEL -o {where.parent} --force`)")
        data["input"] = {k: v for k, v in inp.items() if k not in ("color", "scale")}
    return data


def parse_manifest(data: dict[str, Any], where: Path) -> Manifest:
    """`data` (a manifest.json object, format 1 or 2) as a Manifest; any problem is one UserError line."""
    fmt = data.get("format")
    if fmt not in READABLE:
        raise UserError(f"{where} is not an hrdeploy manifest (format {fmt!r}, expected {FORMAT!r} or {FORMAT_V1!r})"
                        f"; re-create the bundle with `hrdeploy export MODEL -o {where.parent} --force`")
    if fmt == FORMAT_V1:
        data = _upgrade_v1(data, where)
    try:
        return Manifest.model_validate(data)
    except ValidationError as err:
        problem = describe(err.errors()[0], sections=("stages",))
        raise UserError(f"{where}: {problem}; the manifest is damaged, re-create the bundle with "
                        f"`hrdeploy export MODEL -o {where.parent} --force`") from None

