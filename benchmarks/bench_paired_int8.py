"""Paired coco-val AP differences between INT8 builds of the trained network: how much of a difference between two
INT8 variants the 149 coco-val people can resolve.

`bench_accuracy.py` judges each variant against eager fp32. Two INT8 variants are compared here on the same people
directly: the reference variant's keypoints play eager's part (hrdeploy.parity.pose.Reference) and the candidate
is scored against them with the paired bootstrap of `eval` (1000 resamples of the people, seed 0). It reads the
bundles recorded in benchmarks/results/accuracy.json (run bench_accuracy.py first) and writes
benchmarks/results/paired_int8.json and the section between the `bench_paired_int8` markers of RESULTS.md.

    python benchmarks/bench_paired_int8.py [--threads 2]
"""

from __future__ import annotations

import argparse
import datetime
import json
import shlex
import sys
from pathlib import Path

from results_md import replace_block  # noqa: E402 - benchmarks/ is on sys.path when run as a script

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT.parent / "shared" / "data" / "coco-val"
BEGIN, END = "<!-- bench_paired_int8:begin -->", "<!-- bench_paired_int8:end -->"
# (candidate, reference): each default search against the same search without dense-conv input equalization,
# the default search against the same search held to signed activations, and depthwise equalization on top of
# the default
PAIRS = [("int8 search", "int8 search, dense unequalized"),
         ("int8 search", "int8 search, signed activations"),
         ("int8 search, photos only", "int8 search, photos only, dense unequalized"),
         ("int8 search, equalized", "int8 search")]


def paired(candidate: Path, reference: Path, threads: int, resamples: int) -> dict:
    """The candidate's INT8 AP minus the reference's on coco-val's annotated people, with its paired interval."""
    from hrdeploy.bundle import Bundle
    from hrdeploy.parity.coco import CocoKeypoints, CropSet
    from hrdeploy.parity.pose import Reference, check_pose
    from hrdeploy.parity.tolerances import TOLERANCES
    from hrdeploy.runtime.onnxruntime import OrtRunner

    coco = CocoKeypoints(DATA / "person_keypoints.json", DATA)
    ref_bundle = Bundle.open(reference)
    crops = CropSet.build(coco.gt_boxes(), ref_bundle.input.size, ref_bundle.input.mean, ref_bundle.input.std)
    name = ref_bundle.output_names[0]
    with OrtRunner(reference / "model.int8.onnx", threads=threads) as ref_run, \
            OrtRunner(candidate / "model.int8.onnx", threads=threads) as cand_run:
        ref = Reference.compute(lambda x: ref_run.run(x)[name], crops, coco)
        res = check_pose(ref, lambda x: cand_run.run(x)[name], TOLERANCES["int8"], bootstrap=resamples)
    ci = res["interval"]
    return {"reference_AP": ref.stats["AP"], "candidate_AP": res["stats"]["AP"], "dAP": ci["dap"],
            "ci": [ci["low"], ci["high"]], "people": ci["units"], "resamples": ci["resamples"]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--resamples", type=int, default=1000)
    parser.add_argument("--accuracy-json", default=str(ROOT / "benchmarks" / "results" / "accuracy.json"))
    parser.add_argument("--json", default=str(ROOT / "benchmarks" / "results" / "paired_int8.json"))
    parser.add_argument("--results-md", default=str(ROOT / "benchmarks" / "RESULTS.md"))
    args = parser.parse_args(argv)
    if not DATA.is_dir() or not Path(args.accuracy_json).is_file():
        print(f"needs {DATA} and {args.accuracy_json} (run benchmarks/bench_accuracy.py first)", file=sys.stderr)
        return 2
    from hrdeploy.io import write_json

    bundles = {(r["size"], r["variant"]): Path(r["bundle"]) for r in json.loads(Path(args.accuracy_json).read_text())
               ["rows"] if "bundle" in r}
    rows = []
    for size in sorted({s for s, _ in bundles}, key=lambda s: s != "128x96"):
        for cand, ref in PAIRS:
            if (size, cand) in bundles and (size, ref) in bundles:
                row = {"size": size, "candidate": cand, "reference": ref,
                       **paired(bundles[size, cand], bundles[size, ref], args.threads, args.resamples)}
                print(row, flush=True)
                rows.append(row)
    result = {"date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
              "command": shlex.join(["python", "benchmarks/bench_paired_int8.py", *(argv or sys.argv[1:])]),
              "rows": rows}
    write_json(args.json, result)
    md = [BEGIN, f"## INT8 against INT8, paired on coco-val ({result['date']})", "",
          f"Measured by `{result['command']}`: the candidate's COCO keypoint AP minus the reference's on the same "
          "149 coco-val people (both onnxruntime CPU, GT boxes), with the paired bootstrap 95 % interval of `eval` "
          "(resamples of the people). An interval that contains 0 means these people cannot tell the two apart.", "",
          "| input | candidate | reference | AP candidate | AP reference | dAP | 95 % CI |",
          "|---|---|---|---|---|---|---|"]
    md += [f"| {r['size']} | {r['candidate']} | {r['reference']} | {r['candidate_AP']:.4f} | {r['reference_AP']:.4f} "
           f"| {r['dAP']:+.2f} | [{r['ci'][0]:+.2f}, {r['ci'][1]:+.2f}] |" for r in rows]
    md.append(END)
    replace_block(Path(args.results_md), "\n".join(md) + "\n", BEGIN, END)
    print("\n".join(md))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
