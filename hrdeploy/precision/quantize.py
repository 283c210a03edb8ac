"""`quantize_bundle`: add an FP16 or INT8 (Q/DQ) ONNX to a bundle, validated on onnxruntime CPU.

Reads the bundle's fp32 `model.onnx` and manifest, converts (hrdeploy.precision.fp16 / .int8), checks the
variant against the eager fp32 model with hrdeploy.parity (person crops for pose models), and only then moves
`model.<precision>.onnx` and its reports into the bundle and records them in the manifest. Any error before
that point leaves the bundle unchanged.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from hrdeploy.bundle import Bundle
from hrdeploy.errors import UserError, missing_dependency
from hrdeploy.io import atomic_path, write_json, write_text
from hrdeploy.parity.bootstrap import DEFAULT_RESAMPLES
from hrdeploy.parity.coco import CocoKeypoints, CropSet, ImageCache, PersonBox
from hrdeploy.parity.compare import bounds_for, judge, tensor_stats
from hrdeploy.parity.pose import Reference, check_pose
from hrdeploy.parity.tolerances import TOLERANCES, Tolerance
from hrdeploy.precision import graph as G
from hrdeploy.precision.calib import ImageSet, batches, default_images, load_images, static_batch
from hrdeploy.precision.evaluate import (
    block_sensitivity,
    eager_outputs,
    input_noise_reference,
    layer_drift,
    run_batches,
)
from hrdeploy.precision.int8 import DEFAULT_METHOD, METHODS
from hrdeploy.precision.targets import DEFAULT_MAX_AP_DROP, DEFAULT_MIN_OKS, DEFAULT_SEED, DEFAULT_TUNE_SHARE
from hrdeploy.precision.tuning import (
    check_tuning_size,
    describe_split,
    search_int8,
    split_by_photo,
    tuning_annotations,
)
from hrdeploy.runtime.onnxruntime import OrtRunner

PRECISIONS = ("fp16", "int8")
BACKENDS = ("auto", "modelopt", "ort")
FILES = {"fp16": "model.fp16.onnx", "int8": "model.int8.onnx"}
DEFAULT_VAL_SAMPLES = 16
DRIFT_IMAGES = 2  # layer drift and sensitivity run on the first few validation images
CALIB_BATCH = 8  # calibration batch for dynamic-batch graphs


def modelopt_available() -> bool:
    """True when nvidia-modelopt's ONNX quantization can be imported."""
    try:
        return all(importlib.util.find_spec(m) is not None for m in ("modelopt", "modelopt.onnx"))
    except (ImportError, ValueError):
        return False


def resolve_backend(backend: str, precision: str = "int8") -> str:
    """'auto' -> 'ort' for int8 (the backend whose INT8 keeps COCO AP on the trained network, see
    benchmarks/RESULTS.md), and for fp16 'modelopt' (AutoCast) when installed, else 'ort'; 'modelopt'
    without it is a UserError."""
    if backend not in BACKENDS:
        raise UserError(f"unknown backend {backend!r}; use one of {', '.join(BACKENDS)}")
    if backend == "modelopt" and not modelopt_available():
        err = missing_dependency("nvidia-modelopt[onnx]", extra="int8", purpose="--backend modelopt")
        raise UserError(f"{err}, or use --backend ort") from None
    if backend == "auto":
        return "modelopt" if precision == "fp16" and modelopt_available() else "ort"
    return backend


def _check_search_numbers(max_ap_drop: float, min_oks: float, tune_share: float, bootstrap: int) -> None:
    import math

    if not (math.isfinite(max_ap_drop) and max_ap_drop >= 0):
        raise UserError(f"--max-ap-drop must be a number of AP points >= 0, got {max_ap_drop}")
    if not (math.isfinite(min_oks) and 0 < min_oks <= 1):
        raise UserError(f"--min-oks must be in (0, 1], got {min_oks}")
    if not (math.isfinite(tune_share) and 0 < tune_share < 1):
        raise UserError(f"--tune-share must be between 0 and 1, got {tune_share}")
    if bootstrap < 0:
        raise UserError(f"--bootstrap must be 0 (off) or a number of resamples, got {bootstrap}")


def _check_exclude(model: onnx.ModelProto, patterns: Sequence[str], scopes: dict[str, str]) -> None:
    hits = G.match_nodes(model, patterns, scopes)
    missing = [p for p, names in hits.items() if not names]
    if missing:
        examples = sorted({s.rsplit(".", 1)[0] for s in scopes.values() if s})[:3]
        raise UserError(
            f"--exclude {missing[0]!r} matches no node of the model; patterns are globs over node names, op "
            f"types and module paths, e.g. {', '.join(repr(e + '*') for e in examples) or 'Sigmoid'}"
        )


def _eager_heatmaps(b: Bundle, threads: int | None) -> Callable[[np.ndarray], np.ndarray]:
    """The bundle's eager fp32 model as NCHW -> first output (built on first use: it is the slow part)."""
    state: dict[str, Any] = {}

    def run(x: np.ndarray) -> np.ndarray:
        if "runner" not in state:
            from hrdeploy.runtime.eager import EagerRunner

            state["runner"] = EagerRunner(b.eager_model(), b.output_names, threads=threads)
        return state["runner"].run(x)[b.output_names[0]]

    return run


def _people(
    b: Bundle, folder: str | os.PathLike, samples: int | None, ann: str | os.PathLike | None,
    finder: Callable[[np.ndarray], np.ndarray], photos: ImageCache | None = None,
) -> tuple[list[PersonBox], int, str]:
    """People in the photos of `folder`: the boxes of `ann`, else where `finder` (fp32) finds a person.

    Returns the boxes, the number of photos or boxes available, and how they were found.
    """
    from hrdeploy.images import image_files
    from hrdeploy.parity.crops import PEOPLE_PER_PHOTO, boxes_from_annotations, find_people

    if ann is not None:
        boxes = boxes_from_annotations(ann, folder, b.input.size)
        if samples is not None:
            keep = sorted({p.file for p in boxes})[:samples]
            boxes = [p for p in boxes if p.file in keep]
        return boxes, len(boxes), f"person boxes of {Path(ann).name}"
    files = image_files(folder)
    boxes = find_people(files[:samples], finder, b.input.size, b.input.mean, b.input.std, photos, PEOPLE_PER_PHOTO)
    return boxes, len(files), "person crops found by the fp32 model"


def _crop_set(b: Bundle, boxes: list[PersonBox], source: str, available: int,
              photos: ImageCache | None = None) -> tuple[CropSet, ImageSet]:
    crops = CropSet.build(boxes, b.input.size, b.input.mean, b.input.std, photos)
    names = [f"{p.file.name}@{','.join(f'{v:.0f}' for v in p.box)}" for p in boxes]
    return crops, ImageSet(crops.x, names, source, available)


def _check_disjoint(b: Bundle, calib_dir: str | os.PathLike, coco: CocoKeypoints | None) -> None:
    """Calibration and tuning photos must not be evaluation images: those of --ann, and those `hrdeploy eval`
    scored this bundle on (its manifest's eval section). Compared by content (SHA-256), so a copy is caught too."""
    from hrdeploy.images import image_files
    from hrdeploy.io import sha256

    evaluated: dict[str, str] = {}
    sources = [coco] if coco is not None else []
    recorded = b.section("eval", {}) or {}
    if recorded.get("annotations") and recorded.get("images"):
        try:
            sources.append(CocoKeypoints(recorded["annotations"], recorded["images"]))
        except UserError:
            pass  # the evaluation set was moved away: nothing left to compare with
    for source in sources:
        for i in source.image_ids():
            path = source.file(i)
            if path.is_file():
                evaluated[sha256(path)] = source.ann.name
    for path in image_files(calib_dir):
        ann = evaluated.get(sha256(path))
        if ann is not None:
            raise UserError(f"calibration image {path.name} is also an evaluation image of {ann}; calibrate and "
                            "tune on other photos of people (e.g. coco-train), never on the images the AP is "
                            "measured on")


def _validate(
    b: Bundle, precision: str, variant: Path, tol: Tolerance, coco: CocoKeypoints | None, val: ImageSet,
    val_crops: CropSet | None, eager: Callable[[np.ndarray], np.ndarray], batch: int | None, threads: int | None,
    bootstrap: int, seed: int,
) -> dict[str, Any]:
    """The variant against eager fp32 with hrdeploy.parity: AP drop (annotated), crop agreement, or tensors."""
    with OrtRunner(variant, threads=threads) as runner:
        def run(x: np.ndarray) -> np.ndarray:
            return runner.run(x)[b.output_names[0]]

        if val_crops is not None:
            ref = Reference.compute(eager, val_crops, coco, batch or CALIB_BATCH)
            result = check_pose(ref, run, tol, batch or CALIB_BATCH, fixed_batch=batch is not None,
                                trained=b.model.checkpoint is not None, bootstrap=bootstrap, seed=seed)
            result.pop("keypoints")
            return result
        # not a top-down pose model: tensor statistics of every output on the (whole) images
        out = run_batches(variant, batches(val.data, batch), val.count, threads=threads)
        ref_all = eager_outputs(b, val.data)
        per_output = {name: tensor_stats(ref_all[name], out[name]) for name in ref_all}
        worst = min(per_output.values(), key=lambda m: m["cosine"])
        gated = {"cosine": worst["cosine"], "non_finite": sum(m["non_finite"] for m in per_output.values())}
        failures = judge(gated, tol)
        return {"mode": "tensor", "outputs": per_output, "gated": gated, "tolerance": bounds_for(tol, gated),
                "failures": failures, "passed": not failures}


def quantize_bundle(
    bundle: str | os.PathLike,
    precision: str,
    calib_dir: str | os.PathLike | None = None,
    calib_samples: int | None = None,
    method: str | None = None,
    backend: str = "auto",
    exclude: Sequence[str] = (),
    *,
    calib_ann: str | os.PathLike | None = None,
    auto_exclude: bool = True,
    val_dir: str | os.PathLike | None = None,
    val_samples: int = DEFAULT_VAL_SAMPLES,
    ann: str | os.PathLike | None = None,
    images: str | os.PathLike | None = None,
    tolerance: Tolerance | None = None,
    validate: bool = True,
    sensitivity: bool = True,
    search: bool | None = None,
    max_ap_drop: float = DEFAULT_MAX_AP_DROP,
    min_oks: float = DEFAULT_MIN_OKS,
    tune_share: float = DEFAULT_TUNE_SHARE,
    seed: int = DEFAULT_SEED,
    bootstrap: int = DEFAULT_RESAMPLES,
    threads: int | None = None,
    log: Callable[[str], None] | None = None,
) -> Path:
    """Write `model.<precision>.onnx` into `bundle`, validate it, record it in the manifest; return its path.

    precision: "fp16" (mixed precision, fp32 I/O) or "int8" (Q/DQ; needs `calib_dir`).
    calib_dir / calib_samples: calibration photos (the first N by file name; default all). Top-down pose
        models calibrate on person crops: the boxes of `calib_ann` (COCO keypoint json or MPII json with
        center/scale), else one crop per photo where the fp32 model finds a person
        (hrdeploy.parity.crops.find_people); other models on whole images, letterboxed.
    search: int8 of a top-down pose model, the accuracy-driven mixed precision of hrdeploy.precision.search
        [default: on with annotated calibration people or a trained checkpoint]. The people are split by
        photo (`tune_share` of the photos, seeded by `seed`) into calibration and tuning people; the fewest
        conv blocks stay float for the tuning AP drop to be within `max_ap_drop` points (COCO keypoint
        `calib_ann`), else for the keypoints to agree with fp32's at mean OKS >= `min_oks`.
    method: int8 activation calibration, "entropy" | "max" | "percentile" (99.99th) [default: percentile
        with ort, entropy with modelopt].
    backend: "modelopt" (NVIDIA ModelOpt), "ort" (onnxruntime / onnxconverter-common) or "auto".
    exclude: globs over node names, op types or module paths to keep in fp32.
    auto_exclude: int8 only, keep depthwise convs with wide-range inputs in fp32 (int8.wide_range_depthwise).
    ann / images: COCO keypoint annotations and their images: the gate is the COCO AP drop against eager fp32,
        with a paired bootstrap interval from `bootstrap` resamples of the people (0: none).
    val_dir / val_samples: without `ann`, photos whose person crops the keypoint-agreement gate runs on
        [default: the tuning people, else the calibration crops, else scikit-image's photos].
    tolerance: the gate [default: hrdeploy.parity.tolerances.TOLERANCES[precision]].
    The manifest entry `artifacts.<precision>` carries backend, method, samples, excluded nodes, quantized /
    unquantized conv counts and the validation summary; the full report is `quantize.<precision>.md/.json`,
    and `parity.json` gains a `<precision>` section.
    """
    say = log or (lambda _msg: None)
    if precision not in PRECISIONS:
        raise UserError(f"unknown precision {precision!r}; use one of {', '.join(PRECISIONS)}")
    if method is not None and method not in METHODS:
        raise UserError(f"unknown calibration method {method!r}; use one of {', '.join(METHODS)}")
    if (ann is None) != (images is None):
        raise UserError("--ann and --images go together: the COCO keypoint json and the folder of its images")
    if calib_ann is not None and calib_dir is None:
        raise UserError("--calib-ann needs --calib-dir, the folder of the images it annotates")
    _check_search_numbers(max_ap_drop, min_oks, tune_share, bootstrap)
    b = Bundle.open(bundle)
    src = b.artifact("onnx").path
    used_backend = resolve_backend(backend, precision)
    method = method or DEFAULT_METHOD[used_backend]
    if used_backend == "modelopt" and precision == "int8" and method == "percentile":
        raise UserError("ModelOpt calibrates with entropy or max, not percentile; use --method entropy|max "
                        "or --backend ort")
    if precision == "int8" and calib_dir is None:
        raise UserError("int8 needs calibration images; pass --calib-dir FOLDER with a few dozen typical "
                        "photos of people (JPEG/PNG)")
    tol = tolerance or TOLERANCES[precision]
    topdown = b.is_pose and b.model.task == "pose_topdown"
    searchable = precision == "int8" and topdown and (calib_ann is not None or b.model.checkpoint is not None)
    if search and not searchable:
        raise UserError("--search picks INT8 layers by keypoint accuracy: it needs --precision int8, a top-down pose "
                        "model and annotated calibration people (--calib-ann) or a trained --checkpoint")
    searching = searchable and search is not False and calib_dir is not None
    if ann is not None and not topdown:
        raise UserError(f"--ann scores top-down pose models; {b.model.name} is a {b.model.task} model, so drop "
                        "--ann/--images (it is checked on tensors)")
    start = time.perf_counter()

    model = G.ensure_node_names(onnx.load(os.fspath(src)))
    scopes = G.node_scopes(model)
    _check_exclude(model, exclude, scopes)
    batch = static_batch(src)
    eager = _eager_heatmaps(b, threads)
    # the person search runs dozens of windows per photo: on the fp32 ONNX (export-checked against eager)
    fp32 = OrtRunner(src, threads=threads)

    def finder(x: np.ndarray) -> np.ndarray:
        return fp32.run(x)[b.output_names[0]]

    coco = CocoKeypoints(ann, images) if ann is not None else None
    photos = ImageCache()
    if calib_dir is not None:
        from hrdeploy.images import image_files

        for path in image_files(calib_dir)[:calib_samples]:  # unreadable photos: a UserError before any work
            photos(path)
        _check_disjoint(b, calib_dir, coco)

    manifest = b.manifest
    work = Path(tempfile.mkdtemp(prefix="hrdeploy-quantize-"))
    try:
        calib_crops: CropSet | None = None
        tune_crops: CropSet | None = None
        tune_coco: CocoKeypoints | None = None
        split = ""
        if calib_dir is None:
            calib = None
        elif topdown:
            say(f"{precision}: finding people in {calib_dir}" if calib_ann is None else f"{precision}: cropping")
            people, available, how = _people(b, calib_dir, calib_samples, calib_ann, finder, photos)
            if searching:
                people, tuning = split_by_photo(people, tune_share, seed)
                check_tuning_size(tuning, len(people) + len(tuning), tune_share)
                split = describe_split(people, tuning, calib_dir)
                tune_crops, _ = _crop_set(b, tuning, f"{calib_dir} ({how}, tuning photos)", available, photos)
                tune_coco = tuning_annotations(calib_ann, calib_dir, tuning)
                say(f"int8 search: {split}")
            calib_crops, calib = _crop_set(b, people, f"{calib_dir} ({how})", available, photos)
        else:
            calib = load_images(calib_dir, manifest, calib_samples)
        val_crops: CropSet | None = None
        if coco is not None:
            val_crops = CropSet.build(coco.gt_boxes(), b.input.size, b.input.mean, b.input.std)
            val = ImageSet(val_crops.x, [f"{coco.ann.name}#{p.ann_id}" for p in val_crops.boxes], str(images),
                           len(val_crops))
        elif val_dir is not None:
            if topdown:
                boxes, available, how = _people(b, val_dir, val_samples, None, finder)
                val_crops, val = _crop_set(b, boxes, f"{val_dir} ({how})", available)
            else:
                val = load_images(val_dir, manifest, val_samples)
        elif tune_crops is not None:
            val_crops = tune_crops
            val = ImageSet(tune_crops.x, [f"{p.file.name}@tuning" for p in tune_crops.boxes],
                           f"{calib_dir} (tuning people, held out from calibration)", len(tune_crops))
        elif calib is not None:
            val = ImageSet(calib.data[:val_samples], calib.files[:val_samples], calib.source, calib.available)
            if calib_crops is not None:
                val_crops = CropSet(calib_crops.boxes[:val_samples], calib_crops.x[:val_samples],
                                    calib_crops.matrices[:val_samples], calib_crops.input_hw)
        elif topdown:
            from hrdeploy.pose.samples import write_sample_photos

            write_sample_photos(work / "samples")
            boxes, available, _ = _people(b, work / "samples", val_samples, None, finder)
            val_crops, val = _crop_set(b, boxes, "skimage sample photos (person crops found by the fp32 model)",
                                       available)
        else:
            val = default_images(manifest, work, samples=val_samples)
        calib_set = calib if calib is not None else val
        say(f"{precision}: {calib_set.count} calibration input(s) from {calib_set.source}, backend {used_backend}")
        calib_batches = batches(calib_set.data, batch or CALIB_BATCH)
        out_path = work / FILES[precision]
        excluded_nodes = sorted({n for names in G.match_nodes(model, exclude, scopes).values() for n in names})
        try:
            if precision == "fp16":
                from hrdeploy.precision.fp16 import convert_fp16

                info = convert_fp16(src, out_path, calib_batches, excluded_nodes, used_backend, work, threads)
                float_ref_path = None
            else:
                from hrdeploy.precision.int8 import qdq_summary, quantize_modelopt, quantize_ort

                quantizer = quantize_modelopt if used_backend == "modelopt" else quantize_ort
                info = quantizer(src, out_path, calib_batches, method, list(exclude), scopes, work,
                                 auto_exclude and not searching)
                scopes = info.pop("scopes")
                float_ref_path = info.pop("float_reference")
                if searching:
                    assert tune_crops is not None
                    found = search_int8(out_path, float_ref_path, scopes, tune_crops, tune_coco,
                                        max_ap_drop=max_ap_drop, min_oks=min_oks, batch=batch, threads=threads,
                                        log=say)
                    onnx.save(found.model, os.fspath(out_path))
                    info["search"] = {**found.record, "split": split, "seed": seed, "tune_share": tune_share}
                info.update(qdq_summary(onnx.load(os.fspath(out_path))))
        except UserError:
            raise
        except Exception as err:  # the converters raise many kinds of errors; name the step and a way out
            first = (str(err).strip().splitlines() or [type(err).__name__])[0]
            raise UserError(
                f"{precision} conversion with backend {used_backend} failed: {first[:300]}; "
                "try --exclude for the failing node, or the other --backend"
            ) from err
        seconds_convert = time.perf_counter() - start
        say(f"{precision}: converted in {seconds_convert:.1f} s; validating on {val.count} input(s)")

        variant = onnx.load(os.fspath(out_path))
        report: dict[str, Any] = {
            "precision": precision, "backend": used_backend, "method": method if precision == "int8" else None,
            "calibration": calib_set.describe(), "validation_images": val.describe(), "conversion": info,
        }
        if validate:
            comparison = _validate(b, precision, out_path, tol, coco, val, val_crops, eager, batch, threads,
                                   bootstrap, seed)
            probe = val.data[:DRIFT_IMAGES] if batch is None else batches(val.data[:DRIFT_IMAGES], batch)[0]
            comparison["drift"] = layer_drift(model, variant, probe, scopes, threads=threads)
            if precision == "int8":
                comparison["input_noise"] = input_noise_reference(model, probe, threads=threads)
            if precision == "int8" and sensitivity:
                float_ref = onnx.load(float_ref_path) if float_ref_path else model
                comparison["sensitivity"] = block_sensitivity(float_ref, variant, probe, scopes, threads=threads)
            report["validation"] = comparison
        report["seconds"] = round(time.perf_counter() - start, 2)
        write_json(work / f"quantize.{precision}.json", report)
        from hrdeploy.precision.report import to_markdown

        write_text(work / f"quantize.{precision}.md", to_markdown(manifest, report))

        # --- commit: move the files in, then update parity.json and the manifest --------------------
        root = b.root
        for name in (FILES[precision], f"quantize.{precision}.json", f"quantize.{precision}.md"):
            with atomic_path(root / name) as tmp:
                shutil.copyfile(work / name, tmp)
        b.record_artifact(precision, FILES[precision], **_manifest_entry(root, precision, used_backend, method,
                                                                         report))
        if validate:
            val_report = report["validation"]
            b.update_report("parity.json", precision, {"stage": "quantize", "reference": "eager", **{
                k: val_report[k] for k in ("mode", "tolerance", "gated", "failures", "passed")}})
            b.record_section("parity", {"passed": val_report["passed"], "file": "parity.json"}, key=precision)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return root / FILES[precision]


def _manifest_entry(bundle: Path, precision: str, backend: str, method: str, report: dict[str, Any]) -> dict[str, Any]:
    """The artifact's manifest fields besides file and sha256 (Bundle.record_artifact adds those)."""
    info = report["conversion"]
    entry: dict[str, Any] = {
        "precision": precision,
        "size_bytes": (bundle / FILES[precision]).stat().st_size,
        "backend": backend,
        "converter": info["converter"],
        "calibration": {k: v for k, v in report["calibration"].items() if k != "files"},
        "excluded_nodes": info.get("excluded_nodes", []),
        "report": f"quantize.{precision}.md",
    }
    if precision == "int8":
        entry.update({
            "method": method,
            "samples": report["calibration"]["count"],
            "convs_quantized": info["convs_quantized"],
            "convs_unquantized": info["convs_unquantized"],
            "unquantized_convs": info["unquantized_convs"],
            "auto_excluded": info.get("auto_excluded", {}),
            "runtime_weight_convs": info.get("runtime_weight_convs", []),
        })
        if "search" in info:
            entry["search"] = {k: v for k, v in info["search"].items() if k != "blocks"}  # the report has them
    else:
        entry.update({
            "kept_fp32_count": len(info["kept_fp32_nodes"]),
            "kept_fp32_nodes": info["kept_fp32_nodes"][:50],  # quantize.fp16.json lists them all
            "kept_fp32_by_op": info["kept_fp32_by_op"],
            "overflow_count": len(info["overflow_nodes"]),
            # the largest ones; quantize.fp16.json lists them all
            "overflow_nodes": dict(list(info["overflow_nodes"].items())[:20]),
            "fp16_compute_nodes": info["fp16_compute_nodes"],
        })
    if "validation" in report:
        val = report["validation"]
        entry["validation"] = {
            "passed": val["passed"], "mode": val["mode"], "inputs": report["validation_images"]["count"],
            "source": report["validation_images"]["source"], "tolerance": val["tolerance"],
            "gated": val["gated"], "failures": val["failures"],
        }
        if "stats" in val:
            entry["validation"].update(ap=val["stats"]["AP"], eager_ap=val["reference_stats"]["AP"])
        if "tensor" in val:
            entry["validation"]["cosine"] = val["tensor"]["cosine"]
        if "input_noise" in val:
            entry["validation"]["input_noise_cosine"] = val["input_noise"]["cosine"]
        if "interval" in val:
            entry["validation"]["interval"] = val["interval"]
    return entry
