"""FP32 vs FP16 vs INT8 ONNX on onnxruntime CPU: latency at batch 1 and 8, and accuracy against eager fp32.

For each model: export a dynamic-batch bundle (or reuse it), add model.fp16.onnx and model.int8.onnx with
`hrdeploy.precision.quantize_bundle` (calibration and validation on scikit-image's sample photos), then time
every variant with hrdeploy.bench.harness and write benchmarks/results/precision.json and .md.

    .venv/bin/python benchmarks/bench_precision.py                       # lite_hrnet_18, dite_hrnet_18
    .venv/bin/python benchmarks/bench_precision.py --models lite_hrnet_18 --input-size 128x96 --iterations 10

Seeded random weights (no checkpoints are downloaded): the accuracy columns show how close each variant stays
to fp32 for *these* weights; see docs/precision.md for how to read the int8 ones.
"""

from __future__ import annotations

import argparse
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent


def _bundle(name: str, out: Path, size: tuple[int, int], force: bool) -> Path:
    from hrdeploy.export import export_bundle

    if (out / "manifest.json").is_file() and not force:
        return out
    export_bundle(name, out, input_size=size, dynamic_batch=True, force=True)
    return out


def _time(path: Path, batch: int, size: tuple[int, int], iterations: int, warmup: int, threads: int | None) -> dict:
    from hrdeploy.bench.harness import latency_stats, time_calls
    from hrdeploy.runtime.onnxruntime import OrtRunner

    runner = OrtRunner(path, threads=threads)
    x = np.random.default_rng(0).standard_normal((batch, 3, *size)).astype(np.float32)
    return latency_stats(time_calls(lambda: runner.run(x), iterations, warmup=warmup), batch)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["lite_hrnet_18", "dite_hrnet_18"])
    parser.add_argument("--input-size", default="256x192", help="HxW [default: 256x192, the COCO default]")
    parser.add_argument("--batches", nargs="+", type=int, default=[1, 8])
    parser.add_argument("--iterations", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="onnxruntime intra-op threads [default: ORT's]")
    parser.add_argument("--backends", nargs="+", default=["ort"], help="int8 backends: ort and/or modelopt")
    parser.add_argument("--workdir", default="out/bench_precision", help="where the bundles are kept")
    parser.add_argument("--force", action="store_true", help="re-export and re-quantize")
    parser.add_argument("--out", default=str(ROOT / "results" / "precision.json"))
    args = parser.parse_args(argv)

    import onnxruntime

    from hrdeploy.bundle import Bundle
    from hrdeploy.export import parse_size
    from hrdeploy.io import write_json, write_text
    from hrdeploy.parity.compare import argmax_agreement as keypoint_metrics
    from hrdeploy.parity.compare import tensor_stats as tensor_metrics
    from hrdeploy.pose.samples import write_sample_photos
    from hrdeploy.precision import quantize_bundle
    from hrdeploy.precision.calib import load_images
    from hrdeploy.precision.evaluate import run_model

    size = parse_size(args.input_size)
    photos = Path(tempfile.mkdtemp(prefix="hrdeploy-photos-"))
    write_sample_photos(photos)
    rows = []
    for name in args.models:
        bundle = _bundle(name, Path(args.workdir) / name, size, args.force)
        variants = [("fp32", "model.onnx", None)]
        t0 = time.perf_counter()
        quantize_bundle(bundle, "fp16", calib_dir=photos, backend="ort", sensitivity=False)
        variants.append(("fp16", "model.fp16.onnx", Bundle.open(bundle).artifacts["fp16"].info.details))
        for backend in args.backends:
            quantize_bundle(bundle, "int8", calib_dir=photos, backend=backend, sensitivity=False)
            entry = Bundle.open(bundle).artifacts["int8"].info.details
            target = bundle / f"model.int8.{backend}.onnx"
            shutil.copyfile(bundle / "model.int8.onnx", target)
            variants.append((f"int8-{backend}", target.name, entry))
        print(f"{name}: variants ready in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
        images = load_images(photos, Bundle.open(bundle).input).data
        fp32_out = run_model(bundle / "model.onnx", images)
        out_name = next(iter(fp32_out))
        for label, file, entry in variants:
            variant_out = run_model(bundle / file, images)[out_name]
            own = tensor_metrics(fp32_out[out_name], variant_out)
            own.update(keypoint_metrics(fp32_out[out_name], variant_out))
            val = (entry or {}).get("validation") or {}
            row = {
                "model": name, "precision": label, "file": file, "input_size": list(size),
                "size_mb": round((bundle / file).stat().st_size / 1e6, 2),
                "cosine": val.get("cosine"),
                "argmax_agreement_pct": val.get("argmax_agreement_pct"),
                "cosine_vs_fp32_onnx": own["cosine"],
                "agreement_vs_fp32_onnx": own["argmax_agreement_pct"],
                "input_noise_cosine": val.get("input_noise_cosine"),
                "convs_quantized": (entry or {}).get("convs_quantized"),
                "convs_unquantized": (entry or {}).get("convs_unquantized"),
                "latency": {},
            }
            for batch in args.batches:
                stats = _time(bundle / file, batch, size, args.iterations, args.warmup, args.threads)
                row["latency"][str(batch)] = {k: round(v, 3) for k, v in stats.items()}
                print(f"  {name} {label} b{batch}: p50 {stats['p50_ms']:.1f} ms", file=sys.stderr)
            rows.append(row)

    result = {
        "what": "onnxruntime CPU latency (ms per call); accuracy vs eager fp32 and vs the fp32 ONNX on the "
                "6 scikit-image sample photos",
        "host": {"machine": platform.machine(), "processor": platform.processor() or platform.machine(),
                 "python": platform.python_version(), "onnxruntime": onnxruntime.__version__,
                 "threads": args.threads or "ort default"},
        "iterations": args.iterations, "rows": rows,
    }
    out = Path(args.out)
    write_json(out, result)
    write_text(out.with_suffix(".md"), to_markdown(result, args.batches))
    print(to_markdown(result, args.batches))
    return 0


def to_markdown(result: dict, batches: list[int]) -> str:
    head = "| model | precision | MB | " + " | ".join(f"b{b} p50 ms | b{b} img/s" for b in batches)
    head += " | cosine vs eager | kpt agree % | cosine vs fp32 ONNX | kpt agree % | convs int8 |"
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in result["rows"]:
        cells = [r["model"], r["precision"], f"{r['size_mb']:.1f}"]
        for b in batches:
            lat = r["latency"][str(b)]
            cells += [f"{lat['p50_ms']:.1f}", f"{lat['throughput_ips']:.0f}"]
        ref = "(reference)" if r["precision"] == "fp32" else "-"
        cells.append(ref if r["cosine"] is None else f"{r['cosine']:.4f}")
        agree = r["argmax_agreement_pct"]
        cells.append(ref if agree is None else f"{agree:.1f}")
        cells += [f"{r['cosine_vs_fp32_onnx']:.4f}", f"{r['agreement_vs_fp32_onnx']:.1f}"]
        q, u = r["convs_quantized"], r["convs_unquantized"]
        cells.append("-" if q is None else f"{q}/{q + u}")
        lines.append("| " + " | ".join(cells) + " |")
    host = result["host"]
    lines.append("")
    lines.append(f"onnxruntime {host['onnxruntime']} CPU ({host['processor']}), threads {host['threads']}, "
                 f"{result['iterations']} timed calls each.")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
