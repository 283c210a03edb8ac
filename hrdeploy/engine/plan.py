"""BuildPlan: everything a TensorRT engine build will do, decided before TensorRT is touched.

`describe_source` reads what the build starts from (a bundle's manifest and ONNX artifacts, or a bare
ONNX); `make_plan` combines it with the user's options and the TensorRT generation into a `BuildPlan`.
`make_plan` is pure, so plans for both generations can be made, printed as trtexec lines and tested on
a machine without TensorRT; the builder (`hrdeploy.engine.builder`) only applies a plan.

Generations (TensorRT 10.x -> 11.x migration guide):
- 10.x, `precision_from="flags"` (default): FP32 ONNX + BuilderFlag.FP16 for fp16; the INT8 Q/DQ ONNX +
  BuilderFlag.INT8 (and FP16, for the layers left unquantized, like `trtexec --int8 --fp16`) for int8.
- 10.x, `precision_from="onnx"`, and always on 11.x: strongly typed; the precision is that of the ONNX
  (the bundle's fp16 / int8 artifact). A missing fp16 ONNX is made first (hrdeploy.precision); a missing
  int8 one needs calibration photos, so the build asks for `hrdeploy quantize --calib-dir`. 11.x removed the
  precision flags.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from hrdeploy.bundle import PRECISIONS, Bundle
from hrdeploy.engine.version import version_at_least
from hrdeploy.errors import UserError

HARDWARE_COMPAT = ("ampere+", "same-cc")
PRECISION_FROM = ("flags", "onnx")
# manifest artifact key of the ONNX that carries each precision
ONNX_KEYS = {"fp32": "onnx", "fp16": "fp16", "int8": "int8"}
DLA_TRT11_MIN = "11.4.1"  # TensorRT 11.0-11.3 have no DLA; 11.4.1 restores it on AGX Orin (JetPack >= 7.2.2)
SAME_CC_TRT10_MIN = "10.9"  # HardwareCompatibilityLevel.SAME_COMPUTE_CAPABILITY


@dataclass(frozen=True)
class OnnxInput:
    name: str
    shape: tuple[int | str | None, ...]  # int = static, str = named dynamic dim, None = unknown


@dataclass(frozen=True)
class Source:
    """What a build starts from: a bundle (manifest + ONNX artifacts) or a bare ONNX file."""

    path: Path
    inputs: tuple[OnnxInput, ...]
    bundle: Path | None = None
    onnx_files: Mapping[str, Path] = field(default_factory=dict)  # precision -> existing ONNX
    size: tuple[int, int] | None = None  # (H, W) from the manifest, for dynamic height/width
    onnx_precision: str | None = None  # precision of a bare ONNX graph (fp32 / fp16 / int8)
    model: str | None = None
    opened: Bundle | None = field(default=None, repr=False, compare=False)  # the bundle, opened once per build


@dataclass(frozen=True)
class BuildOptions:
    """The user's build options (the `hrdeploy build` flags)."""

    precision: str = "fp16"
    min_batch: int | None = None
    opt_batch: int | None = None
    max_batch: int | None = None
    workspace_gib: float | None = None
    timing_cache: Path | None = None
    builder_opt_level: int | None = None
    dla_core: int | None = None
    gpu_fallback: bool = False
    version_compatible: bool = False
    hardware_compat: str | None = None  # "ampere+" | "same-cc"
    precision_from: str | None = None  # "flags" | "onnx"; default: flags on 10.x, onnx on 11.x
    output: Path | None = None


@dataclass(frozen=True)
class ShapeProfile:
    """One input's optimization profile (min / opt / max shapes)."""

    input: str
    min: tuple[int, ...]
    opt: tuple[int, ...]
    max: tuple[int, ...]

    @property
    def dynamic(self) -> bool:
        return not (self.min == self.opt == self.max)


@dataclass(frozen=True)
class BuildPlan:
    generation: int  # 10 or 11
    trt_version: str | None  # the installed TensorRT, or None for a plan made only to print
    precision: str
    precision_from: str  # "flags" | "onnx"
    strongly_typed: bool
    onnx: Path  # the ONNX TensorRT parses
    onnx_key: str | None  # its manifest artifact key (bundles)
    make_first: str | None  # precision ONNX to create before building (missing from the bundle)
    engine: Path
    metadata: Path  # engine.json written beside the engine
    artifact_key: str | None  # manifest key the engine is recorded under (None: engine outside the bundle)
    bundle: Path | None
    profiles: tuple[ShapeProfile, ...]
    builder_flags: tuple[str, ...]  # trt.BuilderFlag names
    workspace_bytes: int | None = None
    timing_cache: Path | None = None
    builder_opt_level: int | None = None
    dla_core: int | None = None
    gpu_fallback: bool = False
    version_compatible: bool = False
    hardware_compat: str | None = None
    notes: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        for key, value in d.items():
            if isinstance(value, Path):
                d[key] = os.fspath(value)
        d["profiles"] = [
            {"input": p.input, "min": list(p.min), "opt": list(p.opt), "max": list(p.max)} for p in self.profiles
        ]
        d["builder_flags"] = list(self.builder_flags)
        d["notes"] = list(self.notes)
        return d


# ------------------------------------------------------------------------------------------ source


def onnx_graph_precision(model: Any) -> str:
    """'int8' for a Q/DQ graph, 'fp16' when it holds FP16 tensors, else 'fp32'."""
    from onnx import TensorProto

    g = model.graph
    if any(n.op_type in ("QuantizeLinear", "DequantizeLinear") for n in g.node):
        return "int8"
    if any(t.data_type == TensorProto.FLOAT16 for t in g.initializer):
        return "fp16"
    for vi in [*g.input, *g.output, *g.value_info]:
        if vi.type.tensor_type.elem_type == TensorProto.FLOAT16:
            return "fp16"
    if any(n.op_type == "Cast" and any(a.name == "to" and a.i == TensorProto.FLOAT16 for a in n.attribute)
           for n in g.node):
        return "fp16"
    return "fp32"


def _inputs(model: Any) -> tuple[OnnxInput, ...]:
    inits = {t.name for t in model.graph.initializer}
    out = []
    for vi in model.graph.input:
        if vi.name in inits:
            continue
        dims = tuple(
            d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in vi.type.tensor_type.shape.dim
        )
        out.append(OnnxInput(vi.name, dims))
    return tuple(out)


def describe_source(source: str | os.PathLike | Bundle) -> Source:
    """Read a bundle (its directory, or the Bundle already opened) or a bare .onnx into a `Source` (reads
    headers only, no weights)."""
    from hrdeploy.bundle import load_onnx

    if isinstance(source, Bundle):
        return _bundle_source(source)
    path = Path(source)
    if path.is_dir():
        return _bundle_source(Bundle.open(path))
    if path.is_file() and path.suffix == ".onnx":
        model = load_onnx(path)
        precision = onnx_graph_precision(model)
        return Source(path=path, inputs=_inputs(model), onnx_files={precision: path}, onnx_precision=precision)
    if not path.exists():
        raise UserError(f"{path} does not exist; pass a bundle directory (hrdeploy export) or an .onnx file")
    raise UserError(f"{path} is neither a bundle directory nor an .onnx file")


def _bundle_source(bundle: Bundle) -> Source:
    """A bundle's ONNX files by precision, input and size; the Source keeps the Bundle for the builder."""
    path = bundle.root
    files = {a.precision: bundle.artifact(k).path for k, a in bundle.onnx_artifacts().items()
             if a.exists and k == ONNX_KEYS.get(a.precision)}
    if "fp32" not in files:
        raise UserError(f"bundle {path} has no ONNX model; re-create it with `hrdeploy export MODEL -o {path}`")
    model = bundle.artifact("onnx").onnx_model()
    return Source(path=path, inputs=_inputs(model), bundle=path, onnx_files=files, size=bundle.input.size,
                  model=bundle.model.name, opened=bundle)


# ------------------------------------------------------------------------------------------ plan


def _profile(inp: OnnxInput, opts: BuildOptions, size: tuple[int, int] | None) -> ShapeProfile:
    """min/opt/max shapes of one input: batch from the options, other dynamic dims from the bundle size."""
    fixed: list[int] = []
    for axis, dim in enumerate(inp.shape[1:], start=1):
        if isinstance(dim, int) and dim > 0:
            fixed.append(dim)
        elif size is not None and axis in (2, 3) and len(inp.shape) == 4:
            fixed.append(size[axis - 2])
        else:
            raise UserError(
                f"input '{inp.name}' dim {axis} ({dim or 'unnamed'}) is dynamic and there is no size for it; "
                "build from the bundle directory (its manifest has the input size)"
            )
    batch = inp.shape[0] if inp.shape else 1
    asked = {k: v for k, v in (("--min-batch", opts.min_batch), ("--opt-batch", opts.opt_batch),
                                ("--max-batch", opts.max_batch)) if v is not None}
    if isinstance(batch, int) and batch > 0:
        wrong = [f"{k} {v}" for k, v in asked.items() if v != batch]
        if wrong:
            raise UserError(
                f"input '{inp.name}' has a static batch of {batch}, so {', '.join(wrong)} cannot apply; "
                "re-export with --dynamic-batch (hrdeploy export NAME --dynamic-batch)"
            )
        lo = opt = hi = batch
    else:
        lo = opts.min_batch or 1
        hi = opts.max_batch or max(lo, opts.opt_batch or 1)
        opt = opts.opt_batch or max(lo, hi // 2)
        if not lo <= opt <= hi:
            raise UserError(f"batch profile must satisfy min <= opt <= max; got {lo} / {opt} / {hi}")
    rest = tuple(fixed)
    return ShapeProfile(inp.name, (lo, *rest), (opt, *rest), (hi, *rest))


def _strip_precision(stem: str) -> str:
    for p in PRECISIONS:
        if stem.endswith(f".{p}"):
            return stem[: -len(p) - 1]
    return stem


def make_plan(source: Source, opts: BuildOptions, generation: int, trt_version: str | None = None) -> BuildPlan:
    """Decide the build for TensorRT `generation` (10 or 11); UserError for impossible combinations."""
    precision = opts.precision
    precision_from = _precision_from(opts, generation)
    notes = _device_notes(opts, generation, trt_version)
    onnx_path, onnx_key, make_first, note = _onnx_for(source, precision, precision_from, generation)
    notes += [note] if note else []
    profiles = tuple(_profile(inp, opts, source.size) for inp in source.inputs)
    if opts.dla_core is not None and any(p.dynamic for p in profiles):
        notes.append("DLA needs static shapes: layers with a dynamic batch fall back to the GPU or fail")
    engine, artifact_key = _engine_path(source, opts, onnx_path)
    if source.bundle is not None and artifact_key is None:
        notes.append("the engine is written outside the bundle, so the manifest does not record it")
    workspace = None if opts.workspace_gib is None else int(round(opts.workspace_gib * (1 << 30)))
    if workspace is not None and workspace <= 0:
        raise UserError("--workspace must be a positive number of GiB")
    return BuildPlan(
        generation=generation, trt_version=trt_version, precision=precision, precision_from=precision_from,
        strongly_typed=precision_from == "onnx", onnx=onnx_path, onnx_key=onnx_key, make_first=make_first,
        engine=engine, metadata=engine.with_name(engine.name + ".json"), artifact_key=artifact_key,
        bundle=source.bundle, profiles=profiles, builder_flags=_builder_flags(opts, precision_from),
        workspace_bytes=workspace, timing_cache=opts.timing_cache, builder_opt_level=opts.builder_opt_level,
        dla_core=opts.dla_core, gpu_fallback=opts.gpu_fallback, version_compatible=opts.version_compatible,
        hardware_compat=opts.hardware_compat, notes=tuple(notes),
    )


def _precision_from(opts: BuildOptions, generation: int) -> str:
    """Where the build's precision comes from: builder flags (TensorRT 10's default) or the ONNX's types."""
    if generation not in (10, 11):
        raise UserError(f"unknown TensorRT generation {generation}; use 10 or 11")
    if opts.precision not in PRECISIONS:
        raise UserError(f"unknown precision {opts.precision!r}; use one of {', '.join(PRECISIONS)}")
    precision_from = opts.precision_from or ("flags" if generation == 10 else "onnx")
    if precision_from not in PRECISION_FROM:
        raise UserError(f"unknown --precision-from {precision_from!r}; use flags or onnx")
    if generation == 11 and precision_from == "flags":
        raise UserError(
            "TensorRT 11 removed the precision builder flags (BuilderFlag.FP16/INT8, trtexec --fp16/--int8): "
            "precision comes from the ONNX; drop --precision-from flags"
        )
    return precision_from


def _device_notes(opts: BuildOptions, generation: int, trt_version: str | None) -> list[str]:
    """DLA and hardware-compatibility checks: the notes they leave, UserError when impossible."""
    notes: list[str] = []
    if opts.gpu_fallback and opts.dla_core is None:
        raise UserError("--gpu-fallback only applies to DLA builds; add --dla-core N or drop it")
    if opts.dla_core is not None:
        if opts.precision == "fp32":
            raise UserError("DLA runs FP16 and INT8 only; use --precision fp16 or int8 with --dla-core")
        if opts.hardware_compat:
            raise UserError("--hardware-compat is for Ampere+ discrete GPUs, not DLA; drop one of them")
        if generation == 11:
            if trt_version is not None and not version_at_least(trt_version, DLA_TRT11_MIN):
                raise UserError(
                    f"TensorRT {trt_version} has no DLA (removed in 11.0, back in {DLA_TRT11_MIN} on AGX Orin with "
                    "JetPack >= 7.2.2); use TensorRT 10.x (JetPack 6) or upgrade"
                )
            notes.append(f"DLA on TensorRT 11 needs {DLA_TRT11_MIN}+ on AGX Orin (JetPack >= 7.2.2)")
        if not opts.gpu_fallback:
            notes.append("without --gpu-fallback every layer must run on DLA or the build fails")
    if opts.hardware_compat is not None:
        if opts.hardware_compat not in HARDWARE_COMPAT:
            raise UserError(f"unknown --hardware-compat {opts.hardware_compat!r}; use ampere+ or same-cc")
        if opts.hardware_compat == "same-cc" and generation == 10:
            if trt_version is not None and not version_at_least(trt_version, SAME_CC_TRT10_MIN):
                raise UserError(f"--hardware-compat same-cc needs TensorRT >= {SAME_CC_TRT10_MIN}; "
                                f"this host has {trt_version}: use ampere+ or upgrade")
            if trt_version is None:
                notes.append(f"--hardware-compat same-cc needs TensorRT >= {SAME_CC_TRT10_MIN}")
    return notes


def _onnx_for(source: Source, precision: str, precision_from: str,
              generation: int) -> tuple[Path, str | None, str | None, str | None]:
    """The ONNX the build reads: (path, its manifest key, the precision to make first, a note)."""
    if source.bundle is not None:
        want = "fp32" if precision_from == "flags" and precision != "int8" else precision
        if want in source.onnx_files:
            return source.onnx_files[want], ONNX_KEYS[want], None, None
        how = "it is made first" if want == "fp16" else "make it first with calibration photos"
        note = (f"the bundle has no {want} ONNX: {how} (hrdeploy quantize {source.bundle} --precision {want}"
                f"{' --calib-dir PHOTOS' if want == 'int8' else ''})")
        return source.bundle / f"model.{want}.onnx", ONNX_KEYS[want], want, note
    graph = source.onnx_precision or "fp32"
    ok = {"fp32": ("fp32",), "fp16": ("fp32", "fp16"), "int8": ("int8",)}[precision] \
        if precision_from == "flags" else (precision,)
    if graph not in ok:
        how = ("TensorRT 11 takes the precision from the graph" if generation == 11
               else "strongly typed builds take the precision from the graph" if precision_from == "onnx"
               else "INT8 needs explicit Q/DQ nodes (implicit calibration is deprecated in 10.x, gone in 11)")
        raise UserError(
            f"{source.path.name} is an {graph} graph but --precision {precision} was asked and {how}; pass "
            f"--precision {graph}, or build from the bundle so hrdeploy can make the {precision} ONNX "
            f"(hrdeploy quantize BUNDLE --precision {precision})"
        )
    return source.path, None, None, None


def _builder_flags(opts: BuildOptions, precision_from: str) -> tuple[str, ...]:
    flags: list[str] = []
    if precision_from == "flags":
        flags += {"fp32": [], "fp16": ["FP16"], "int8": ["INT8", "FP16"]}[opts.precision]
    if opts.dla_core is not None and opts.gpu_fallback:
        flags.append("GPU_FALLBACK")
    if opts.version_compatible:
        flags.append("VERSION_COMPATIBLE")
    return tuple(flags)


def _engine_path(source: Source, opts: BuildOptions, onnx_path: Path) -> tuple[Path, str | None]:
    """Where the engine goes, and its manifest key when that is inside the bundle."""
    if opts.output is not None:
        engine = Path(opts.output)
    elif source.bundle is not None:
        engine = source.bundle / f"model.{opts.precision}.engine"
    else:
        engine = onnx_path.with_name(f"{_strip_precision(onnx_path.stem)}.{opts.precision}.engine")
    if source.bundle is None:
        return engine, None
    try:
        Path(os.path.abspath(engine)).relative_to(os.path.abspath(source.bundle))
    except ValueError:
        return engine, None
    return engine, f"engine_{opts.precision}"
