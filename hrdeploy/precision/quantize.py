"""`quantize_bundle`: add an FP16 or INT8 (Q/DQ) ONNX to a bundle, validated on onnxruntime CPU.

Reads the bundle's fp32 `model.onnx` and manifest, converts (hrdeploy.precision.fp16 / .int8), checks the
variant against the eager fp32 model on real images (hrdeploy.precision.evaluate), and only then moves
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

from hrdeploy.errors import UserError, missing_dependency
from hrdeploy.io import atomic_path, sha256, write_json, write_text
from hrdeploy.manifest import artifact_path, load_manifest, save_manifest
from hrdeploy.precision import graph as G
from hrdeploy.precision.calib import ImageSet, batches, default_images, load_images, static_batch
from hrdeploy.precision.evaluate import (
    DEFAULT_TOLERANCES,
    Tolerance,
    block_sensitivity,
    compare_outputs,
    eager_outputs,
    input_noise_reference,
    layer_drift,
    run_batches,
)
from hrdeploy.precision.int8 import DEFAULT_METHOD, METHODS

PRECISIONS = ("fp16", "int8")
BACKENDS = ("auto", "modelopt", "ort")
FILES = {"fp16": "model.fp16.onnx", "int8": "model.int8.onnx"}
DEFAULT_CALIB_SAMPLES = 32
DEFAULT_VAL_SAMPLES = 16
DRIFT_IMAGES = 2  # layer drift and sensitivity run on the first few validation images
CALIB_BATCH = 8  # calibration batch for dynamic-batch graphs


def modelopt_available() -> bool:
    """True when nvidia-modelopt's ONNX quantization can be imported."""
    try:
        return all(importlib.util.find_spec(m) is not None for m in ("modelopt", "modelopt.onnx"))
    except (ImportError, ValueError):
        return False


def resolve_backend(backend: str) -> str:
    """'auto' -> 'modelopt' when installed, else 'ort'; 'modelopt' without it is a UserError."""
    if backend not in BACKENDS:
        raise UserError(f"unknown backend {backend!r}; use one of {', '.join(BACKENDS)}")
    if backend == "modelopt" and not modelopt_available():
        err = missing_dependency("nvidia-modelopt[onnx]", extra="int8", purpose="--backend modelopt")
        raise UserError(f"{err}, or use --backend ort") from None
    if backend == "auto":
        return "modelopt" if modelopt_available() else "ort"
    return backend


def _check_exclude(model: onnx.ModelProto, patterns: Sequence[str], scopes: dict[str, str]) -> None:
    hits = G.match_nodes(model, patterns, scopes)
    missing = [p for p, names in hits.items() if not names]
    if missing:
        examples = sorted({s.rsplit(".", 1)[0] for s in scopes.values() if s})[:3]
        raise UserError(
            f"--exclude {missing[0]!r} matches no node of the model; patterns are globs over node names, op "
            f"types and module paths, e.g. {', '.join(repr(e + '*') for e in examples) or 'Sigmoid'}"
        )


def _parity_rows(comparison: dict[str, Any], backend_name: str, images: ImageSet, hw: tuple[int, int]) -> list[dict]:
    rows = []
    for output, metrics in comparison["outputs"].items():
        row = {"backend": backend_name, "batch": images.count, "input_size": list(hw), "output": output, **metrics}
        row["passed"] = comparison["passed"]
        rows.append(row)
    return rows


def quantize_bundle(
    bundle: str | os.PathLike,
    precision: str,
    calib_dir: str | os.PathLike | None = None,
    calib_samples: int = DEFAULT_CALIB_SAMPLES,
    method: str | None = None,
    backend: str = "auto",
    exclude: Sequence[str] = (),
    *,
    auto_exclude: bool = True,
    val_dir: str | os.PathLike | None = None,
    val_samples: int = DEFAULT_VAL_SAMPLES,
    tolerance: Tolerance | None = None,
    validate: bool = True,
    sensitivity: bool = True,
    threads: int | None = None,
    log: Callable[[str], None] | None = None,
) -> Path:
    """Write `model.<precision>.onnx` into `bundle`, validate it, record it in the manifest; return its path.

    precision: "fp16" (mixed precision, fp32 I/O) or "int8" (Q/DQ; needs `calib_dir`).
    calib_dir / calib_samples: calibration images (first N by file name), preprocessed as at deployment.
    method: int8 activation calibration, "entropy" | "max" | "percentile" (99.99th) [default: percentile
        with ort, entropy with modelopt].
    backend: "modelopt" (NVIDIA ModelOpt), "ort" (onnxruntime / onnxconverter-common) or "auto".
    exclude: globs over node names, op types or module paths to keep in fp32.
    auto_exclude: int8 only, keep depthwise convs with wide-range inputs in fp32 (int8.wide_range_depthwise).
    val_dir / val_samples: validation images [default: the calibration images, else scikit-image's photos].
    tolerance: pass criteria against eager fp32 [default: DEFAULT_TOLERANCES[precision]].
    The manifest entry `artifacts.<precision>` carries backend, method, samples, excluded nodes, quantized /
    unquantized conv counts and the validation summary; the full report is `quantize.<precision>.md/.json`,
    and `parity.json` gains a `<precision>` section in the export's format.
    """
    say = log or (lambda _msg: None)
    if precision not in PRECISIONS:
        raise UserError(f"unknown precision {precision!r}; use one of {', '.join(PRECISIONS)}")
    if method is not None and method not in METHODS:
        raise UserError(f"unknown calibration method {method!r}; use one of {', '.join(METHODS)}")
    manifest = load_manifest(bundle)
    src = artifact_path(bundle, manifest, "onnx")
    used_backend = resolve_backend(backend)
    method = method or DEFAULT_METHOD[used_backend]
    if used_backend == "modelopt" and precision == "int8" and method == "percentile":
        raise UserError("ModelOpt calibrates with entropy or max, not percentile; use --method entropy|max "
                        "or --backend ort")
    if precision == "int8" and calib_dir is None:
        raise UserError("int8 needs calibration images; pass --calib-dir FOLDER with a few dozen typical "
                        "photos (JPEG/PNG)")
    tol = tolerance or DEFAULT_TOLERANCES[precision]
    start = time.perf_counter()

    model = G.ensure_node_names(onnx.load(os.fspath(src)))
    scopes = G.node_scopes(model)
    _check_exclude(model, exclude, scopes)
    hw = (int(manifest["input"]["height"]), int(manifest["input"]["width"]))
    batch = static_batch(src)

    calib = load_images(calib_dir, manifest, calib_samples) if calib_dir is not None else None
    work = Path(tempfile.mkdtemp(prefix="hrdeploy-quantize-"))
    try:
        if val_dir is not None:
            val = load_images(val_dir, manifest, val_samples)
        elif calib is not None:
            val = ImageSet(calib.data[:val_samples], calib.files[:val_samples], calib.source, calib.available)
        else:
            val = default_images(manifest, work, samples=val_samples)
        calib_set = calib if calib is not None else val
        say(f"{precision}: {calib_set.count} calibration image(s) from {calib_set.source}, backend {used_backend}")
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
                info = quantizer(src, out_path, calib_batches, method, list(exclude), scopes, work, auto_exclude)
                scopes = info.pop("scopes")
                float_ref_path = info.pop("float_reference")
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
        say(f"{precision}: converted in {seconds_convert:.1f} s; validating on {val.count} image(s)")

        variant = onnx.load(os.fspath(out_path))
        report: dict[str, Any] = {
            "precision": precision, "backend": used_backend, "method": method if precision == "int8" else None,
            "calibration": calib_set.describe(), "validation_images": val.describe(), "conversion": info,
        }
        if validate:
            val_batches = batches(val.data, batch)
            out = run_batches(out_path, val_batches, val.count, threads=threads)
            output_names = [o["name"] for o in manifest["outputs"]]
            ref = eager_outputs(bundle, val.data, output_names)
            kps = manifest.get("keypoints")
            comparison = compare_outputs(ref, out, len(kps["names"]) if kps else None, tol)
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
        bundle = Path(bundle)
        for name in (FILES[precision], f"quantize.{precision}.json", f"quantize.{precision}.md"):
            with atomic_path(bundle / name) as tmp:
                shutil.copyfile(work / name, tmp)
        entry = _manifest_entry(bundle, precision, used_backend, method, report)
        manifest = load_manifest(bundle)
        manifest.setdefault("artifacts", {})[precision] = entry
        if validate:
            parity_path = bundle / "parity.json"
            parity = _read_json(parity_path)
            parity[precision] = {
                "stage": "quantize", "reference": "eager", "tolerance": tol.as_dict(),
                "rows": _parity_rows(report["validation"], f"ort-{precision}", val, hw),
                "passed": report["validation"]["passed"],
            }
            write_json(parity_path, parity)
            passed = parity[precision]["passed"]
            manifest.setdefault("parity", {})[precision] = {"passed": passed, "file": "parity.json"}
        save_manifest(bundle, manifest)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return bundle / FILES[precision]


def _read_json(path: Path) -> dict[str, Any]:
    import json

    try:
        return json.loads(path.read_text()) if path.is_file() else {}
    except (OSError, ValueError):
        return {}


def _manifest_entry(bundle: Path, precision: str, backend: str, method: str, report: dict[str, Any]) -> dict[str, Any]:
    info = report["conversion"]
    entry: dict[str, Any] = {
        "file": FILES[precision],
        "precision": precision,
        "sha256": sha256(bundle / FILES[precision]),
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
        first = next(iter(val["outputs"].values()))
        entry["validation"] = {
            "passed": val["passed"], "images": report["validation_images"]["count"],
            "images_source": report["validation_images"]["source"], "tolerance": val["tolerance"],
            "cosine": first["cosine"], "max_rel": first["max_rel"],
            "argmax_agreement_pct": first.get("argmax_agreement_pct"),
            "mean_kpt_err_px": first.get("mean_kpt_err_px"),
            "failures": val["failures"],
        }
        if "input_noise" in val:
            entry["validation"]["input_noise_cosine"] = val["input_noise"]["cosine"]
    return entry


def variant_batches(data: np.ndarray, onnx_path: str | os.PathLike) -> list[np.ndarray]:
    """`data` split as the graph's batch dimension requires (helper for callers such as the benchmark)."""
    return batches(data, static_batch(onnx_path))
