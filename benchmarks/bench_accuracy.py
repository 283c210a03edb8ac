"""Accuracy of the trained PP-TinyPose network (wider_naive_lite_hrnet_18) per precision, the INT8 search's path,
and the crop gate's thresholds derived from measured pairs.

For each input size (128x96, 256x192): export the trained checkpoint (dynamic batch), then add fp16 and INT8
variants with `quantize_bundle`, calibrated (and, for the search, tuned) on ../shared/data/coco-train: the
accuracy search with annotations (the default), the search from photos alone, no search (wide-range depthwise
convs fp32, all people or the first 32 photos), max calibration, each of the search and no search also with
depthwise input equalization (`--equalize`), the searches also without their dense-conv input equalization
(`--no-equalize-dense`), and two deliberately broken builds (every depthwise conv INT8,
unequalized; one flat gray calibration image). Each variant's crop gate (keypoint agreement with eager
and heatmap cosine, no annotations) runs on the person crops the fp32 model finds in the coco-train photos;
every artifact is then scored on ../shared/data/coco-val (149 people) by `evaluate_bundle` (pycocotools COCO AP,
dAP with a paired bootstrap 95 % interval) and timed on onnxruntime CPU (p50, batch 1 and 8).

From the (crop metric, coco-val dAP) pairs of every INT8 variant at both sizes it derives the crop gate's bars:
for each metric, the midpoint between the best variant that loses more than the int8 AP bar and the worst that
does not (when the two groups separate). Writes benchmarks/results/accuracy.json and the sections between the
`bench_accuracy` and `bench_int8_search` markers of benchmarks/RESULTS.md (and the README's table block).

    python benchmarks/bench_accuracy.py [--sizes 128x96 256x192] [--threads 1] [--force]
    python benchmarks/bench_accuracy.py --render   # re-render from --json with the current tolerance table
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
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
SEARCH_BEGIN, SEARCH_END = "<!-- bench_int8_search:begin -->", "<!-- bench_int8_search:end -->"
GATE_METRICS = ("oks", "pck@0.05", "cosine")
# variant -> (precision, quantize_bundle keyword arguments; calibration on coco-train unless given)
VARIANTS: dict[str, tuple[str, dict]] = {
    "fp16": ("fp16", {}),
    "int8 search": ("int8", {"annotated": True, "equalize": False}),
    "int8 search, dense unequalized": ("int8", {"annotated": True, "equalize": False, "equalize_dense": False}),
    "int8 search, equalized": ("int8", {"annotated": True, "equalize": True}),
    "int8 search, min OKS 0.99": ("int8", {"annotated": True, "equalize": False, "min_oks": 0.99}),
    "int8 search, signed activations": ("int8", {"annotated": True, "equalize": False, "shift_activations": False}),
    "int8 search, photos only": ("int8", {"equalize": False}),
    "int8 search, photos only, dense unequalized": ("int8", {"equalize": False, "equalize_dense": False}),
    "int8 search, photos only, equalized": ("int8", {"equalize": True}),
    "int8 no search": ("int8", {"annotated": True, "search": False, "equalize": False}),
    "int8 no search, equalized": ("int8", {"annotated": True, "search": False, "equalize": True}),
    "int8 no search, 32 photos": ("int8", {"annotated": True, "search": False, "calib_samples": 32,
                                           "equalize": False}),
    "int8 no search, max": ("int8", {"annotated": True, "search": False, "method": "max", "equalize": False}),
    "int8 broken: depthwise int8": ("int8", {"annotated": True, "search": False, "auto_exclude": False,
                                             "equalize": False}),
    "int8 broken: gray calibration": ("int8", {"search": False, "calib": "gray", "equalize": False}),
    # run in .venv-modelopt (`make test-modelopt` sets it up) with --variants ... --append
    "int8 ModelOpt search": ("int8", {"annotated": True, "backend": "modelopt", "method": "entropy"}),
    "int8 ModelOpt no search": ("int8", {"annotated": True, "search": False, "backend": "modelopt",
                                         "method": "entropy"}),
}
DEFAULT_VARIANTS = [v for v in VARIANTS if "ModelOpt" not in v]


def gray_folder(work: Path) -> Path:
    """One flat gray photo: the broken calibration."""
    import numpy as np
    from PIL import Image

    folder = work / "gray"
    folder.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((256, 192, 3), 128, np.uint8)).save(folder / "gray.png")
    return folder


def latency(path: Path, size: tuple[int, int], batch: int, iterations: int, threads: int) -> float:
    from hrdeploy.bench.harness import bench_input, bench_runner
    from hrdeploy.runtime.onnxruntime import OrtRunner

    with OrtRunner(path, threads=threads) as runner:
        return bench_runner(runner, bench_input(batch, size), iterations, warmup=2)["p50_ms"]


def quantize_variant(base: Path, work: Path, size_text: str, name: str, args: argparse.Namespace) -> dict:
    """Copy the base bundle, add the variant, return its quantize record."""
    from hrdeploy.precision import quantize_bundle

    precision, kw = VARIANTS[name]
    kw = dict(kw)
    bundle = work / f"tp_{size_text}_{name.replace(' ', '_').replace(':', '').replace(',', '')}"
    shutil.rmtree(bundle, ignore_errors=True)
    shutil.copytree(base, bundle, ignore=shutil.ignore_patterns("model.fp16.onnx", "model.int8.onnx", "eval*",
                                                                "quantize*", ".hrdeploy.lock"))
    train = DATA / "coco-train"
    calib = gray_folder(work) if kw.pop("calib", None) == "gray" else train
    ann = train / "person_keypoints.json" if kw.pop("annotated", False) else None
    t0 = time.perf_counter()
    kw.setdefault("backend", "ort")
    quantize_bundle(bundle, precision, calib_dir=calib if precision == "int8" else None, calib_ann=ann,
                    sensitivity=False, threads=args.threads,
                    log=lambda m: print(f"  {m}", flush=True), **kw)
    report = json.loads((bundle / f"quantize.{precision}.json").read_text())
    row = {"size": size_text, "variant": name, "precision": precision, "bundle": str(bundle),
           "quantize_s": round(time.perf_counter() - t0, 1), "crop": crop_metrics(bundle, precision, args.threads)}
    conv = report["conversion"]
    if precision == "int8":
        row["convs_int8"] = conv["convs_quantized"]
        row["convs"] = conv["convs_quantized"] + conv["convs_unquantized"]
        if "search" in conv:
            row["search"] = conv["search"]
    print(f"{size_text} {name}: crop {row['crop']} ({row['quantize_s']} s)", flush=True)
    return row


def tuning_crops(bundle: str | Path, found: bool) -> object:
    """The tuning people of coco-train (the default seeded split by photo) as `quantize` tunes on them: the
    annotated boxes (`--calib-ann`), or the people the fp32 ONNX finds in the photos (photos only)."""
    from hrdeploy.bundle import Bundle
    from hrdeploy.images import image_files
    from hrdeploy.parity.coco import CropSet
    from hrdeploy.parity.crops import PEOPLE_PER_PHOTO, boxes_from_annotations, find_people
    from hrdeploy.precision.targets import DEFAULT_SEED, DEFAULT_TUNE_SHARE
    from hrdeploy.precision.tuning import split_by_photo
    from hrdeploy.runtime.factory import open_runner

    b = Bundle.open(bundle)
    train = DATA / "coco-train"
    if found:
        with open_runner(b.artifact("onnx")) as fp32:
            people = find_people(image_files(train), lambda x: fp32.run(x)[b.output_names[0]], b.input.size,
                                 b.input.mean, b.input.std, per_photo=PEOPLE_PER_PHOTO)
    else:
        people = boxes_from_annotations(train / "person_keypoints.json", train, b.input.size)
    return CropSet.build(split_by_photo(people, DEFAULT_TUNE_SHARE, DEFAULT_SEED)[1], b.input.size, b.input.mean,
                         b.input.std)


def crop_metrics(bundle: str | Path, precision: str, threads: int) -> dict[str, float]:
    """The crop gate's metrics (no annotations: keypoint agreement with eager and heatmap cosine) on the person
    crops `quantize --calib-ann` gates the search's INT8 on: the tuning people of coco-train (default split);
    and `found_oks`, the keypoint agreement on the tuning crops the fp32 model finds (the photos-only search's
    measure)."""
    from hrdeploy.bundle import Bundle
    from hrdeploy.parity.pose import Reference, check_pose
    from hrdeploy.parity.tolerances import TOLERANCES
    from hrdeploy.runtime.eager import EagerRunner
    from hrdeploy.runtime.factory import open_runner

    b = Bundle.open(bundle)
    eager = EagerRunner(b.eager_model(), b.output_names, threads=threads)
    out = {}
    with open_runner(b.artifact(precision), threads=threads) as runner:
        for found in (False, True):
            ref = Reference.compute(lambda x: eager.run(x)[b.output_names[0]], tuning_crops(bundle, found))
            res = check_pose(ref, lambda x: runner.run(x)[b.output_names[0]], TOLERANCES[precision])
            if found:
                out["found_oks"] = res["agreement"]["oks"]
            else:
                out.update({"oks": res["agreement"]["oks"], "pck@0.05": res["agreement"]["pck@0.05"],
                            "cosine": res["tensor"]["cosine"]})
    return out


def measure_size(size_text: str, work: Path, args: argparse.Namespace) -> list[dict]:
    from hrdeploy.accuracy.run import evaluate_bundle
    from hrdeploy.export import export_bundle, parse_size

    size = parse_size(size_text)
    base = work / f"tp_{size_text}"
    if args.force or not (base / "manifest.json").is_file():
        export_bundle(MODEL, base, input_size=size, dynamic_batch=True, force=True,
                      checkpoint=str(DATA / "weights" / WEIGHTS[size_text]))
    ann, images = DATA / "coco-val" / "person_keypoints.json", DATA / "coco-val"
    rows = []
    base_report = evaluate_bundle(base, ann, images, artifacts=["onnx"], threads=args.threads)
    for r in base_report["rows"]:
        row = {"size": size_text, "variant": "eager fp32" if r["artifact"] == "eager" else "fp32 ONNX",
               "precision": "fp32", **_eval_cells(r)}
        if r["artifact"] == "onnx":
            row.update(_latency(base / "model.onnx", size, args))
        rows.append(row)
    for name in args.variants:
        row = quantize_variant(base, work, size_text, name, args)
        rep = evaluate_bundle(row["bundle"], ann, images, artifacts=[row["precision"]], threads=args.threads)
        row.update(_eval_cells(rep["rows"][1]))
        row.update(_latency(Path(row["bundle"]) / rep["rows"][1]["file"], size, args))
        rows.append(row)
        print(json.dumps({k: v for k, v in row.items() if k != "search"}), flush=True)
    return rows


def _eval_cells(r: dict) -> dict:
    out = {k: r.get(k) for k in ("AP", "AP50", "AP75", "AR", "mean_oks", "dAP", "people")}
    if "interval" in r:
        out["ci"] = [round(r["interval"]["low"], 2), round(r["interval"]["high"], 2)]
        out["eval_gate"] = "PASS" if r["passed"] else "FAIL"
    return out


def _latency(path: Path, size: tuple[int, int], args: argparse.Namespace) -> dict:
    return {"b1_p50_ms": round(latency(path, size, 1, args.iterations, args.threads), 2),
            "b8_p50_ms": round(latency(path, size, 8, max(3, args.iterations // 3), args.threads), 2)}


def derive_bars(rows: list[dict], bar: float) -> dict[str, dict]:
    """Per crop metric, the bar that rejects every INT8 variant losing more than `bar` AP on coco-val: midway
    between the best such variant and the next good variant above it, and how many good variants it rejects too."""
    int8 = [r for r in rows if r["precision"] == "int8" and "crop" in r]
    out = {}
    for metric in GATE_METRICS:
        bad = [r["crop"][metric] for r in int8 if r["dAP"] < -bar]
        good = sorted(r["crop"][metric] for r in int8 if r["dAP"] >= -bar)
        best_bad = max(bad) if bad else None
        above = [g for g in good if best_bad is None or g > best_bad]
        derived = None if best_bad is None or not above else round((best_bad + above[0]) / 2, 4)
        out[metric] = {"best_bad": best_bad, "worst_good": good[0] if good else None,
                       "separable": bool(good and best_bad is not None and best_bad < good[0]), "bar": derived,
                       "good_rejected": None if derived is None else sum(g < derived for g in good),
                       "good": len(good), "bad": len(bad)}
    return out


def crop_gate(row: dict) -> str:
    """The quantize gate without annotations (hrdeploy.parity, the current table) on the recorded crop metrics."""
    from hrdeploy.parity.compare import judge
    from hrdeploy.parity.tolerances import TOLERANCES

    return "FAIL" if judge(dict(row["crop"]), TOLERANCES[row["precision"]]) else "PASS"


def _f(v: object, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def table(result: dict) -> list[str]:
    lines = ["| input | model | AP | AP50 | AR | dAP | dAP 95% CI | crop OKS | crop PCK % | crop cosine | found OKS "
             "| convs int8 | crop gate | eval gate | b1 p50 ms | b8 p50 ms |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in result["rows"]:
        crop = r.get("crop", {})
        dap = "-" if r["variant"] == "eager fp32" else f"{r['dAP']:+.2f}"
        ci = f"[{r['ci'][0]:+.2f}, {r['ci'][1]:+.2f}]" if r.get("ci") else "-"
        convs = f"{r['convs_int8']}/{r['convs']}" if "convs" in r else "-"
        lines.append(
            f"| {r['size']} | {r['variant']} | {r['AP']:.4f} | {r['AP50']:.4f} | {r['AR']:.4f} | {dap} | {ci} "
            f"| {_f(crop.get('oks'), '.4f')} | {_f(crop.get('pck@0.05'), '.1f')} | {_f(crop.get('cosine'), '.4f')} "
            f"| {_f(crop.get('found_oks'), '.4f')} | {convs} | {crop_gate(r) if crop else '-'} "
            f"| {r.get('eval_gate') or '-'} "
            f"| {_f(r.get('b1_p50_ms'), '.1f')} | {_f(r.get('b8_p50_ms'), '.1f')} |")
    return lines


def bars_table(bars: dict[str, dict], bar: float) -> list[str]:
    from hrdeploy.parity.tolerances import TOLERANCES

    current = TOLERANCES["int8"].as_dict()
    key = {"oks": "min_oks", "pck@0.05": "min_pck", "cosine": "min_cosine"}
    lines = [f"| crop metric | worst INT8 within {bar:g} AP | best INT8 losing more | separable | bar rejecting "
             "every loss | good variants it rejects too | bar in the tolerance table |",
             "|---|---|---|---|---|---|---|"]
    for metric, b in bars.items():
        rejected = "-" if b["good_rejected"] is None else f"{b['good_rejected']} of {b['good']}"
        lines.append(f"| {metric} | {_f(b['worst_good'], '.4f')} | {_f(b['best_bad'], '.4f')} "
                     f"| {'yes' if b['separable'] else 'no'} | {_f(b['bar'], '.4f')} | {rejected} "
                     f"| {current.get(key[metric])} |")
    return lines


def _row_order(row: dict) -> tuple[bool, int]:
    """Sizes in turn; within a size the references first, then the variants in VARIANTS order."""
    order = list(VARIANTS)
    return row["size"] != "128x96", order.index(row["variant"]) if row["variant"] in order else -1


def search_table(result: dict) -> list[str]:
    """The INT8 search's path (the Pareto walk) of the annotated searches at each size."""
    lines = []
    for r in result["rows"]:
        s = r.get("search")
        if not s or not s["annotated"] or "ModelOpt" in r["variant"]:
            continue
        tried = ", ".join(f"{k} {v['oks']:.4f}" for k, v in s.get("encodings", {}).items())
        encoding = f"; activations {s['activations']} (chosen points' OKS: {tried})" if "activations" in s else ""
        lines += ["", f"**{r['size']}, {r['variant']}**: target {s['target']} on {s['tuning_people']} tuning people "
                  f"({s['split']}){encoding}; the chosen point scores dAP {r['dAP']:+.2f} "
                  f"[{r['ci'][0]:+.2f}, {r['ci'][1]:+.2f}] on coco-val.", "",
                  "| # | step | change | convs int8 | MACs int8 | tuning dAP | OKS vs fp32 | latency / fp32 | |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for i, p in enumerate(s["points"]):
            mark = "**chosen**" if i == s["chosen"] else ("met" if p["within"] else "")
            lines.append(f"| {i} | {p['step']} | {p['change'] or '(every conv int8)'} | {p['convs_int8']} "
                         f"| {100 * p['mac_share_int8']:.1f} % | {_f(p['ap_drop'] and -p['ap_drop'], '+.2f')} "
                         f"| {p['oks']:.4f} | {_f(p['latency_ratio'], '.2f')} | {mark} |")
    return lines


def render(result: dict, args: argparse.Namespace) -> None:
    from hrdeploy.parity.tolerances import TOLERANCES

    bar = TOLERANCES["int8"].max_ap_drop
    result["rows"].sort(key=_row_order)
    bars = derive_bars(result["rows"], bar)
    result["derived_bars"] = bars
    int8 = [r for r in result["rows"] if r["precision"] == "int8"]
    rejected = [r for r in int8 if r["dAP"] < -bar and crop_gate(r) == "FAIL"]
    missed = [f"{r['size']} {r['variant']}" for r in int8 if r["dAP"] < -bar and crop_gate(r) == "PASS"]
    intro = (
        f"Measured by `{result['command']}` ({result['minutes']:.0f} min, load average {result['load']}). {MODEL} "
        "with the trained PP-TinyPose weights, dynamic batch; fp16 and INT8 by `hrdeploy quantize` (onnxruntime "
        "backend, percentile 99.99 unless said), calibrated and tuned on ../shared/data/coco-train (174 people in 60 "
        "photos: the search splits them by photo, seeded, into calibration and tuning people; `photos only` gives it "
        "no annotations). AP: pycocotools COCO keypoint AP on the 149 people of ../shared/data/coco-val (GT boxes "
        "x1.25, no flip), as `hrdeploy eval`; dAP in AP points against eager fp32 with its paired bootstrap 95 % "
        "interval (1000 resamples of the people). Crop OKS / PCK / cosine: the quantize gate without annotations, "
        "on the person crops `quantize --calib-ann` gates the search's INT8 on (the tuning people of coco-train, "
        "the default split), the same crops for every variant; `equalized`: depthwise input equalization "
        "(`quantize --equalize`) before calibration; `dense unequalized`: without the dense-conv input "
        "equalization every search applies by default (`--no-equalize-dense`); `min OKS 0.99`: the annotated "
        "search held to keypoint agreement 0.99 with fp32 (`--min-oks 0.99`) instead of its default; `signed "
        "activations`: the annotated search without the shifted encoding it otherwise also tries and may keep "
        "(`--no-shift-activations`); found OKS: "
        "keypoint agreement on the "
        "tuning crops "
        "the fp32 model finds in the same photos (up to three per photo), the photos-only search's measure; "
        "`crop gate` is its verdict with the current tolerance table, `eval gate` the AP-drop verdict. Latency: "
        f"onnxruntime CPU, {result['threads']} thread(s), p50 at batch 1 and 8."
        + (" Rows added or re-measured later (the ModelOpt rows, NVIDIA ModelOpt's Q/DQ with entropy calibration, "
           "in `.venv-modelopt`) by " + "; ".join(f"`{a}`" for a in result["appended"]) + "."
           if result.get("appended") else ""))
    md = [BEGIN, f"## Accuracy of the trained network per precision ({result['date']})", "", intro, "", *table(result),
          "", f"### The crop gate, derived from these pairs ({len(int8)} INT8 variants)", "",
          f"For each crop metric, the INT8 variants that lose more than {bar:g} AP on coco-val against those that do "
          "not: a metric separates them when every bad variant scores below every good one; the bar that rejects "
          "every bad variant lies midway between the best bad one and the next good one above it, and rejects the "
          "good variants below it too.", "", *bars_table(bars, bar), "",
          f"With the current table the crop gate rejects {len(rejected)} of the "
          f"{sum(r['dAP'] < -bar for r in int8)} INT8 variants that lose more than {bar:g} AP"
          + (f"; it passes {', '.join(missed)}." if missed else "."), END]
    replace_block(Path(args.results_md), "\n".join(md) + "\n", BEGIN, END)
    search = [SEARCH_BEGIN, f"## The INT8 search's path ({result['date']})", "",
              "Each row is a candidate the search scored on its tuning people (coco-train, held out from calibration): "
              "convs and share of conv MACs in INT8, the AP drop against fp32 on the tuning people, mean OKS of its "
              "keypoints against fp32's, and onnxruntime CPU latency against the fp32 graph, measured alternating "
              "(batch 1; onnxruntime runs a Q/DQ graph by dequantizing, so INT8 is slower than fp32 on CPU; TensorRT "
              "fuses the Q/DQ into INT8 kernels).", *search_table(result), SEARCH_END]
    replace_block(Path(args.results_md), "\n".join(search) + "\n", SEARCH_BEGIN, SEARCH_END)
    readme = "\n".join([BEGIN, f"Measured {result['date']} by `{result['command']}` (details: "
                        "[benchmarks/RESULTS.md](benchmarks/RESULTS.md)); onnxruntime CPU, 149 annotated people of "
                        "coco-val.", "", *table(result), END]) + "\n"
    replace_block(Path(args.readme), readme, BEGIN, END)
    print("\n".join(md))
    print("\n".join(search))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", nargs="+", default=["128x96", "256x192"], choices=sorted(WEIGHTS))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--iterations", type=int, default=20, help="timed calls at batch 1 (a third at batch 8)")
    parser.add_argument("--recrop", action="store_true",
                        help="re-measure the crop metrics of the variants recorded in --json, then render")
    parser.add_argument("--workdir", default="out/bench_accuracy")
    parser.add_argument("--force", action="store_true", help="re-export the bundles")
    parser.add_argument("--json", default=str(ROOT / "benchmarks" / "results" / "accuracy.json"))
    parser.add_argument("--results-md", default=str(ROOT / "benchmarks" / "RESULTS.md"))
    parser.add_argument("--readme", default=str(ROOT / "README.md"), help="README whose table block is replaced")
    parser.add_argument("--variants", nargs="+", default=DEFAULT_VARIANTS, choices=list(VARIANTS))
    parser.add_argument("--append", action="store_true",
                        help="merge the measured rows into --json (replacing rows of the same input and model)")
    parser.add_argument("--render", action="store_true", help="re-render --json with the current table")
    args = parser.parse_args(argv)
    if not DATA.is_dir():
        print(f"{DATA} is absent: the trained weights and the COCO photos are needed", file=sys.stderr)
        return 2
    from hrdeploy.io import write_json

    if args.render or args.recrop:
        result = json.loads(Path(args.json).read_text())
        for row in result["rows"] if args.recrop else []:
            if "crop" in row:
                row["crop"] = crop_metrics(row["bundle"], row["precision"], args.threads)
                print(row["size"], row["variant"], row["crop"], flush=True)
    else:
        start = time.time()
        work = Path(args.workdir)
        rows = [row for size in args.sizes for row in measure_size(size, work, args)]
        if args.append:
            result = json.loads(Path(args.json).read_text())
            new = {(r["size"], r["variant"]): r for r in rows}
            kept = [new.pop((r["size"], r["variant"]), r) for r in result["rows"]]
            result["rows"] = kept + list(new.values())
            result.setdefault("appended", []).append(
                "python benchmarks/bench_accuracy.py " + shlex.join(argv if argv is not None else sys.argv[1:]))
            render(result, args)
            write_json(args.json, result)
            return 0
        result = {
            "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "command": "python benchmarks/bench_accuracy.py " + shlex.join(argv if argv is not None else sys.argv[1:]),
            "minutes": (time.time() - start) / 60, "load": " ".join(f"{v:.1f}" for v in os.getloadavg()),
            "threads": args.threads, "rows": rows,
        }
    render(result, args)
    write_json(args.json, result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
