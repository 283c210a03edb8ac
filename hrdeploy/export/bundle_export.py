"""`export_bundle`: the whole export stage, written into a bundle directory atomically."""

from __future__ import annotations

import contextlib
import os
import platform
import re
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import onnx

from hrdeploy import __version__
from hrdeploy.bundle import Bundle, hold_lock, is_bundle
from hrdeploy.errors import UserError
from hrdeploy.export.metadata import manifest_metadata, set_metadata
from hrdeploy.export.onnx_export import INPUT_NAME, ExporterError, check_and_infer, export_onnx, simplify
from hrdeploy.export.options import FALLBACK_EXPORTER, ExportOptions, check_opset
from hrdeploy.export.parity import ParityCase, compare, to_markdown
from hrdeploy.export.phases import PhaseClock
from hrdeploy.export.threads import torch_threads
from hrdeploy.io import check_writable, not_a_file, os_reason, sha256, write_json, write_text
from hrdeploy.manifest import ArtifactEntry, Manifest
from hrdeploy.registry import ModelSpec, get_spec
from hrdeploy.zoo import build_model, check_dataset, check_input_size

ONNX_FILE = "model.onnx"
PARITY_DYNAMIC_BATCH = 4


@dataclass
class ExportResult:
    bundle: Path
    manifest: Manifest
    parity: dict
    simplify_error: str | None
    seconds: float

    @property
    def passed(self) -> bool:
        return self.parity["passed"]


def _versions() -> dict[str, str]:
    import onnxruntime
    import torch

    try:
        import onnxsim

        sim = onnxsim.__version__
    except ImportError:
        sim = "absent"
    return {
        "hrdeploy": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "onnx": onnx.__version__,
        "onnxruntime": onnxruntime.__version__,
        "onnxsim": sim,
    }


def check_out_dir(out_dir: str | os.PathLike, force: bool) -> Path:
    """The absolute bundle path for `-o out_dir`, checked before any work: a writable place whose existing
    content may be replaced (nothing, an empty folder, or with --force an hrdeploy bundle)."""
    out = Path(os.path.abspath(out_dir))
    if out.parent == out or out == Path.cwd() or out in Path.cwd().parents:
        raise UserError(f"-o {out_dir} is the current folder or one above it; name a new folder for the bundle")
    try:
        _check_content(out, out_dir, force)
    except OSError as err:  # a folder on the way that this user may not read or enter
        raise UserError(f"cannot look into -o {out_dir} ({os_reason(err, out)}); hrdeploy must see what a folder "
                        "holds before it writes there, so choose a folder you can read and write") from err
    check_writable(out, "-o")
    return out


def _check_content(out: Path, out_dir: str | os.PathLike, force: bool) -> None:
    """UserError unless `out` is absent, an empty folder, or (with `force`) a bundle."""
    if out.exists() and not out.is_dir():
        raise UserError(f"output path {out_dir} is a file; pass a directory for the bundle")
    if out.is_dir() and any(out.iterdir()):
        if not is_bundle(out):
            raise UserError(
                f"{out_dir} is a folder with other files, not an hrdeploy bundle; hrdeploy replaces only a bundle "
                "or an empty folder, so choose another -o"
            )
        if not force:
            raise UserError(f"bundle {out_dir} already exists; pass --force to replace it or choose another -o")


def _stale_work_dirs(out: Path) -> list[Path]:
    """Temporary folders a killed export of `out` left beside it (`.NAME.xxxxxxxx.tmp`, `.NAME.old-PID`)."""
    pattern = re.compile(rf"^\.{re.escape(out.name)}\.([a-z0-9_]{{8}}\.tmp|old-\d+)$")
    try:
        return [p for p in out.parent.iterdir() if pattern.match(p.name) and p.is_dir() and not p.is_symlink()]
    except OSError:  # a folder this user may write but not list: nothing of ours to find there
        return []


@contextlib.contextmanager
def _writing(out: Path) -> Iterator[None]:
    """Hold `.NAME.lock` beside the bundle: a second export into the same folder fails at once. Parent
    folders created here are removed again if the export fails."""
    created = [p for p in (out.parent, *out.parent.parents) if not p.exists()]
    out.parent.mkdir(parents=True, exist_ok=True)
    lock = out.parent / f".{out.name}.lock"
    ok = False
    try:
        with hold_lock(lock, f"bundle {out}", timeout=0):
            for stale in _stale_work_dirs(out):
                shutil.rmtree(stale, ignore_errors=True)
            yield
            ok = True
    finally:
        if not ok:
            for folder in created:  # deepest first
                with contextlib.suppress(OSError):
                    folder.rmdir()


def _parity_cases(opts: ExportOptions, size: tuple[int, int], stride: int) -> list[ParityCase]:
    cases = [ParityCase(1 if opts.dynamic_batch else opts.batch, size, seed=0)]
    if opts.dynamic_batch:
        cases.append(ParityCase(PARITY_DYNAMIC_BATCH, size, seed=1))
    if opts.dynamic_shape:  # a second size: 1.5x each side, rounded to the stride
        h, w = (max(2 * stride, round(v * 1.5 / stride) * stride) for v in size)
        cases.append(ParityCase(2, (h, w), seed=2))
    return cases


def build_manifest(
    spec: ModelSpec, opts: ExportOptions, dataset: str, size: tuple[int, int], rewrites: list[str], export: dict,
) -> Manifest:
    """The manifest of a freshly exported bundle, without artifacts (the caller adds them)."""
    kps = spec.keypoint_set(dataset)
    batch_dim = "batch" if opts.dynamic_batch else opts.batch
    shape = [batch_dim, 3, "height" if opts.dynamic_shape else size[0], "width" if opts.dynamic_shape else size[1]]
    channels = spec.num_outputs(dataset)
    outputs = []
    for name, stride in zip(spec.output_names, spec.output_strides, strict=True):
        # HigherHRNet's 1/4 map carries heatmaps and associative-embedding tags (2K channels).
        ch = 2 * channels if name == "heatmaps_tags" else channels
        outputs.append({"name": name, "stride": stride, "channels": ch})
    return Manifest(
        model={
            "name": spec.name, "family": spec.family, "task": spec.task, "dataset": dataset,
            "upstream": spec.upstream, "seed": opts.seed,
            # absolute, so later stages rebuild the eager reference from any working folder
            "checkpoint": os.path.abspath(opts.checkpoint) if opts.checkpoint else None,
        },
        input={
            "name": INPUT_NAME, "shape": shape, "layout": "NCHW", "mean": list(spec.mean), "std": list(spec.std),
            "height": size[0], "width": size[1], "dynamic_batch": opts.dynamic_batch,
            "dynamic_shape": opts.dynamic_shape, "stride": spec.stride,
        },
        outputs=outputs,
        keypoints=None if kps is None else {
            "dataset": kps.name, "names": list(kps.keypoints),
            "flip_pairs": [list(p) for p in kps.flip_pairs], "skeleton": [list(p) for p in kps.skeleton],
        },
        rewrites=rewrites,
        export={"exporter": opts.first_exporter, "opset": opts.opset,
                "batch": None if opts.dynamic_batch else opts.batch, **export},
        stages=opts.stages,
        versions=_versions(),
    )


def export_bundle(
    name: str,
    out_dir: str | os.PathLike,
    options: ExportOptions | None = None,
    *,
    force: bool = False,
    step: Callable[[str], None] | None = None,
    **kw,
) -> ExportResult:
    """Export registered model `name` into bundle `out_dir` (layout: hrdeploy/bundle.py).

    Options come as an ExportOptions or as keyword arguments of its fields. Every input and the output
    path are checked before the model is built; the bundle is written to a temporary folder beside
    `out_dir` and renamed into place at the end, so a failure or Ctrl-C leaves no partial bundle, and the
    temporary folder of a killed run is removed by the next one. `step(text)` reports progress.
    """
    step = step or (lambda text: None)
    opts = replace(options or ExportOptions(), **kw).validated()
    spec = get_spec(name)
    dataset = check_dataset(spec, opts.dataset)
    size = check_input_size(spec, opts.input_size or spec.input_size(dataset))
    if opts.checkpoint is not None and not Path(opts.checkpoint).is_file():
        raise UserError(f"checkpoint {opts.checkpoint} {not_a_file(opts.checkpoint)}; pass the path of a .pth or "
                        ".safetensors file")
    out_dir = check_out_dir(out_dir, force)
    start = time.perf_counter()
    with _writing(out_dir):
        check_out_dir(out_dir, force)  # again under the lock: another export may have finished meanwhile
        try:
            work = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".tmp", dir=out_dir.parent))
        except OSError as err:
            raise UserError(f"cannot write into {out_dir.parent} ({err.strerror}); choose another -o") from err
        try:
            with torch_threads():
                manifest, parity, simplify_error = _export_into(work, name, spec, opts, dataset, size, start, step)
            step("writing the bundle")
            check_out_dir(out_dir, force)
            os.chmod(work, 0o755)  # mkdtemp makes 0700 directories
            if out_dir.exists():
                trash = out_dir.with_name(f".{out_dir.name}.old-{os.getpid()}")
                os.replace(out_dir, trash)
                os.replace(work, out_dir)
                shutil.rmtree(trash, ignore_errors=True)
            else:
                os.replace(work, out_dir)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    return ExportResult(out_dir, manifest, parity, simplify_error, time.perf_counter() - start)


def _parity(eager: Any, spec: ModelSpec, onnx_path: Path, cases: list[ParityCase], exporter: str) -> dict:
    """The ONNX on onnxruntime against the eager model (and its float64 copy for the fp32 floor) on `cases`."""
    from onnxruntime.capi.onnxruntime_pybind11_state import Fail, InvalidArgument, RuntimeException

    from hrdeploy.runtime.factory import eager_runner, open_runner
    from hrdeploy.runtime.onnxruntime import run_failure

    heatmaps = tuple(n for n in spec.output_names if n.startswith("heatmaps")) if spec.is_pose else ()
    with open_runner(onnx_path, threads=1) as ort_runner:
        try:
            return compare(eager_runner(eager, spec.output_names), ort_runner, cases, heatmap_outputs=heatmaps,
                           exact_reference=eager_runner(eager, spec.output_names, exact=True))
        except (Fail, InvalidArgument, RuntimeException) as err:  # the graph kept a shape of the export sample
            other = "dynamo" if exporter == "torchscript" else "torchscript"
            raise UserError(
                f"the {exporter}-exported graph does not run on onnxruntime at every parity input "
                f"({run_failure(err)}); export with --exporter {other}"
            ) from err


def _export_graph(
    deployable: Any, onnx_path: Path, spec: ModelSpec, opts: ExportOptions, size: tuple[int, int],
    clock: PhaseClock, step: Callable[[str], None],
) -> tuple[str, dict[str, str] | None]:
    """Export with the first exporter, or with the fallback when the automatic choice cannot export the model.
    Returns the exporter used and, after a fallback, what the first one reported."""

    def export(exporter: str) -> None:
        with clock.phase(f"export_{exporter}"):
            export_onnx(
                deployable, onnx_path, size, list(spec.output_names), batch=opts.batch,
                dynamic_batch=opts.dynamic_batch, dynamic_shape=opts.dynamic_shape, stride=spec.stride,
                opset=opts.opset, exporter=exporter,
            )

    exporter = opts.first_exporter
    why = " for a dynamic height and width" if opts.exporter is None and opts.dynamic_shape else ""
    step(f"exporting ONNX ({exporter}{why}, opset {opts.opset}, input {size[0]}x{size[1]})")
    try:
        export(exporter)
        return exporter, None
    except ExporterError as err:
        if opts.exporter is not None or exporter == FALLBACK_EXPORTER:  # nothing else to try
            raise
        fallback = {"exporter": err.exporter, "error": err.reason}
        check_opset(opts.opset, FALLBACK_EXPORTER, f"the {err.exporter} exporter could not export this model "
                                                   f"({err.reason}) and its fallback cannot run: ")
        step(f"{err.exporter} could not export this model ({err.reason[:120]}); exporting with "
             f"{FALLBACK_EXPORTER} instead")
    onnx_path.unlink(missing_ok=True)
    export(FALLBACK_EXPORTER)
    return FALLBACK_EXPORTER, fallback


def _clean_graph(
    model: onnx.ModelProto, opts: ExportOptions, clock: PhaseClock, step: Callable[[str], None],
) -> tuple[onnx.ModelProto, str | None, Any]:
    """onnxsim (its error kept, not raised) and the exact graph passes, as the options ask."""
    simplify_error = None
    if opts.simplify:
        step("simplifying (onnxsim)")
        with clock.phase("onnxsim"):
            model, simplify_error = simplify(model)
    graph_passes = None
    if opts.rewrite and opts.graph_passes:
        from hrdeploy.optimize import optimize_graph

        step("exact graph passes")
        with clock.phase("graph_passes"):
            model, graph_passes = optimize_graph(model)
    return model, simplify_error, graph_passes


def _export_into(
    work: Path, name: str, spec: ModelSpec, opts: ExportOptions, dataset: str, size: tuple[int, int],
    start: float, step: Callable[[str], None],
) -> tuple[Manifest, dict, str | None]:
    """Build, rewrite, export, simplify, optimise and parity-check `name` into folder `work`."""
    clock = PhaseClock()
    step(f"building {name} ({dataset}, {'checkpoint ' + opts.checkpoint if opts.checkpoint else 'seeded weights'})")
    with clock.phase("build_model"):
        eager = build_model(name, dataset=dataset, checkpoint=opts.checkpoint, seed=opts.seed)
    if opts.rewrite:
        from hrdeploy.rewrite import apply

        step("rewriting for export")
        with clock.phase("rewrite"):
            deployable, rewrites = apply(eager)
    else:
        deployable, rewrites = eager, []

    onnx_path = work / ONNX_FILE
    exporter, fallback = _export_graph(deployable, onnx_path, spec, opts, size, clock, step)
    with clock.phase("check"):
        model = check_and_infer(onnx_path)
    model, simplify_error, graph_passes = _clean_graph(model, opts, clock, step)
    export_info = {
        "simplified": opts.simplify and simplify_error is None,
        **({"fallback_from": fallback} if fallback else {}),
        **({"simplify_error": simplify_error} if simplify_error else {}),
        "graph_passes": graph_passes,
    }
    manifest = build_manifest(spec, replace(opts, exporter=exporter), dataset, size, rewrites, export_info)
    set_metadata(model, manifest_metadata(manifest))
    onnx.save(model, os.fspath(onnx_path))
    export_seconds = time.perf_counter() - start

    step("parity: onnxruntime vs eager")
    with clock.phase("parity"):
        parity = _parity(eager, spec, onnx_path, _parity_cases(opts, size, spec.stride), exporter)
    parity["stage"] = "export"
    manifest = manifest.model_copy(update={
        "export": {**manifest.export, "seconds": round(export_seconds, 2), "phases": clock.to_dict()},
        "artifacts": {"onnx": ArtifactEntry(file=ONNX_FILE, precision="fp32", sha256=sha256(onnx_path),
                                            size_bytes=onnx_path.stat().st_size)},
        "parity": {"export": {"passed": parity["passed"], "file": "parity.json"}},
    })
    write_json(work / "parity.json", {"export": parity})
    write_text(work / "parity.md", to_markdown(parity, f"Export parity: {name} (fp32 ONNX vs eager)"))
    Bundle.write_new(work, manifest)
    return manifest, parity, simplify_error
