"""Accuracy and speed of the trained PP-TinyPose network (wider_naive_lite_hrnet_18) per precision.

For each input size (128x96, 256x192): export the trained checkpoint (dynamic batch), add fp16 and int8
(onnxruntime backend) with `quantize_bundle` calibrated on person crops of the MPII photos + scikit-image's
sample photos, and two deliberately broken int8 variants (every depthwise conv int8: --no-auto-exclude;
calibrated on one tiny random image); then score every artifact with `evaluate_bundle` (COCO keypoint AP by
pycocotools on the 12 annotated people of ../shared/data/coco, GT boxes) and time it on onnxruntime CPU
(p50 at batch 1 and 8). Writes benchmarks/results/accuracy.json and the section between the
`bench_accuracy` markers of benchmarks/RESULTS.md.

    python benchmarks/bench_accuracy.py [--sizes 128x96 256x192] [--threads 1] [--force]
    python benchmarks/bench_accuracy.py --rejudge   # re-judge the recorded crop metrics with the current table
"""

from __future__ import annotations

import argparse
import datetime
import json
import shlex
import shutil
import sys
import time
from pathlib import Path

from results_md import replace_block  # noqa: E402 - benchmarks/ is on sys.path when run as a script

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT.parent / "shared" / "data"
MODEL = "wider_naive_lite_hrnet_18"
WEIGHTS = {"128x96": "pp_tinypose_128x96.safetensors", "256x192": "pp_tinypose_256x192.safetensors"}
BEGIN, END = "<!-- bench_accuracy:begin -->", "<!-- bench_accuracy:end -->"
# variant -> (precision, quantize_bundle keyword arguments, calibration folder key)
VARIANTS = {
    "fp16": ("fp16", {}, "calib"),
    "int8": ("int8", {}, "calib"),
    "int8 broken: depthwise int8": ("int8", {"auto_exclude": False}, "calib"),
    "int8 broken: tiny calibration": ("int8", {}, "tiny"),
    # run in .venv-modelopt (`make test-modelopt` sets it up): --variants "int8: ModelOpt" --append
    "int8: ModelOpt": ("int8", {"backend": "modelopt", "method": "entropy"}, "calib"),
}
DEFAULT_VARIANTS = [v for v in VARIANTS if "ModelOpt" not in v]
# every variant's crop gate runs on the same crops: the people found in the calibration photos


def calibration_folders(work: Path) -> dict[str, Path]:
    """MPII photos + scikit-image photos, and a folder with one 32x32 random image (the broken calibration)."""
    import numpy as np
    from PIL import Image

    from hrdeploy.pose.samples import write_sample_photos

    calib, tiny = work / "calib", work / "tiny"
    calib.mkdir(parents=True, exist_ok=True)
    tiny.mkdir(parents=True, exist_ok=True)
    for jpg in sorted((DATA / "mpii").glob("*.jpg")):
        shutil.copyfile(jpg, calib / jpg.name)
    write_sample_photos(calib)
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(tiny / "tiny.png")
    return {"calib": calib, "tiny": tiny}


def latency(path: Path, size: tuple[int, int], batch: int, iterations: int, threads: int) -> float:
    from hrdeploy.bench.harness import bench_input, bench_runner
    from hrdeploy.runtime.onnxruntime import OrtRunner

    with OrtRunner(path, threads=threads) as runner:
        return bench_runner(runner, bench_input(batch, size), iterations, warmup=2)["p50_ms"]


def measure_size(size_text: str, work: Path, folders: dict[str, Path], args: argparse.Namespace) -> list[dict]:
    from hrdeploy.accuracy.run import evaluate_bundle
    from hrdeploy.export import export_bundle, parse_size
    from hrdeploy.precision import quantize_bundle

    size = parse_size(size_text)
    base = work / f"tp_{size_text}"
    if args.force or not (base / "manifest.json").is_file():
        export_bundle(MODEL, base, input_size=size, dynamic_batch=True, force=True,
                      checkpoint=str(DATA / "weights" / WEIGHTS[size_text]))
    quantized: dict[str, tuple[Path, str, float, dict]] = {}
    for name in args.variants:
        precision, kw, folder = VARIANTS[name]
        bundle = base if name in ("fp16", "int8") else work / f"tp_{size_text}_{name.split(': ')[1].split()[0]}"
        if bundle != base:
            shutil.rmtree(bundle, ignore_errors=True)
            shutil.copytree(base, bundle, ignore=shutil.ignore_patterns("model.fp16.onnx", "model.int8.onnx",
                                                                       ".hrdeploy.lock"))
        t0 = time.perf_counter()
        quantize_bundle(bundle, precision, calib_dir=folders[folder], sensitivity=False, threads=args.threads,
                        val_dir=folders["calib"], **{"backend": "ort", **kw})
        seconds = time.perf_counter() - t0
        val = json.loads((bundle / f"quantize.{precision}.json").read_text())["validation"]
        quantized[name] = (bundle, precision, seconds, val)
        print(f"{size_text} {name}: quantize gate {'PASS' if val['passed'] else 'FAIL'} {val['gated']}", flush=True)

    ann, images = DATA / "coco" / "test_coco.json", DATA / "coco"
    reports = {}
    if {"fp16", "int8"} & set(args.variants):
        reports[""] = evaluate_bundle(base, ann, images, artifacts=["onnx", *[v for v in ("int8", "fp16")
                                                                          if v in args.variants]],
                                      threads=args.threads)
    for name, (bundle, precision, _, _) in quantized.items():
        if bundle != base:
            reports[name] = evaluate_bundle(bundle, ann, images, artifacts=[precision], threads=args.threads)
    rows = []
    for label, rep in reports.items():
        for r in rep["rows"]:
            if label and r["artifact"] != "int8":
                continue
            name = label or {"eager": "eager fp32", "onnx": "fp32 ONNX"}.get(r["artifact"], r["artifact"])
            row = {"size": size_text, "variant": name, "precision": r["precision"], "backend": r["backend"],
                   **{k: r.get(k) for k in ("AP", "AP50", "AP75", "AR", "mean_oks", "dAP", "people")},
                   "eval_gate": None if r["artifact"] == "eager" else ("PASS" if r["passed"] else "FAIL")}
            q = quantized.get(name)
            if q is not None:
                row.update(crop_oks=q[3]["agreement"]["oks"], crop_pck=q[3]["agreement"]["pck@0.05"],
                           crop_cosine=q[3]["tensor"]["cosine"], quantize_s=round(q[2], 1),
                           bundle=str(q[0]))
                row["quantize_gate"] = crop_gate(row)
            if r["artifact"] != "eager":
                path = (quantized[label][0] if label else base) / r["file"]
                row["b1_p50_ms"] = round(latency(path, size, 1, args.iterations, args.threads), 2)
                row["b8_p50_ms"] = round(latency(path, size, 8, max(3, args.iterations // 3), args.threads), 2)
            rows.append(row)
            print(json.dumps(row), flush=True)
    return rows


def crop_gate(row: dict) -> str:
    """The quantize gate without annotations (hrdeploy.parity) on the row's recorded crop metrics."""
    from hrdeploy.parity.compare import judge
    from hrdeploy.parity.tolerances import TOLERANCES

    metrics = {"oks": row["crop_oks"], "pck@0.05": row["crop_pck"], "cosine": row["crop_cosine"]}
    return "FAIL" if judge(metrics, TOLERANCES[row["precision"]]) else "PASS"


def _f(v: object, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def table(result: dict) -> list[str]:
    """The accuracy-and-speed table (Markdown lines)."""
    lines = [
        "| input | model | AP | AP50 | AP75 | AR | mean OKS | dAP | crop OKS | crop PCK % | crop cosine "
        "| quantize gate | eval gate | b1 p50 ms | b8 p50 ms |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in result["rows"]:
        dap = "-" if r["variant"] == "eager fp32" else f"{r['dAP']:+.2f}"
        lines.append(
            f"| {r['size']} | {r['variant']} | {r['AP']:.4f} | {r['AP50']:.4f} | {r['AP75']:.4f} | {r['AR']:.4f} "
            f"| {r['mean_oks']:.4f} | {dap} | {_f(r.get('crop_oks'), '.4f')} | {_f(r.get('crop_pck'), '.1f')} "
            f"| {_f(r.get('crop_cosine'), '.4f')} "
            f"| {r.get('quantize_gate') or '-'} | {r.get('eval_gate') or '-'} | {_f(r.get('b1_p50_ms'), '.1f')} "
            f"| {_f(r.get('b8_p50_ms'), '.1f')} |"
        )
    return lines


def to_markdown(result: dict) -> str:
    lines = [
        BEGIN,
        f"## Accuracy of the trained network per precision ({result['date']})",
        "",
        f"Measured by `{result['command']}` ({result['minutes']:.0f} min; load average {result['load']})"
        + (f", gates re-judged on the recorded metrics with the current table by `--rejudge` ({result['rejudged']})"
           if result.get("rejudged") else "") + ". "
        f"{MODEL} with the trained PP-TinyPose weights (../shared/data/weights), exported with a dynamic batch; fp16 "
        "and int8 by `hrdeploy quantize` with the onnxruntime backend (int8: percentile 99.99, per-channel weights, "
        "wide-range depthwise convs kept fp32), calibrated on person crops that the fp32 model finds in the 5 "
        "MPII photos + 6 scikit-image photos. AP: COCO keypoint AP by pycocotools on the "
        f"{result['people']} annotated people of ../shared/data/coco (GT boxes x1.25, no flip, quarter-pixel "
        "decoding), the same as `hrdeploy eval BUNDLE --ann ... --images ... --all`; dAP in AP points against eager "
        "fp32. Crop OKS / PCK / cosine: the quantize gate without annotations (keypoint agreement with eager and "
        "the heatmaps' cosine on the person crops of the calibration photos; bars in hrdeploy/parity/tolerances.py; "
        "`quantize gate` is that verdict, `eval gate` the AP-drop verdict). Latency: onnxruntime CPU, "
        f"{result['threads']} thread(s), p50 of {result['iterations']} calls at batch 1 and "
        f"{max(3, result['iterations'] // 3)} at batch 8. The two `broken` rows are deliberately bad int8 builds "
        "that the gates must reject. `int8: ModelOpt` rows (NVIDIA ModelOpt, entropy calibration, the same crops and "
        "the same wide-range depthwise exclusion) were added by "
        + ("; ".join(f"`{a}`" for a in result["appended"]) if result.get("appended") else "nobody (not measured)")
        + " in `.venv-modelopt` (onnxruntime-gpu's CPU provider there; the latency of those rows was measured in "
        "that environment at another time and machine load, so do not compare it with the other rows).",
        "",
    ]
    lines += table(result)
    lines.append(END)
    return "\n".join(lines) + "\n"


def _variant_bundle(work: Path, row: dict) -> Path:
    """Where measure_size kept a variant's bundle."""
    name = row["variant"]
    if name in ("fp16", "int8"):
        return work / f"tp_{row['size']}"
    return work / f"tp_{row['size']}_{name.split(': ')[1].split()[0]}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", nargs="+", default=["128x96", "256x192"], choices=sorted(WEIGHTS))
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--iterations", type=int, default=20, help="timed calls at batch 1 (a third at batch 8)")
    parser.add_argument("--workdir", default="out/bench_accuracy")
    parser.add_argument("--force", action="store_true", help="re-export the bundles")
    parser.add_argument("--json", default=str(ROOT / "benchmarks" / "results" / "accuracy.json"))
    parser.add_argument("--results-md", default=str(ROOT / "benchmarks" / "RESULTS.md"))
    parser.add_argument("--readme", default=str(ROOT / "README.md"), help="README whose table block is replaced")
    parser.add_argument("--variants", nargs="+", default=DEFAULT_VARIANTS, choices=list(VARIANTS))
    parser.add_argument("--append", action="store_true",
                        help="merge the measured rows into --json (replacing rows of the same input and model)")
    parser.add_argument("--rejudge", action="store_true",
                        help="re-judge the crop metrics of --json (read back from each variant's quantize report) "
                             "with the current tolerance table and re-render; measures nothing")
    args = parser.parse_args(argv)
    if not DATA.is_dir():
        print(f"{DATA} is absent: the trained weights and the COCO/MPII photos are needed", file=sys.stderr)
        return 2
    import os

    from hrdeploy.io import write_json

    command = "python benchmarks/bench_accuracy.py " + shlex.join(argv if argv is not None else sys.argv[1:])
    if args.rejudge:
        result = json.loads(Path(args.json).read_text())
        for row in result["rows"]:
            if row.get("crop_oks") is not None:
                bundle = Path(row["bundle"]) if row.get("bundle") else _variant_bundle(Path(args.workdir), row)
                val = json.loads((bundle / f"quantize.{row['precision']}.json").read_text())["validation"]
                row.update(crop_oks=val["agreement"]["oks"], crop_pck=val["agreement"]["pck@0.05"],
                           crop_cosine=val["tensor"]["cosine"])
                row["quantize_gate"] = crop_gate(row)
        result["rejudged"] = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    else:
        start = time.time()
        work = Path(args.workdir)
        folders = calibration_folders(work)
        rows = [row for size in args.sizes for row in measure_size(size, work, folders, args)]
        if args.append:
            result = json.loads(Path(args.json).read_text())
            new = {(r["size"], r["variant"]): r for r in rows}
            kept = [new.pop((r["size"], r["variant"]), r) for r in result["rows"]]
            result["rows"] = sorted(kept + list(new.values()), key=lambda r: r["size"] != "128x96")
            when = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
            result.setdefault("appended", []).append(f"{command} ({when})")
        else:
            result = {
                "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
                "command": command,
                "minutes": (time.time() - start) / 60, "load": " ".join(f"{v:.1f}" for v in os.getloadavg()),
                "threads": args.threads, "iterations": args.iterations, "people": rows[0]["people"], "rows": rows,
            }
    write_json(args.json, result)
    md = to_markdown(result)
    replace_block(Path(args.results_md), md, BEGIN, END)
    readme = "\n".join([BEGIN, f"Measured {result['date']} by `{result['command']}` (details: "
                         "[benchmarks/RESULTS.md](benchmarks/RESULTS.md)); onnxruntime CPU, 12 annotated COCO people.",
                         "", *table(result), END]) + "\n"
    replace_block(Path(args.readme), readme, BEGIN, END)
    print(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
