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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from hrdeploy.bundle import PRECISIONS, Bundle
from hrdeploy.errors import UserError, missing_dependency
from hrdeploy.io import atomic_path, write_json, write_text
from hrdeploy.parity.bootstrap import DEFAULT_RESAMPLES
from hrdeploy.parity.coco import CocoKeypoints, CropSet, ImageCache, PersonBox
from hrdeploy.parity.comparator import Comparator
from hrdeploy.parity.compare import bounds_for, judge, tensor_stats
from hrdeploy.parity.pose import Reference, check_pose
from hrdeploy.parity.tolerances import TOLERANCES, Tolerance
from hrdeploy.precision import graph as G
from hrdeploy.precision.calib import ImageSet, batches, default_images, load_images, static_batch
from hrdeploy.precision.evaluate import block_sensitivity, input_noise_reference, layer_drift
from hrdeploy.precision.int8 import DEFAULT_METHOD, METHODS
from hrdeploy.precision.result import QuantizeResult
from hrdeploy.precision.targets import DEFAULT_MAX_AP_DROP, DEFAULT_SEED, DEFAULT_TUNE_SHARE, default_min_oks
from hrdeploy.precision.tuning import (
    check_tuning_size,
    describe_split,
    search_int8,
    split_by_photo,
    tuning_annotations,
)
from hrdeploy.runtime.base import Runner
from hrdeploy.runtime.factory import eager_runner, open_runner

QUANTIZED = PRECISIONS[1:]  # the precisions quantize makes (fp32 is the export)
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
    boxes = find_people(files[:samples], finder, b.input.size, b.input.mean, b.input.std, photos, PEOPLE_PER_PHOTO,
                        b.input.static_batch)
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
    val_crops: CropSet | None, eager: Runner, batch: int | None, threads: int | None, bootstrap: int, seed: int,
) -> dict[str, Any]:
    """The variant against eager fp32 by the comparator: AP drop (annotated), crop agreement, or tensors."""
    name = b.output_names[0]
    with open_runner(variant, threads) as runner:
        if val_crops is not None:
            ref = Reference.compute(lambda x: eager.run(x)[name], val_crops, coco, batch or CALIB_BATCH)
            result = check_pose(ref, lambda x: runner.run(x)[name], tol, batch or CALIB_BATCH,
                                fixed_batch=batch is not None, trained=b.model.checkpoint is not None,
                                bootstrap=bootstrap, seed=seed)
            result.pop("keypoints")
            return result
        # not a top-down pose model: tensor statistics of every output on the (whole) images
        results = Comparator.run([eager.activate(), runner], batches(val.data, batch))
    ref_all, out = (results.joined(n, val.count) for n in results.outputs)
    per_output = {name: tensor_stats(ref_all[name], out[name]) for name in ref_all}
    worst = min(per_output.values(), key=lambda m: m["cosine"])
    gated = {"cosine": worst["cosine"], "non_finite": sum(m["non_finite"] for m in per_output.values())}
    failures = judge(gated, tol)
    return {"mode": "tensor", "outputs": per_output, "gated": gated, "tolerance": bounds_for(tol, gated),
            "failures": failures, "passed": not failures}


@dataclass(frozen=True)
class QuantizeConfig:
    """One quantize run: what to make, from which photos, and how it is judged (see `quantize_bundle`)."""

    precision: str
    calib_dir: str | os.PathLike | None = None
    calib_samples: int | None = None
    method: str | None = None
    backend: str = "auto"
    exclude: Sequence[str] = ()
    calib_ann: str | os.PathLike | None = None
    auto_exclude: bool = True
    equalize: bool = False
    equalize_dense: bool | None = None
    shift_activations: bool | None = None
    val_dir: str | os.PathLike | None = None
    val_samples: int = DEFAULT_VAL_SAMPLES
    ann: str | os.PathLike | None = None
    images: str | os.PathLike | None = None
    tolerance: Tolerance | None = None
    validate: bool = True
    sensitivity: bool = True
    search: bool | None = None
    max_ap_drop: float = DEFAULT_MAX_AP_DROP
    min_oks: float | None = None
    tune_share: float = DEFAULT_TUNE_SHARE
    seed: int = DEFAULT_SEED
    bootstrap: int = DEFAULT_RESAMPLES
    threads: int | None = None

    @property
    def target_oks(self) -> float:
        """`min_oks`, else the default for annotated people or for the crops the fp32 model finds."""
        return self.min_oks if self.min_oks is not None else default_min_oks(self.calib_ann is not None)

    def check(self) -> None:
        """UserError for a value or a combination that no bundle can satisfy."""
        if self.precision not in QUANTIZED:
            raise UserError(f"unknown precision {self.precision!r}; use one of {', '.join(QUANTIZED)}")
        if self.method is not None and self.method not in METHODS:
            raise UserError(f"unknown calibration method {self.method!r}; use one of {', '.join(METHODS)}")
        if (self.ann is None) != (self.images is None):
            raise UserError("--ann and --images go together: the COCO keypoint json and the folder of its images")
        if self.calib_ann is not None and self.calib_dir is None:
            raise UserError("--calib-ann needs --calib-dir, the folder of the images it annotates")
        _check_search_numbers(self.max_ap_drop, self.target_oks, self.tune_share, self.bootstrap)
        if self.precision == "int8" and self.calib_dir is None:
            raise UserError("int8 needs calibration images; pass --calib-dir FOLDER with a few dozen typical "
                            "photos of people (JPEG/PNG)")


@dataclass
class _People:
    """Calibration inputs, and the tuning people the INT8 search judges candidates on (when it runs)."""

    calib: ImageSet | None = None
    calib_crops: CropSet | None = None
    tune_crops: CropSet | None = None
    tune_coco: CocoKeypoints | None = None
    split: str = ""


def quantize_bundle(bundle: str | os.PathLike | Bundle, precision: str, *, log: Callable[[str], None] | None = None,
                    **options: Any) -> QuantizeResult:
    """Write `model.<precision>.onnx` into `bundle`, validate it, record it in the manifest; return what it made
    and the verdict.

    `options` are the fields of QuantizeConfig:
    precision: "fp16" (mixed precision, fp32 I/O) or "int8" (Q/DQ; needs `calib_dir`).
    calib_dir / calib_samples: calibration photos (the first N by file name; default all). Top-down pose
        models calibrate on person crops: the boxes of `calib_ann` (COCO keypoint json or MPII json with
        center/scale), else the people the fp32 model finds in each photo (hrdeploy.parity.crops.find_people);
        other models on whole images, letterboxed.
    search: int8 of a top-down pose model, the accuracy-driven mixed precision of hrdeploy.precision.search
        [default: on with annotated calibration people or a trained checkpoint]. The people are split by
        photo (`tune_share` of the photos, seeded by `seed`) into calibration and tuning people; the fewest
        conv blocks stay float for the tuning AP drop to be within `max_ap_drop` points (COCO keypoint
        `calib_ann`), and for the keypoints to agree with fp32's at mean OKS >= `min_oks` [default:
        precision.targets.default_min_oks].
    method: int8 activation calibration, "entropy" | "max" | "percentile" (99.99th) [default: percentile
        with ort, entropy with modelopt].
    backend: "modelopt" (NVIDIA ModelOpt), "ort" (onnxruntime / onnxconverter-common) or "auto".
    exclude: globs over node names, op types or module paths to keep in fp32.
    auto_exclude: int8 only, keep depthwise convs with wide-range inputs in fp32 (int8.wide_range_depthwise).
    equalize: int8 with ort, equalize the input channels of depthwise convs before calibration
        (hrdeploy.precision.equalize; the same fp32 function).
    equalize_dense: int8 with ort, equalize the input channels of dense convs where the scales fold into the
        conv producing them [default: on when the search runs, off otherwise: on the trained network's coco-train
        tuning people it brought the searched INT8's keypoints closer to fp32's at the same INT8 share, but moved
        those of the plain INT8 (`search=False`) further away].
    shift_activations: int8 with ort, quantize the non-negative conv inputs shifted by half their range, on all
        256 codes instead of 128 (hrdeploy.precision.shift) [default: the search tries both and keeps the
        encoding whose chosen point agrees better with fp32 on the tuning people; off without the search].
    ann / images: COCO keypoint annotations and their images: the gate is the COCO AP drop against eager fp32,
        with a paired bootstrap interval from `bootstrap` resamples of the people (0: none).
    val_dir / val_samples: without `ann`, photos whose person crops the keypoint-agreement gate runs on
        [default: the tuning people, else the calibration crops, else scikit-image's photos].
    tolerance: the gate [default: hrdeploy.parity.tolerances.TOLERANCES[precision]].
    The manifest entry `artifacts.<precision>` is the result's `manifest_entry()`: backend, method, samples,
    excluded nodes, quantized / unquantized conv counts and the validation summary; the full report is
    `quantize.<precision>.md/.json`, and `parity.json` gains a `<precision>` section.
    """
    return Quantizer(bundle, QuantizeConfig(precision, **options), log).run()


class Quantizer:
    """The quantize stage: prepare, calibration people, validation set, convert, judge, commit into the bundle."""

    def __init__(self, bundle: str | os.PathLike | Bundle, cfg: QuantizeConfig,
                 log: Callable[[str], None] | None = None) -> None:
        cfg.check()
        self.cfg, self.say = cfg, log or (lambda _msg: None)
        self.b = bundle if isinstance(bundle, Bundle) else Bundle.open(bundle)
        self.backend = resolve_backend(cfg.backend, cfg.precision)
        self.method = cfg.method or DEFAULT_METHOD[self.backend]
        if self.backend == "modelopt" and cfg.precision == "int8" and self.method == "percentile":
            raise UserError("ModelOpt calibrates with entropy or max, not percentile; use --method entropy|max "
                            "or --backend ort")
        self.tol = cfg.tolerance or TOLERANCES[cfg.precision]
        self.topdown = self.b.is_pose and self.b.model.task == "pose_topdown"
        searchable = cfg.precision == "int8" and self.topdown and (
            cfg.calib_ann is not None or self.b.model.checkpoint is not None)
        if cfg.search and not searchable:
            raise UserError("--search picks INT8 layers by keypoint accuracy: it needs --precision int8, a top-down "
                            "pose model and annotated calibration people (--calib-ann) or a trained --checkpoint")
        self.searching = searchable and cfg.search is not False and cfg.calib_dir is not None
        for flag, on in (("--equalize", cfg.equalize), ("--equalize-dense", cfg.equalize_dense),
                         ("--shift-activations", cfg.shift_activations)):
            if on and (cfg.precision != "int8" or self.backend != "ort"):
                raise UserError(f"{flag} changes how conv inputs are quantized by onnxruntime's INT8: use it with "
                                "--precision int8 and --backend ort, or drop it")
        self.equalize_dense = (self.searching and self.backend == "ort") if cfg.equalize_dense is None else (
            cfg.equalize_dense)
        self.shift = cfg.shift_activations  # None: the search chooses (tuning.search_int8), else no shift
        if cfg.ann is not None and not self.topdown:
            raise UserError(f"--ann scores top-down pose models; {self.b.model.name} is a {self.b.model.task} "
                            "model, so drop --ann/--images (it is checked on tensors)")

    def run(self) -> QuantizeResult:
        start = time.perf_counter()
        self._prepare()
        work = Path(tempfile.mkdtemp(prefix="hrdeploy-quantize-"))
        try:
            people = self._calibration_people()
            val, val_crops = self._validation_set(work, people)
            calib_set = people.calib if people.calib is not None else val
            conv, float_ref_path = self._convert(work, calib_set, people)
            self.say(f"{self.cfg.precision}: converted in {time.perf_counter() - start:.1f} s; validating on "
                     f"{val.count} input(s)")
            report: dict[str, Any] = {
                "precision": self.cfg.precision, "backend": self.backend,
                "method": self.method if self.cfg.precision == "int8" else None,
                "calibration": calib_set.describe(), "validation_images": val.describe(), "conversion": conv,
            }
            if self.cfg.validate:
                report["validation"] = self._judge(work, val, val_crops, float_ref_path)
            report["seconds"] = round(time.perf_counter() - start, 2)
            return self._commit(work, report)
        finally:
            shutil.rmtree(work, ignore_errors=True)

    def _prepare(self) -> None:
        """The fp32 graph and its module scopes, the eager and fp32 runners, and checks of the photos given."""
        cfg, b = self.cfg, self.b
        self.src = b.artifact("onnx").path
        self.model = G.ensure_node_names(onnx.load(os.fspath(self.src)))
        self.scopes = G.node_scopes(self.model)
        _check_exclude(self.model, cfg.exclude, self.scopes)
        self.batch = static_batch(self.src)
        self.eager_runner = eager_runner(b.eager_model, b.output_names, cfg.threads)  # built on first use
        self.eager: Callable[[np.ndarray], np.ndarray] = lambda x: self.eager_runner.run(x)[b.output_names[0]]
        # the person search runs dozens of windows per photo: on the fp32 ONNX (export-checked against eager)
        fp32 = open_runner(b.artifact("onnx"), cfg.threads)
        self.finder: Callable[[np.ndarray], np.ndarray] = lambda x: fp32.run(x)[b.output_names[0]]
        self.coco = CocoKeypoints(cfg.ann, cfg.images) if cfg.ann is not None else None
        self.photos = ImageCache()
        if cfg.calib_dir is not None:
            from hrdeploy.images import image_files

            for path in image_files(cfg.calib_dir)[:cfg.calib_samples]:  # unreadable photos: a UserError now
                self.photos(path)
            _check_disjoint(b, cfg.calib_dir, self.coco)

    def _calibration_people(self) -> _People:
        """Calibration inputs: person crops for top-down models (split into calibration and tuning people when
        the search runs), whole photos otherwise."""
        cfg, b = self.cfg, self.b
        if cfg.calib_dir is None:
            return _People()
        if not self.topdown:
            return _People(calib=load_images(cfg.calib_dir, b.input, cfg.calib_samples))
        self.say(f"{cfg.precision}: finding people in {cfg.calib_dir}" if cfg.calib_ann is None
                 else f"{cfg.precision}: cropping")
        boxes, available, how = _people(b, cfg.calib_dir, cfg.calib_samples, cfg.calib_ann, self.finder, self.photos)
        out = _People()
        if self.searching:
            boxes, tuning = split_by_photo(boxes, cfg.tune_share, cfg.seed)
            check_tuning_size(tuning, len(boxes) + len(tuning), cfg.tune_share)
            out.split = describe_split(boxes, tuning, cfg.calib_dir)
            out.tune_crops, _ = _crop_set(b, tuning, f"{cfg.calib_dir} ({how}, tuning photos)", available,
                                          self.photos)
            out.tune_coco = tuning_annotations(cfg.calib_ann, cfg.calib_dir, tuning)
            self.say(f"int8 search: {out.split}")
        out.calib_crops, out.calib = _crop_set(b, boxes, f"{cfg.calib_dir} ({how})", available, self.photos)
        return out

    def _validation_set(self, work: Path, people: _People) -> tuple[ImageSet, CropSet | None]:
        """What the gate runs on: --ann people, --val-dir, the tuning people, the calibration crops, or samples."""
        cfg, b = self.cfg, self.b
        if self.coco is not None:
            crops = CropSet.build(self.coco.gt_boxes(), b.input.size, b.input.mean, b.input.std)
            return ImageSet(crops.x, [f"{self.coco.ann.name}#{p.ann_id}" for p in crops.boxes], str(cfg.images),
                            len(crops)), crops
        if cfg.val_dir is not None:
            if not self.topdown:
                return load_images(cfg.val_dir, b.input, cfg.val_samples), None
            boxes, available, how = _people(b, cfg.val_dir, cfg.val_samples, None, self.finder)
            crops, val = _crop_set(b, boxes, f"{cfg.val_dir} ({how})", available)
            return val, crops
        if people.tune_crops is not None:
            tune = people.tune_crops
            return ImageSet(tune.x, [f"{p.file.name}@tuning" for p in tune.boxes],
                            f"{cfg.calib_dir} (tuning people, held out from calibration)", len(tune)), tune
        if people.calib is not None:
            calib, n = people.calib, cfg.val_samples
            val = ImageSet(calib.data[:n], calib.files[:n], calib.source, calib.available)
            c = people.calib_crops
            return val, None if c is None else CropSet(c.boxes[:n], c.x[:n], c.matrices[:n], c.input_hw)
        if self.topdown:
            from hrdeploy.pose.samples import write_sample_photos

            write_sample_photos(work / "samples")
            boxes, available, _ = _people(b, work / "samples", cfg.val_samples, None, self.finder)
            crops, val = _crop_set(b, boxes, "skimage sample photos (person crops found by the fp32 model)",
                                   available)
            return val, crops
        return default_images(b.input, work, samples=cfg.val_samples), None

    def _convert(self, work: Path, calib_set: ImageSet, people: _People) -> tuple[dict[str, Any], str | None]:
        """Write the variant to work/; its conversion record, and the float reference graph (int8)."""
        cfg = self.cfg
        self.say(f"{cfg.precision}: {calib_set.count} calibration input(s) from {calib_set.source}, backend "
                 f"{self.backend}")
        calib_batches = batches(calib_set.data, self.batch or CALIB_BATCH)
        out_path = work / FILES[cfg.precision]
        try:
            if cfg.precision == "fp16":
                from hrdeploy.precision.fp16 import convert_fp16

                excluded = sorted({n for names in G.match_nodes(self.model, cfg.exclude, self.scopes).values()
                                   for n in names})
                return convert_fp16(self.src, out_path, calib_batches, excluded, self.backend, work,
                                    cfg.threads), None
            return self._convert_int8(work, out_path, calib_batches, people)
        except UserError:
            raise
        except Exception as err:  # the converters raise many kinds of errors; name the step and a way out
            first = (str(err).strip().splitlines() or [type(err).__name__])[0]
            raise UserError(
                f"{cfg.precision} conversion with backend {self.backend} failed: {first[:300]}; "
                "try --exclude for the failing node, or the other --backend"
            ) from err

    def _convert_int8(self, work: Path, out_path: Path, calib_batches: list[np.ndarray],
                      people: _People) -> tuple[dict[str, Any], str | None]:
        from hrdeploy.precision.int8 import qdq_summary, quantize_modelopt, quantize_ort

        cfg = self.cfg
        args = (self.src, out_path, calib_batches, self.method, list(cfg.exclude), self.scopes, work,
                cfg.auto_exclude and not self.searching)
        conv = quantize_modelopt(*args) if self.backend == "modelopt" else quantize_ort(
            *args, equalize=cfg.equalize, equalize_dense=self.equalize_dense, shift=bool(self.shift))
        self.scopes = conv.pop("scopes")
        float_ref_path = conv.pop("float_reference")
        if self.searching:
            assert people.tune_crops is not None
            found = search_int8(out_path, float_ref_path, self.scopes, people.tune_crops, people.tune_coco,
                                max_ap_drop=cfg.max_ap_drop, min_oks=cfg.target_oks, batch=self.batch,
                                threads=cfg.threads, log=self.say,
                                choose_shift=self.shift is None and self.backend == "ort")
            onnx.save(found.model, os.fspath(out_path))
            conv["search"] = {**found.record, "split": people.split, "seed": cfg.seed, "tune_share": cfg.tune_share}
        conv.update(qdq_summary(onnx.load(os.fspath(out_path))))
        return conv, float_ref_path

    def _judge(self, work: Path, val: ImageSet, val_crops: CropSet | None,
               float_ref_path: str | None) -> dict[str, Any]:
        """The gate's verdict, with per-layer drift (and INT8's input-noise reference and block sensitivity)."""
        cfg = self.cfg
        out_path = work / FILES[cfg.precision]
        variant = onnx.load(os.fspath(out_path))
        comparison = _validate(self.b, cfg.precision, out_path, self.tol, self.coco, val, val_crops, self.eager_runner,
                               self.batch, cfg.threads, cfg.bootstrap, cfg.seed)
        probe = val.data[:DRIFT_IMAGES] if self.batch is None else batches(val.data[:DRIFT_IMAGES], self.batch)[0]
        comparison["drift"] = layer_drift(self.model, variant, probe, self.scopes, threads=cfg.threads)
        if cfg.precision == "int8":
            comparison["input_noise"] = input_noise_reference(self.model, probe, threads=cfg.threads)
            if cfg.sensitivity:
                float_ref = onnx.load(float_ref_path) if float_ref_path else self.model
                comparison["sensitivity"] = block_sensitivity(float_ref, variant, probe, self.scopes,
                                                              threads=cfg.threads)
        return comparison

    def _commit(self, work: Path, report: dict[str, Any]) -> QuantizeResult:
        """Reports written, then the files moved into the bundle, then parity.json and the manifest updated."""
        from hrdeploy.precision.report import to_markdown

        precision, b = self.cfg.precision, self.b
        write_json(work / f"quantize.{precision}.json", report)
        write_text(work / f"quantize.{precision}.md", to_markdown(b.model.name, report))
        for name in (FILES[precision], f"quantize.{precision}.json", f"quantize.{precision}.md"):
            with atomic_path(b.root / name) as tmp:
                shutil.copyfile(work / name, tmp)
        result = _result(b.root, precision, self.backend, self.method, report)
        b.record_artifact(precision, FILES[precision], **result.manifest_entry())
        if "validation" in report:
            val_report = report["validation"]
            b.update_report("parity.json", precision, {"stage": "quantize", "reference": "eager", **{
                k: val_report[k] for k in ("mode", "tolerance", "gated", "failures", "passed")}})
            b.record_section("parity", {"passed": val_report["passed"], "file": "parity.json"}, key=precision)
        return result


def _result(bundle: Path, precision: str, backend: str, method: str, report: dict[str, Any]) -> QuantizeResult:
    """The run's typed result, from its report (the conversion record and the gate's verdict)."""
    conv = report["conversion"]
    entry: dict[str, Any] = {
        "precision": precision,
        "path": bundle / FILES[precision],
        "size_bytes": (bundle / FILES[precision]).stat().st_size,
        "backend": backend,
        "converter": conv["converter"],
        "calibration": {k: v for k, v in report["calibration"].items() if k != "files"},
        "excluded_nodes": conv.get("excluded_nodes", []),
        "report": f"quantize.{precision}.md",
    }
    if precision == "int8":
        entry.update({
            "method": method,
            "samples": report["calibration"]["count"],
            "convs_quantized": conv["convs_quantized"],
            "convs_unquantized": conv["convs_unquantized"],
            "unquantized_convs": conv["unquantized_convs"],
            "auto_excluded": conv.get("auto_excluded", {}),
            "equalized": conv.get("equalized", {}),
            "equalized_dense": conv.get("equalized_dense", {}),
            "shifted_convs": conv.get("shifted_convs", 0),
            "runtime_weight_convs": conv.get("runtime_weight_convs", []),
        })
        if "search" in conv:
            entry["search"] = {k: v for k, v in conv["search"].items() if k != "blocks"}  # the report has them
    else:
        entry.update({
            "kept_fp32_count": len(conv["kept_fp32_nodes"]),
            "kept_fp32_nodes": conv["kept_fp32_nodes"][:50],  # quantize.fp16.json lists them all
            "kept_fp32_by_op": conv["kept_fp32_by_op"],
            "overflow_count": len(conv["overflow_nodes"]),
            # the largest ones; quantize.fp16.json lists them all
            "overflow_nodes": dict(list(conv["overflow_nodes"].items())[:20]),
            "fp16_compute_nodes": conv["fp16_compute_nodes"],
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
    return QuantizeResult(**entry)
