"""`export_bundle`: the whole export stage, written into a bundle directory atomically."""

from __future__ import annotations

import copy
import os
import platform
import shutil
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path

import onnx

from hrdeploy import __version__
from hrdeploy.errors import UserError
from hrdeploy.export.metadata import manifest_metadata, set_metadata
from hrdeploy.export.onnx_export import INPUT_NAME, check_and_infer, export_onnx, simplify
from hrdeploy.export.options import ExportOptions
from hrdeploy.export.parity import ParityCase, compare, to_markdown
from hrdeploy.export.phases import PhaseClock
from hrdeploy.export.threads import torch_threads
from hrdeploy.io import sha256, write_json, write_text
from hrdeploy.manifest import FORMAT, MANIFEST
from hrdeploy.registry import ModelSpec, get_spec
from hrdeploy.zoo import build_model, check_dataset, check_input_size

ONNX_FILE = "model.onnx"
PARITY_DYNAMIC_BATCH = 4


@dataclass
class ExportResult:
    bundle: Path
    manifest: dict
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


def _prepare_out_dir(out_dir: Path, force: bool) -> None:
    if out_dir.exists() and not out_dir.is_dir():
        raise UserError(f"output path {out_dir} is a file; pass a directory for the bundle")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not force:
        raise UserError(f"bundle {out_dir} already exists; pass --force to replace it or choose another -o")


def _parity_cases(opts: ExportOptions, size: tuple[int, int], stride: int) -> list[ParityCase]:
    cases = [ParityCase(1 if opts.dynamic_batch else opts.batch, size, seed=0)]
    if opts.dynamic_batch:
        cases.append(ParityCase(PARITY_DYNAMIC_BATCH, size, seed=1))
    if opts.dynamic_shape:  # a second size: 1.5x each side, rounded to the stride
        h, w = (max(2 * stride, round(v * 1.5 / stride) * stride) for v in size)
        cases.append(ParityCase(2, (h, w), seed=2))
    return cases


def build_manifest(spec: ModelSpec, opts: ExportOptions, dataset: str, size: tuple[int, int], rewrites: list[str]):
    """The manifest of a freshly exported bundle (artifacts are added by the caller)."""
    kps = spec.keypoint_set(dataset)
    batch_dim = "batch" if opts.dynamic_batch else opts.batch
    shape = [batch_dim, 3, "height" if opts.dynamic_shape else size[0], "width" if opts.dynamic_shape else size[1]]
    channels = spec.num_outputs(dataset)
    outputs = []
    for name, stride in zip(spec.output_names, spec.output_strides, strict=True):
        # HigherHRNet's 1/4 map carries heatmaps and associative-embedding tags (2K channels).
        ch = 2 * channels if name == "heatmaps_tags" else channels
        outputs.append({"name": name, "stride": stride, "channels": ch})
    return {
        "format": FORMAT,
        "model": {
            "name": spec.name, "family": spec.family, "task": spec.task, "dataset": dataset,
            "upstream": spec.upstream, "checkpoint": opts.checkpoint, "seed": opts.seed,
        },
        "input": {
            "name": INPUT_NAME, "shape": shape, "layout": "NCHW", "color": "RGB", "scale": 255.0,
            "mean": list(spec.mean), "std": list(spec.std), "height": size[0], "width": size[1],
            "dynamic_batch": opts.dynamic_batch, "dynamic_shape": opts.dynamic_shape, "stride": spec.stride,
        },
        "outputs": outputs,
        "keypoints": None if kps is None else {
            "dataset": kps.name, "names": list(kps.keypoints),
            "flip_pairs": [list(p) for p in kps.flip_pairs], "skeleton": [list(p) for p in kps.skeleton],
        },
        "rewrites": rewrites,
        "export": {
            "exporter": opts.exporter, "opset": opts.opset, "batch": None if opts.dynamic_batch else opts.batch,
            "simplified": None,
        },
        "stages": opts.stages,
        "artifacts": {},
        "versions": _versions(),
    }


def export_bundle(
    name: str, out_dir: str | os.PathLike, options: ExportOptions | None = None, *, force: bool = False, **kw
) -> ExportResult:
    """Export registered model `name` into bundle `out_dir` (see hrdeploy/manifest.py for the layout).

    Options come as an ExportOptions or as keyword arguments of its fields. The bundle is written to a
    temporary directory and renamed into place at the end, so a failure leaves no partial bundle.
    """
    opts = replace(options or ExportOptions(), **kw).validated()
    out_dir = Path(out_dir)
    _prepare_out_dir(out_dir, force)
    spec = get_spec(name)
    dataset = check_dataset(spec, opts.dataset)
    size = check_input_size(spec, opts.input_size or spec.input_size(dataset))
    with torch_threads():
        return _export(name, out_dir, opts, spec, dataset, size)


def _export(name: str, out_dir: Path, opts: ExportOptions, spec: ModelSpec, dataset: str, size: tuple[int, int]):
    start = time.perf_counter()
    clock = PhaseClock()
    with clock.phase("build_model"):
        eager = build_model(name, dataset=dataset, checkpoint=opts.checkpoint, seed=opts.seed)
    if opts.rewrite:
        from hrdeploy.rewrite import apply

        with clock.phase("rewrite"):
            deployable, rewrites = apply(eager)
    else:
        deployable, rewrites = eager, []

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".tmp", dir=out_dir.parent))
    try:
        onnx_path = work / ONNX_FILE
        with clock.phase(f"export_{opts.exporter}"):
            export_onnx(
                deployable, onnx_path, size, list(spec.output_names), batch=opts.batch,
                dynamic_batch=opts.dynamic_batch, dynamic_shape=opts.dynamic_shape, stride=spec.stride,
                opset=opts.opset, exporter=opts.exporter,
            )
        with clock.phase("check"):
            model = check_and_infer(onnx_path)
        simplify_error = None
        if opts.simplify:
            with clock.phase("onnxsim"):
                model, simplify_error = simplify(model)
        graph_passes = None
        if opts.rewrite and opts.graph_passes:
            from hrdeploy.optimize import optimize_graph

            with clock.phase("graph_passes"):
                model, graph_passes = optimize_graph(model)
        manifest = build_manifest(spec, opts, dataset, size, rewrites)
        manifest["export"]["simplified"] = opts.simplify and simplify_error is None
        if simplify_error:
            manifest["export"]["simplify_error"] = simplify_error
        manifest["export"]["graph_passes"] = graph_passes
        set_metadata(model, manifest_metadata(manifest))
        onnx.save(model, os.fspath(onnx_path))
        export_seconds = time.perf_counter() - start

        from torch import float64

        from hrdeploy.runtime.eager import EagerRunner
        from hrdeploy.runtime.onnxruntime import OrtRunner

        heatmaps = tuple(n for n in spec.output_names if n.startswith("heatmaps")) if spec.is_pose else ()
        with clock.phase("parity"):
            parity = compare(
                EagerRunner(eager, spec.output_names), OrtRunner(onnx_path, threads=1),
                _parity_cases(opts, size, spec.stride), heatmap_outputs=heatmaps,
                exact_reference=EagerRunner(copy.deepcopy(eager).double(), spec.output_names, dtype=float64),
            )
        parity["stage"] = "export"
        manifest["export"]["seconds"] = round(export_seconds, 2)
        manifest["export"]["phases"] = clock.to_dict()
        manifest["artifacts"]["onnx"] = {
            "file": ONNX_FILE, "precision": "fp32", "sha256": sha256(onnx_path),
            "size_bytes": onnx_path.stat().st_size,
        }
        manifest["parity"] = {"export": {"passed": parity["passed"], "file": "parity.json"}}
        write_json(work / "parity.json", {"export": parity})
        write_text(work / "parity.md", to_markdown(parity, f"Export parity: {name} (fp32 ONNX vs eager)"))
        write_json(work / MANIFEST, manifest)
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
