"""What the heatmap decoder does to the accuracy bench's figures: every bench artifact scored on coco-val with the
quarter-pixel shift (`hrdeploy eval`'s default) and with DARK (`eval --dark`), against eager fp32 decoded the same way.

PP-TinyPose's own post-processing decodes with DARK (PaddleDetection's `HRNetPostProcess(use_dark=True)`, a 3x3 blur
where `--dark` uses mmpose's 11x11), so `eval --dark` is close to the trained network's own protocol. A continuous
decoder also turns fewer small heatmap perturbations into keypoint jumps, which is what INT8 makes: the `tune OKS`
columns are each artifact's keypoint agreement with fp32 on the coco-train tuning people (the default split, the
people the INT8 search tunes on) under each decoder. The artifacts are the onnxruntime-backend ones
`bench_accuracy.py` built (read from benchmarks/results/accuracy.json; the ModelOpt rows live in their own workdir);
nothing is re-quantized. Writes benchmarks/results/decoder.json and the section between the `bench_decoder` markers
of RESULTS.md (the default variants' rows also into the README's).

    python benchmarks/bench_decoder.py [--threads 2]
    python benchmarks/bench_decoder.py --render   # re-render --json
"""

from __future__ import annotations

import argparse
import datetime
import json
import shlex
import sys
from pathlib import Path

from bench_accuracy import DATA, tuning_crops  # noqa: E402 - benchmarks/ is on sys.path when run as a script
from results_md import replace_block  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
BEGIN, END = "<!-- bench_decoder:begin -->", "<!-- bench_decoder:end -->"
DECODERS = {"quarter": "default", "DARK": "dark"}  # column label -> hrdeploy.pose.decode post_process
README_VARIANTS = ("fp16", "int8 search", "int8 search, photos only")  # the README's rows: the defaults


def measure_size(size: str, rows: list[dict], threads: int, resamples: int) -> list[dict]:
    """Per artifact of one input size and per decoder: coco-val AP, dAP against eager with its paired interval,
    and the tuning people's OKS against the fp32 ONNX."""
    from hrdeploy.bundle import Bundle
    from hrdeploy.parity.coco import CocoKeypoints, CropSet
    from hrdeploy.parity.compare import keypoint_agreement
    from hrdeploy.parity.pose import Reference, check_pose
    from hrdeploy.parity.tolerances import TOLERANCES
    from hrdeploy.runtime.eager import EagerRunner
    from hrdeploy.runtime.onnxruntime import OrtRunner

    val = DATA / "coco-val"
    coco = CocoKeypoints(val / "person_keypoints.json", val)
    base = Bundle.open(Path(rows[0]["bundle"]).parent / f"tp_{size}")
    name = base.output_names[0]
    crops = CropSet.build(coco.gt_boxes(), base.input.size, base.input.mean, base.input.std)
    tune = tuning_crops(base.root, found=False)
    eager = EagerRunner(base.eager_model(), base.output_names, threads=threads)
    refs = {d: Reference.compute(lambda x: eager.run(x)[name], crops, coco, post_process=p)
            for d, p in DECODERS.items()}
    with OrtRunner(base.artifact("onnx").path, threads=threads) as fp32:
        tune_ref = {d: tune.keypoints(lambda x: fp32.run(x)[name], post_process=p)[0] for d, p in DECODERS.items()}
    artifacts = [("fp32 ONNX", "fp32", base.artifact("onnx").path)]
    artifacts += [(r["variant"], r["precision"], Path(r["bundle"]) / f"model.{r['precision']}.onnx") for r in rows]
    out = []
    for variant, precision, path in artifacts:
        row = {"size": size, "variant": variant, "precision": precision}
        with OrtRunner(path, threads=threads) as runner:
            run = lambda x: runner.run(x)[name]  # noqa: E731
            for d, p in DECODERS.items():
                res = check_pose(refs[d], run, TOLERANCES[precision], bootstrap=resamples)
                ci = res["interval"]
                oks = keypoint_agreement(tune_ref[d], tune.keypoints(run, post_process=p)[0], tune.boxes_wh)["oks"]
                row[d] = {"eager_AP": refs[d].stats["AP"], "AP": res["stats"]["AP"], "dAP": ci["dap"],
                          "ci": [ci["low"], ci["high"]], "tune_oks": float(oks)}
        print(json.dumps(row), flush=True)
        out.append(row)
    return out


def table(rows: list[dict]) -> list[str]:
    head = " | ".join(f"{d} AP | {d} dAP | {d} 95 % CI | {d} tune OKS" for d in DECODERS)
    lines = [f"| input | model | {head} |", "|---|---|" + "---|" * 4 * len(DECODERS)]
    for r in rows:
        cells = " | ".join(f"{r[d]['AP']:.4f} | {r[d]['dAP']:+.2f} | [{r[d]['ci'][0]:+.2f}, {r[d]['ci'][1]:+.2f}] "
                           f"| {r[d]['tune_oks']:.4f}" for d in DECODERS)
        lines.append(f"| {r['size']} | {r['variant']} | {cells} |")
    return lines


def render(result: dict, args: argparse.Namespace) -> None:
    rows = result["rows"]
    sizes = list(dict.fromkeys(r["size"] for r in rows))
    eager = {(r["size"], d): r[d]["eager_AP"] for r in rows for d in DECODERS}
    md = [BEGIN, f"## Quarter-pixel shift against DARK decoding ({result['date']})", "",
          f"Measured by `{result['command']}`: the artifacts of the accuracy table above (not re-quantized), each "
          "scored on the 149 coco-val people (GT boxes, no flip, onnxruntime CPU) against eager fp32 decoded the "
          "same way, with the paired bootstrap 95 % interval of `eval`. `quarter` is `hrdeploy eval`'s default "
          "decoder, `DARK` is `eval --dark` (mmpose's DARK, 11x11 blur; PP-TinyPose's own post-processing refines with "
          "DARK too, with a 3x3 blur). `tune OKS`: "
          "keypoint agreement with the fp32 ONNX on the coco-train tuning people under that decoder. Eager fp32 AP: "
          + "; ".join(f"{s} {eager[s, 'quarter']:.4f} (quarter), {eager[s, 'DARK']:.4f} (DARK)" for s in sizes) + ".",
          "", *table(rows), END]
    replace_block(Path(args.results_md), "\n".join(md) + "\n", BEGIN, END)
    readme = [BEGIN, f"Measured {result['date']} by `{result['command']}` (all variants: "
              "[benchmarks/RESULTS.md](benchmarks/RESULTS.md)); the same artifacts and people as the table above.", "",
              *table([r for r in rows if r["variant"] in README_VARIANTS]), END]
    replace_block(Path(args.readme), "\n".join(readme) + "\n", BEGIN, END)
    print("\n".join(md))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--resamples", type=int, default=1000)
    parser.add_argument("--accuracy-json", default=str(ROOT / "benchmarks" / "results" / "accuracy.json"))
    parser.add_argument("--json", default=str(ROOT / "benchmarks" / "results" / "decoder.json"))
    parser.add_argument("--results-md", default=str(ROOT / "benchmarks" / "RESULTS.md"))
    parser.add_argument("--readme", default=str(ROOT / "README.md"), help="README whose decoder block is replaced")
    parser.add_argument("--render", action="store_true", help="re-render --json without measuring")
    args = parser.parse_args(argv)
    if args.render:
        render(json.loads(Path(args.json).read_text()), args)
        return 0
    if not DATA.is_dir() or not Path(args.accuracy_json).is_file():
        print(f"needs {DATA} and {args.accuracy_json} (run benchmarks/bench_accuracy.py first)", file=sys.stderr)
        return 2
    from hrdeploy.io import write_json

    recorded = [r for r in json.loads(Path(args.accuracy_json).read_text())["rows"]
                if "bundle" in r and "ModelOpt" not in r["variant"]]
    sizes = sorted({r["size"] for r in recorded}, key=lambda s: s != "128x96")
    rows = [row for s in sizes for row in measure_size(s, [r for r in recorded if r["size"] == s], args.threads,
                                                        args.resamples)]
    result = {"date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
              "command": shlex.join(["python", "benchmarks/bench_decoder.py", *(argv or sys.argv[1:])]),
              "rows": rows}
    write_json(args.json, result)
    render(result, args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
