"""The bundle: one model's artifacts in a folder, described by `manifest.json`, opened as a typed object.

`Bundle.open(path)` validates the manifest once against its schema (hrdeploy.manifest: format version,
required sections, field types, bounded numbers) and resolves every artifact path inside the bundle, refusing
absolute paths, `..` and symlinks that leave it. Stages ask the `Bundle` for the model, input spec, outputs,
keypoints and artifacts (`Artifact`: kind, precision, batch range;
`hrdeploy.runtime.factory.open_runner` runs one) and record new artifacts, manifest
sections and report files (parity.json, ...) through it, atomically and under the bundle's lock file; no
stage re-parses the JSON.
"""

from __future__ import annotations

import contextlib
import json
import os
import stat
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hrdeploy.errors import UserError
from hrdeploy.io import not_a_file, sha256, write_json, write_text
from hrdeploy.limits import MAX_BATCH
from hrdeploy.manifest import (
    CORE_SECTIONS,
    FORMAT,
    READABLE,
    ArtifactEntry,
    InputSpec,
    KeypointSpec,
    Manifest,
    ModelInfo,
    OutputSpec,
    artifact_kind,
    parse_manifest,
)
from hrdeploy.schema import PRECISIONS

MANIFEST = "manifest.json"
LOCK = ".hrdeploy.lock"
LOCK_TIMEOUT_S = 120.0
# The command that makes each artifact, for "missing artifact" messages.
MADE_BY = {
    "onnx": "hrdeploy export MODEL -o {root}",
    "fp16": "hrdeploy quantize {root} --precision fp16",
    "int8": "hrdeploy quantize {root} --precision int8 --calib-dir PHOTOS",
}
__all__ = ["FORMAT", "PRECISIONS", "Artifact", "Bundle", "InputSpec", "KeypointSpec", "Manifest", "ModelInfo",
           "OutputSpec"]


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


@dataclass(frozen=True)
class Artifact:
    """One artifact of a bundle: a file inside it with its kind, precision and batch range."""

    key: str
    file: str
    path: Path
    kind: str  # "onnx" | "engine"
    precision: str  # "fp32" | "fp16" | "int8"
    info: ArtifactEntry = field(repr=False)
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
            return profile_batch_range(self.info.profiles)
        static = onnx_static_batch(self.onnx_model())
        return (static, static) if static else (1, MAX_BATCH)


def _artifact(root: Path, key: str, entry: ArtifactEntry) -> Artifact:
    path = confine(root, entry.file, f"artifact {key!r} file")
    if entry.metadata is not None:
        confine(root, entry.metadata, f"artifact {key!r} metadata")
    precision = entry.precision or next((p for p in ("fp16", "int8", "fp32") if p in key), "fp32")
    return Artifact(key=key, file=entry.file, path=path, kind=artifact_kind(entry.file), precision=precision,
                    info=entry)


# ------------------------------------------------------------------------------------------ bundle


def is_bundle(path: str | os.PathLike) -> bool:
    """True for a folder holding an hrdeploy manifest (format checked, nothing else)."""
    p = Path(path) / MANIFEST
    try:
        return p.is_file() and json.loads(p.read_text()).get("format") in READABLE
    except (OSError, ValueError, AttributeError):
        return False


class Bundle:
    """A validated bundle: the typed manifest, confined artifact paths, atomic locked updates."""

    def __init__(self, root: Path, manifest: Manifest) -> None:
        self.root = root
        self._load(manifest)

    @classmethod
    def open(cls, path: str | os.PathLike) -> Bundle:
        """Open and validate the bundle at `path`; any problem is a UserError (exit 2)."""
        root = Path(path)
        return cls(root, cls._read(root))

    @classmethod
    def write_new(cls, root: Path, manifest: Manifest) -> Bundle:
        """Write `manifest` into the new bundle folder `root` (its artifacts already there) and open it."""
        bundle = cls(root, manifest)  # the manifest must open as a bundle before it is written
        write_json(root / MANIFEST, manifest.to_json())
        return bundle

    @staticmethod
    def _read(root: Path) -> Manifest:
        hint = f"create it with `hrdeploy export MODEL -o {root}`"
        again = f"re-create it with `hrdeploy export MODEL -o {root} --force`"
        if not root.is_dir():
            what = "does not exist" if not root.exists() else "is not a directory"
            raise UserError(f"bundle {root} {what}; {hint}")
        path = root / MANIFEST
        if not path.is_file():
            raise UserError(f"{root} has no {MANIFEST}, so it is not an hrdeploy bundle; {hint}")
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, ValueError) as err:
            raise UserError(f"{path} is not valid JSON ({str(err).splitlines()[0]}); {again}") from err
        if not isinstance(data, dict):
            raise UserError(f"{path} must hold a JSON object, not {type(data).__name__}; {again}")
        return parse_manifest(data, path)

    def _load(self, manifest: Manifest) -> None:
        self.artifacts: dict[str, Artifact] = {k: _artifact(self.root, k, e) for k, e in manifest.artifacts.items()}
        self.manifest = manifest
        self.model, self.input, self.outputs, self.keypoints = (manifest.model, manifest.input, manifest.outputs,
                                                                manifest.keypoints)

    # -- reading

    def section(self, name: str, default: Any = None) -> Any:
        """Free section `name` of the manifest ("export", "parity", "eval", "runtime", ...), or `default`."""
        return self.manifest.section(name, default)

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
        recorded = art.info.sha256
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

    def _update(self, change: Callable[[dict[str, Any]], None]) -> None:
        """Apply `change` to the manifest's JSON data as it is on disk now, under the lock; write it only if
        it still validates."""
        with self.lock():
            data = self._read(self.root).to_json()  # another writer may have changed it since we opened it
            change(data)
            manifest = parse_manifest(data, self.root / MANIFEST)
            Bundle(self.root, manifest)  # never write a manifest that would not open
            write_json(self.root / MANIFEST, manifest.to_json())
        self._load(manifest)

    def record_artifact(self, key: str, file: str, **info: Any) -> Artifact:
        """Add or replace artifact `key` (a file inside the bundle) with its sha256, atomically."""
        path = self.path(file)
        if not path.is_file():
            raise UserError(f"cannot record {file}: it does not exist in bundle {self.root}")
        entry = {"file": file, "sha256": sha256(path), **info}

        def change(m: dict[str, Any]) -> None:
            m["artifacts"][key] = entry

        self._update(change)
        return self.artifacts[key]

    def read_report(self, file: str) -> dict[str, Any]:
        """The bundle's JSON report `file` (e.g. parity.json), {} when absent; a report that is not a JSON
        object is a UserError naming it, never read as empty."""
        path = self.path(file)
        if not path.is_file():
            return {}
        try:
            report: Any = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, ValueError) as err:
            report = err
        if not isinstance(report, dict):
            raise UserError(f"{file} in bundle {self.root} is not a JSON object ({type(report).__name__}); "
                            f"move it away (the next run writes a new one) and run again")
        return report

    def update_report(self, file: str, key: str, data: Any,
                      render: Callable[[dict[str, Any]], str] | None = None) -> dict[str, Any]:
        """Set entry `key` of the bundle's JSON report `file` (e.g. parity.json) to `data`, under the bundle's
        lock, and return the whole report; `render(report)`, when given, is written beside it as Markdown
        (parity.md) under the same lock. A report that is not a JSON object is an error, never replaced."""
        with self.lock():
            report = {**self.read_report(file), key: data}
            write_json(self.path(file), report)
            if render is not None:
                write_text(self.path(str(Path(file).with_suffix(".md"))), render(report))
        return report

    def write_reports(self, files: dict[str, Any]) -> None:
        """Write report files into the bundle under its lock: text for a str, JSON for anything else."""
        with self.lock():
            for name, content in files.items():
                if isinstance(content, str):
                    write_text(self.path(name), content)
                else:
                    write_json(self.path(name), content)

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
