"""The bundle: one model's artifacts in a folder, described by `manifest.json`, opened as a typed object.

`Bundle.open(path)` validates the manifest once against its schema (format version, required sections,
field types) and resolves every artifact path inside the bundle, refusing absolute paths, `..` and
symlinks that leave it. Stages ask the `Bundle` for the model, input spec, outputs, keypoints and
artifacts (`Artifact`: kind, precision, batch range; `hrdeploy.runtime.factory.open_runner` runs one) and
record new artifacts and report sections through it, atomically and under the bundle's lock file; no
stage re-parses the JSON.

Manifest layout ("hrdeploy-bundle/1"):

    {
      "format": "hrdeploy-bundle/1",
      "model":   {"name", "family", "task", "dataset", "upstream", "checkpoint": path|null, "seed": int},
      "input":   {"name": "input", "shape": [N|"batch", 3, H|"height", W|"width"], "layout": "NCHW",
                  "color": "RGB", "scale": 255.0, "mean": [...], "std": [...],
                  "height": H, "width": W, "dynamic_batch": bool, "dynamic_shape": bool, "stride": 32},
      "outputs": [{"name": "heatmaps", "stride": 4, "channels": 17}, ...],
      "keypoints": {"dataset", "names": [...], "flip_pairs": [[a, b], ...], "skeleton": [[a, b], ...]} | null,
      "rewrites": [...], "export": {...}, "stages": {...}, "parity": {...}, "versions": {...},
      "artifacts": {"onnx": {"file": "model.onnx", "precision": "fp32", "sha256", ...},
                    "fp16": {...}, "int8": {...}, "engine_fp16": {"file": "model.fp16.engine", "profiles", ...}}
    }

Mean/std are on the 0..1 scale of RGB pixels (divide uint8 by `scale` first).
"""

from __future__ import annotations

import contextlib
import copy
import json
import math
import os
import stat
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hrdeploy.datasets import flip_index
from hrdeploy.errors import UserError
from hrdeploy.io import not_a_file, sha256, write_json
from hrdeploy.limits import MAX_BATCH, MAX_CHANNELS, MAX_INPUT_SIDE, MAX_SEED
from hrdeploy.presets import STAGE_KEYS, sections_problem

FORMAT = "hrdeploy-bundle/1"
MANIFEST = "manifest.json"
LOCK = ".hrdeploy.lock"
LOCK_TIMEOUT_S = 120.0
PRECISIONS = ("fp32", "fp16", "int8")
ENGINE_SUFFIXES = (".engine", ".plan", ".trt")
# Sections the bundle owns; record_section cannot replace them.
CORE_SECTIONS = ("format", "model", "input", "outputs", "keypoints", "artifacts")
# The command that makes each artifact, for "missing artifact" messages.
MADE_BY = {
    "onnx": "hrdeploy export MODEL -o {root}",
    "fp16": "hrdeploy quantize {root} --precision fp16",
    "int8": "hrdeploy quantize {root} --precision int8 --calib-dir PHOTOS",
}


# ----------------------------------------------------------------------------------------- typed fields


class _Fields:
    """Typed reads of one manifest section; every problem is a UserError naming the field."""

    def __init__(self, data: Any, where: str, manifest: Path) -> None:
        self.where, self.manifest = where, manifest
        if not isinstance(data, dict):
            self.fail(where, f"must be an object, not {type(data).__name__}")
        self.data: dict[str, Any] = data

    def fail(self, key: str, problem: str) -> None:
        raise UserError(
            f"{self.manifest}: {key} {problem}; the manifest is damaged, re-create the bundle with "
            "`hrdeploy export MODEL -o DIR --force`"
        )

    def _get(self, key: str, required: bool) -> Any:
        if key not in self.data and required:
            self.fail(f"{self.where}.{key}", "is missing")
        return self.data[key]

    def str(self, key: str, default: str | None = None, *, required: bool = True, none: bool = False) -> Any:
        if key not in self.data and not required:
            return default
        v = self._get(key, required)
        if v is None and (none or not required):
            return v
        if not isinstance(v, str) or not v:
            self.fail(f"{self.where}.{key}", f"must be a non-empty string, not {v!r}")
        return v

    def int(self, key: str, default: int | None = None, *, required: bool = True, minimum: int = 1,
            maximum: int) -> Any:
        if key not in self.data and not required:
            return default
        v = self._get(key, required)
        if isinstance(v, bool) or not isinstance(v, int) or not minimum <= v <= maximum:
            self.fail(f"{self.where}.{key}", f"must be an integer in {minimum}..{maximum}, not {v!r}")
        return v

    def num(self, key: str, default: float | None = None, *, required: bool = True) -> Any:
        """A positive finite number."""
        if key not in self.data and not required:
            return default
        v = self._get(key, required)
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 < v < math.inf:
            self.fail(f"{self.where}.{key}", f"must be a positive number, not {v!r}")
        return float(v)

    def bool(self, key: str, default: bool | None = None, *, required: bool = True) -> Any:
        if key not in self.data and not required:
            return default
        v = self._get(key, required)
        if not isinstance(v, bool):
            self.fail(f"{self.where}.{key}", f"must be true or false, not {v!r}")
        return v

    def nums(self, key: str, length: int, *, positive: bool = False) -> tuple[float, ...]:
        v = self._get(key, True)
        if (not isinstance(v, list) or len(v) != length
                or any(isinstance(x, bool) or not isinstance(x, (int, float)) or not math.isfinite(x) for x in v)
                or (positive and any(x <= 0 for x in v))):
            self.fail(f"{self.where}.{key}",
                      f"must be a list of {length} finite {'positive ' if positive else ''}numbers")
        return tuple(float(x) for x in v)

    def strs(self, key: str, default: list | None = None, *, required: bool = True) -> tuple[str, ...]:
        v = self._get(key, required) if key in self.data or required else default
        if not isinstance(v, list) or any(not isinstance(x, str) for x in v):
            self.fail(f"{self.where}.{key}", "must be a list of strings")
        return tuple(v)

    def pairs(self, key: str, bound: int) -> tuple[tuple[int, int], ...]:
        v = self.data.get(key, [])
        ok = isinstance(v, list) and all(
            isinstance(p, list) and len(p) == 2 and all(type(i) is int and 0 <= i < bound for i in p) for p in v
        )
        if not ok:
            self.fail(f"{self.where}.{key}", f"must be a list of [a, b] keypoint index pairs below {bound}")
        return tuple((int(a), int(b)) for a, b in v)


@dataclass(frozen=True)
class ModelInfo:
    """What the bundle was exported from: registry name, dataset, checkpoint (or seeded weights)."""

    name: str
    family: str
    task: str
    dataset: str
    upstream: str | None
    checkpoint: str | None
    seed: int


@dataclass(frozen=True)
class InputSpec:
    """The model input: NCHW float32 of RGB pixels / scale, normalised with mean/std."""

    name: str
    height: int
    width: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    scale: float
    layout: str
    color: str
    dynamic_batch: bool
    dynamic_shape: bool
    stride: int
    shape: tuple[int | str, ...]

    @property
    def size(self) -> tuple[int, int]:
        """(height, width) the bundle was exported at."""
        return self.height, self.width

    @property
    def batch_range(self) -> tuple[int, int]:
        """(min, max) batch of the exported input: its static batch, or 1..MAX_BATCH when dynamic."""
        b = self.shape[0] if self.shape else 1
        return (b, b) if isinstance(b, int) else (1, MAX_BATCH)


@dataclass(frozen=True)
class OutputSpec:
    name: str
    stride: int
    channels: int


@dataclass(frozen=True)
class KeypointSpec:
    dataset: str
    names: tuple[str, ...]
    flip_pairs: tuple[tuple[int, int], ...]
    skeleton: tuple[tuple[int, int], ...]

    @property
    def flip_index(self) -> list[int]:
        return flip_index(len(self.names), self.flip_pairs)


def _model(data: Any, manifest: Path) -> ModelInfo:
    f = _Fields(data, "model", manifest)
    return ModelInfo(
        name=f.str("name"), family=f.str("family", "", required=False) or "", task=f.str("task"),
        dataset=f.str("dataset"), upstream=f.str("upstream", None, required=False),
        checkpoint=f.str("checkpoint", None, required=False, none=True),
        seed=f.int("seed", 0, required=False, minimum=0, maximum=MAX_SEED),
    )


def _input(data: Any, manifest: Path) -> InputSpec:
    f = _Fields(data, "input", manifest)
    h, w = f.int("height", maximum=MAX_INPUT_SIDE), f.int("width", maximum=MAX_INPUT_SIDE)
    dynamic_batch = f.bool("dynamic_batch", False, required=False)
    dynamic_shape = f.bool("dynamic_shape", False, required=False)
    shape = f.data.get("shape", ["batch" if dynamic_batch else 1, 3, h, w])
    limits = (MAX_BATCH, 3, MAX_INPUT_SIDE, MAX_INPUT_SIDE)
    if (not isinstance(shape, list) or len(shape) != 4
            or any(isinstance(d, bool) or not (isinstance(d, str) or (isinstance(d, int) and 0 < d <= most))
                   for d, most in zip(shape, limits, strict=True))):
        f.fail("input.shape", f"must be 4 dims [N, 3, H, W], each a name or an integer in 1..{MAX_BATCH} (N), "
                              f"3 (C), 1..{MAX_INPUT_SIDE} (H, W), not {shape!r}")
    layout = f.str("layout", "NCHW", required=False)
    color = f.str("color", "RGB", required=False)
    if layout != "NCHW":
        f.fail("input.layout", f"must be NCHW, not {layout!r}")
    if color not in ("RGB", "BGR"):
        f.fail("input.color", f"must be RGB or BGR, not {color!r}")
    return InputSpec(
        name=f.str("name", "input", required=False), height=h, width=w,
        mean=f.nums("mean", 3), std=f.nums("std", 3, positive=True),  # type: ignore[arg-type]
        scale=f.num("scale", 255.0, required=False), layout=layout, color=color,
        dynamic_batch=dynamic_batch, dynamic_shape=dynamic_shape,
        stride=f.int("stride", 32, required=False, maximum=MAX_INPUT_SIDE),
        shape=tuple(shape),
    )


def _outputs(data: Any, manifest: Path) -> tuple[OutputSpec, ...]:
    if not isinstance(data, list) or not data:
        _Fields({}, "outputs", manifest).fail("outputs", "must be a non-empty list of {name, stride, channels}")
    out = []
    for i, item in enumerate(data):
        f = _Fields(item, f"outputs[{i}]", manifest)
        out.append(OutputSpec(f.str("name"), f.int("stride", 1, required=False, maximum=MAX_INPUT_SIDE),
                              f.int("channels", 1, required=False, maximum=MAX_CHANNELS)))
    return tuple(out)


def _keypoints(data: Any, manifest: Path) -> KeypointSpec | None:
    if data is None:
        return None
    f = _Fields(data, "keypoints", manifest)
    names = f.strs("names")
    return KeypointSpec(
        dataset=f.str("dataset", "", required=False) or "", names=names,
        flip_pairs=f.pairs("flip_pairs", len(names)), skeleton=f.pairs("skeleton", len(names)),
    )


# ------------------------------------------------------------------------------------------ paths


def confine(root: Path, rel: Any, what: str = "path") -> Path:
    """`root / rel` resolved, refusing an absolute path, `..`, or a symlink that leaves `root`."""
    if not isinstance(rel, str) or not rel:
        raise UserError(f"bundle {root}: {what} must be a file name inside the bundle, not {rel!r}")
    p = Path(rel)
    if p.is_absolute() or ".." in p.parts:
        raise UserError(
            f"bundle {root}: {what} {rel!r} points outside the bundle; hrdeploy only reads files inside it "
            "(re-create the bundle, or fix the path in manifest.json)"
        )
    real_root = root.resolve()
    target = (root / p).resolve()
    if target != real_root and real_root not in target.parents:
        raise UserError(
            f"bundle {root}: {what} {rel!r} is a symlink to {target}, outside the bundle; hrdeploy only reads "
            "files inside it (replace the link with the file itself)"
        )
    return root / p


# ------------------------------------------------------------------------------------------ ONNX


def load_onnx(path: str | os.PathLike, *, weights: bool = False) -> Any:
    """An ONNX ModelProto read from `path` (external weights only when asked); UserError when it is not one."""
    import onnx

    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path} {not_a_file(path)}; pass an existing .onnx file or a bundle directory")
    try:
        model = onnx.load(os.fspath(path), load_external_data=weights)
    except Exception as err:  # protobuf DecodeError, truncated files, missing external data
        raise UserError(
            f"{path} is not a readable ONNX model (corrupt or truncated: {type(err).__name__}); re-export it"
        ) from err
    if not model.graph.node or not model.graph.input or not model.graph.output:
        raise UserError(f"{path} is not a usable ONNX model (no graph inputs, outputs or nodes); re-export it")
    _check_external_data(path, model)
    return model


def _check_external_data(path: Path, model: Any) -> None:
    """UserError unless every tensor stored outside the ONNX file is a file beside it, in its folder: a
    location that is absolute, climbs out with `..` or is a symlink out would make any reader of the model
    read a file the user did not hand over."""
    import onnx

    folder = path.parent.resolve()
    graphs = [model.graph]
    while graphs:
        graph = graphs.pop()
        tensors = list(graph.initializer)
        for node in graph.node:
            for a in node.attribute:
                tensors += [a.t, *a.tensors] if a.HasField("t") else list(a.tensors)
                graphs += [a.g, *a.graphs] if a.HasField("g") else list(a.graphs)
        for t in tensors:
            if t.data_location != onnx.TensorProto.EXTERNAL:
                continue
            location = next((e.value for e in t.external_data if e.key == "location"), "")
            target = (folder / location).resolve()
            if not location or Path(location).is_absolute() or folder not in target.parents:
                raise UserError(
                    f"{path} keeps tensor {t.name!r} in external file {location!r}, outside the model's folder; "
                    "hrdeploy reads external weights only from files beside the model (re-export it)"
                )
            if not target.is_file():
                raise UserError(f"{path} keeps tensor {t.name!r} in external file {location!r}, which is missing "
                                f"from {path.parent}; copy it there or re-export the model")


def onnx_static_batch(model: Any) -> int | None:
    """The static batch of an ONNX model's first input, or None when it is dynamic."""
    dims = model.graph.input[0].type.tensor_type.shape.dim
    if not dims:
        return None
    d = dims[0]
    return int(d.dim_value) if d.HasField("dim_value") and d.dim_value > 0 else None


# --------------------------------------------------------------------------------------- artifacts


def profile_batch_range(profiles: Any) -> tuple[int, int]:
    """(min, max) batch of an engine's optimization profile 0 (engine.json / manifest), else 1..MAX_BATCH (no
    profile, or one that is not 1 <= min <= max <= MAX_BATCH)."""
    try:
        lo, hi = profiles[0]["min"][0], profiles[0]["max"][0]
    except (IndexError, KeyError, TypeError):
        return 1, MAX_BATCH
    ints = all(isinstance(v, int) and not isinstance(v, bool) for v in (lo, hi))
    return (lo, hi) if ints and 1 <= lo <= hi <= MAX_BATCH else (1, MAX_BATCH)


def artifact_kind(file: str) -> str | None:
    """'engine' for a TensorRT plan, 'onnx' for an ONNX file, None otherwise."""
    suffix = Path(file).suffix
    return "engine" if suffix in ENGINE_SUFFIXES else "onnx" if suffix == ".onnx" else None


@dataclass(frozen=True)
class Artifact:
    """One artifact of a bundle: a file inside it with its kind, precision and batch range."""

    key: str
    file: str
    path: Path
    kind: str  # "onnx" | "engine"
    precision: str  # "fp32" | "fp16" | "int8"
    info: Mapping[str, Any] = field(repr=False)
    _cache: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @property
    def exists(self) -> bool:
        return self.path.is_file()

    def onnx_model(self) -> Any:
        """The ONNX graph (without external weights); UserError for an engine or a corrupt file."""
        if self.kind != "onnx":
            raise UserError(f"artifact {self.key!r} ({self.file}) is a TensorRT engine, not an ONNX model")
        if "onnx" not in self._cache:
            self._cache["onnx"] = load_onnx(self.path)
        return self._cache["onnx"]

    @property
    def batch_range(self) -> tuple[int, int]:
        """(min, max) batch it accepts: an ONNX's static batch, an engine's profile 0, else 1..MAX_BATCH."""
        if self.kind == "engine":
            return profile_batch_range(self.info.get("profiles"))
        static = onnx_static_batch(self.onnx_model())
        return (static, static) if static else (1, MAX_BATCH)


def _artifact(root: Path, manifest: Path, key: Any, entry: Any) -> Artifact:
    if not isinstance(key, str) or not key:
        _Fields({}, "artifacts", manifest).fail("artifacts", f"has a bad key {key!r}")
    f = _Fields(entry, f"artifacts.{key}", manifest)
    file = f.str("file")
    path = confine(root, file, f"artifact {key!r} file")
    if isinstance(f.data.get("metadata"), str):
        confine(root, f.data["metadata"], f"artifact {key!r} metadata")
    kind = artifact_kind(file)
    if kind is None:
        engines = "/".join(ENGINE_SUFFIXES)
        f.fail(f"artifacts.{key}.file", f"{file!r} is neither .onnx nor a TensorRT engine ({engines})")
    precision = f.data.get("precision")
    if precision is None:
        precision = next((p for p in ("fp16", "int8", "fp32") if p in key), "fp32")
    elif precision not in PRECISIONS:
        f.fail(f"artifacts.{key}.precision", f"must be one of {', '.join(PRECISIONS)}, not {precision!r}")
    return Artifact(key=key, file=file, path=path, kind=kind, precision=precision, info=dict(f.data))


# ------------------------------------------------------------------------------------------ bundle


def is_bundle(path: str | os.PathLike) -> bool:
    """True for a folder holding an hrdeploy manifest (format checked, nothing else)."""
    p = Path(path) / MANIFEST
    try:
        return p.is_file() and json.loads(p.read_text()).get("format") == FORMAT
    except (OSError, ValueError, AttributeError):
        return False


class Bundle:
    """A validated bundle: typed sections, confined artifact paths, atomic locked updates."""

    def __init__(self, root: Path, manifest: dict[str, Any]) -> None:
        self.root = root
        self._load(manifest)

    @classmethod
    def open(cls, path: str | os.PathLike) -> Bundle:
        """Open and validate the bundle at `path`; any problem is a UserError (exit 2)."""
        root = Path(path)
        return cls(root, cls._read(root))

    @staticmethod
    def _read(root: Path) -> dict[str, Any]:
        hint = f"create it with `hrdeploy export MODEL -o {root}`"
        again = f"re-create it with `hrdeploy export MODEL -o {root} --force`"
        if not root.is_dir():
            what = "does not exist" if not root.exists() else "is not a directory"
            raise UserError(f"bundle {root} {what}; {hint}")
        path = root / MANIFEST
        if not path.is_file():
            raise UserError(f"{root} has no {MANIFEST}, so it is not an hrdeploy bundle; {hint}")
        try:
            manifest = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, ValueError) as err:
            raise UserError(f"{path} is not valid JSON ({str(err).splitlines()[0]}); {again}") from err
        if not isinstance(manifest, dict):
            raise UserError(f"{path} must hold a JSON object, not {type(manifest).__name__}; {again}")
        if manifest.get("format") != FORMAT:
            raise UserError(f"{path} is not an hrdeploy manifest (format {manifest.get('format')!r}, "
                            f"expected {FORMAT!r}); {again}")
        return manifest

    def _load(self, manifest: dict[str, Any]) -> None:
        where = self.root / MANIFEST
        if manifest.get("format") != FORMAT:
            _Fields({}, "format", where).fail("format", f"must be {FORMAT!r}, not {manifest.get('format')!r}")
        for section in ("model", "input", "outputs"):
            if section not in manifest:
                _Fields({}, section, where).fail(section, "section is missing")
        self.model = _model(manifest["model"], where)
        self.input = _input(manifest["input"], where)
        self.outputs = _outputs(manifest["outputs"], where)
        self.keypoints = _keypoints(manifest.get("keypoints"), where)
        arts = manifest.get("artifacts", {})
        if not isinstance(arts, dict):
            _Fields({}, "artifacts", where).fail("artifacts", "must be an object of artifact entries")
        self.artifacts: dict[str, Artifact] = {k: _artifact(self.root, where, k, e) for k, e in arts.items()}
        if problem := sections_problem(manifest.get("stages", {}), STAGE_KEYS):
            _Fields({}, "stages", where).fail("stages", f"(the preset for later stages): {problem}")
        self._manifest = manifest

    # -- reading

    @property
    def manifest(self) -> dict[str, Any]:
        """A deep copy of the raw manifest (for reports that print it; stages use the typed fields)."""
        return copy.deepcopy(self._manifest)

    def section(self, name: str, default: Any = None) -> Any:
        """A copy of a free-form section ("export", "stages", "parity", "eval", "rewrites", "versions")."""
        return copy.deepcopy(self._manifest.get(name, default))

    @property
    def output_names(self) -> tuple[str, ...]:
        return tuple(o.name for o in self.outputs)

    @property
    def is_pose(self) -> bool:
        return self.model.task.startswith("pose") and self.keypoints is not None

    def path(self, rel: str) -> Path:
        """`rel` inside the bundle; UserError if it is absolute, uses `..`, or is a symlink that leaves it."""
        return confine(self.root, rel)

    def artifact(self, key: str) -> Artifact:
        """Artifact `key`, its file checked against the recorded sha256 (and an ONNX read, see `load_onnx`);
        UserError naming the command that makes it when it is absent, missing or damaged (truncated,
        overwritten)."""
        art = self.artifacts.get(key)
        make = MADE_BY.get(key, "hrdeploy build {root}" if key.startswith("engine") else "").format(root=self.root)
        how = f"; make it again with `{make}`" if make else ""
        if art is None or not art.exists:
            state = "is not in" if art is None else f"is recorded but its file {art.file} is missing from"
            raise UserError(f"artifact {key!r} {state} bundle {self.root}{how}")
        recorded = art.info.get("sha256")
        if recorded and "sha256_ok" not in art._cache:
            if sha256(art.path) != recorded:
                raise UserError(
                    f"{art.path} is damaged or was replaced: its sha256 differs from the one recorded when it was "
                    f"made (truncated or overwritten){how}"
                )
            art._cache["sha256_ok"] = True
        if art.kind == "onnx" and "matches" not in art._cache:
            # unreadable, external weights outside the bundle, or not the model the manifest describes: a UserError
            # before any work
            problem = self._onnx_mismatch(art.onnx_model())
            if problem:
                raise UserError(f"{art.path} {problem}; the file or manifest.json was changed by hand, re-create "
                                f"the bundle with `hrdeploy export MODEL -o {self.root} --force`")
            art._cache["matches"] = True
        return art

    def _onnx_mismatch(self, model: Any) -> str | None:
        """How an ONNX graph's input and outputs differ from the manifest's (None when they agree)."""
        initializers = {t.name for t in model.graph.initializer}
        inputs = [i for i in model.graph.input if i.name not in initializers]
        if [i.name for i in inputs] != [self.input.name]:
            return f"takes inputs {[i.name for i in inputs]}, but the manifest's input is {self.input.name!r}"
        dims = [d.dim_value if d.HasField("dim_value") else None for d in inputs[0].type.tensor_type.shape.dim]
        if len(dims) != 4 or any(got is not None and got != want
                                 for got, want in zip(dims[1:], (3, self.input.height, self.input.width),
                                                      strict=True)):
            shape = [d if d is not None else "?" for d in dims]
            return (f"takes input {self.input.name} of shape {shape}, but the manifest's is "
                    f"[N, 3, {self.input.height}, {self.input.width}]")
        missing = [o for o in self.output_names if o not in {v.name for v in model.graph.output}]
        if missing:
            return f"has no output {missing[0]!r}, which the manifest lists"
        return None

    def onnx_artifacts(self) -> dict[str, Artifact]:
        return {k: a for k, a in self.artifacts.items() if a.kind == "onnx"}

    def engine_artifacts(self) -> dict[str, Artifact]:
        return {k: a for k, a in self.artifacts.items() if a.kind == "engine"}

    def eager_model(self) -> Any:
        """The upstream-form eager nn.Module the bundle was exported from (same weights)."""
        from hrdeploy.zoo import build_model

        m = self.model
        return build_model(m.name, dataset=m.dataset, checkpoint=m.checkpoint, seed=m.seed)

    # -- writing

    @contextlib.contextmanager
    def lock(self, timeout: float = LOCK_TIMEOUT_S) -> Iterator[None]:
        """Hold the bundle's lock file: writers of one bundle run one at a time."""
        with hold_lock(self.root / LOCK, f"bundle {self.root}", timeout):
            yield

    def _update(self, change: Any) -> None:
        with self.lock():
            manifest = self._read(self.root)  # another writer may have changed it since we opened it
            change(manifest)
            probe = Bundle(self.root, manifest)  # never write a manifest that would not open
            write_json(self.root / MANIFEST, manifest)
        self._load(probe._manifest)

    def record_artifact(self, key: str, file: str, **info: Any) -> Artifact:
        """Add or replace artifact `key` (a file inside the bundle) with its sha256, atomically."""
        path = self.path(file)
        if not path.is_file():
            raise UserError(f"cannot record {file}: it does not exist in bundle {self.root}")
        entry = {"file": file, "sha256": sha256(path), **info}

        def change(m: dict[str, Any]) -> None:
            m.setdefault("artifacts", {})[key] = entry

        self._update(change)
        return self.artifacts[key]

    def update_report(self, file: str, key: str, data: Any) -> dict[str, Any]:
        """Set entry `key` of the bundle's JSON report `file` (e.g. parity.json) to `data`, under the bundle's
        lock, and return the whole report. A report that is not a JSON object is an error, never replaced."""
        path = self.path(file)
        with self.lock():
            report: Any = {}
            if path.is_file():
                try:
                    report = json.loads(path.read_text())
                except (OSError, ValueError) as err:
                    report = err
                if not isinstance(report, dict):
                    raise UserError(f"{file} in bundle {self.root} is not a JSON object ({type(report).__name__}); "
                                    f"move it away (the next run writes a new one) and run again")
            report = {**report, key: data}
            write_json(path, report)
        return report

    def record_section(self, name: str, data: Any, key: str | None = None) -> None:
        """Set manifest section `name` (or its entry `key`, e.g. parity/"validate") to `data`, atomically."""
        if name in CORE_SECTIONS:
            raise ValueError(f"section {name!r} belongs to the bundle schema; use record_artifact for artifacts")
        json.dumps(data)  # refuse what JSON cannot hold before touching the file

        def change(m: dict[str, Any]) -> None:
            if key is None:
                m[name] = data
            else:
                section = m.get(name)
                m[name] = {**(section if isinstance(section, dict) else {}), key: data}

        self._update(change)


@contextlib.contextmanager
def hold_lock(path: Path, what: str, timeout: float) -> Iterator[None]:
    """Hold file lock `path` (waiting up to `timeout` s, 0 = fail at once); UserError when it stays taken.

    filelock's soft lock: the file exists only while it is held (released, it is removed, so no command
    leaves a lock file in the user's folder), and it records its holder's PID, so the lock of a killed
    process is taken over instead of blocking the next writer.
    """
    from filelock import SoftFileLock, Timeout

    _remove_flock_leftover(path)
    lock = SoftFileLock(os.fspath(path), timeout=timeout)
    try:
        lock.acquire()
    except Timeout as err:
        raise UserError(
            f"{what} is being written by another hrdeploy process (lock {path}); wait for it to finish"
        ) from err
    except OSError as err:
        raise UserError(f"cannot create lock file {path} ({err.strerror}); check that the folder is writable") from err
    try:
        yield
    finally:
        lock.release()


FLOCK_LEFTOVER_AGE_S = 10.0  # a soft lock's marker holds its record within moments of its creation


def _remove_flock_leftover(path: Path) -> None:
    """Remove an empty lock file, which only a flock-based lock leaves (a soft lock's marker holds its record),
    unless a process holds a flock on it: a soft lock never takes over an empty marker, so it would wait for it
    forever."""
    try:
        st = path.lstat()
    except OSError:
        return
    if st.st_size or not stat.S_ISREG(st.st_mode) or time.time() - st.st_mtime < FLOCK_LEFTOVER_AGE_S:
        return
    try:
        import fcntl
    except ImportError:  # no flock on this platform, so no such leftover either
        return
    with contextlib.suppress(OSError), open(path, "rb") as f:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)  # OSError (skipped) while an earlier hrdeploy holds it
        if os.fstat(f.fileno()).st_size == 0:
            path.unlink()
