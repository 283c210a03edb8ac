"""Where onnxruntime's NCHWc layout reorders come from in a Lite-HRNet graph, and what exact edits change.

onnxruntime (graph level `all`, its default) rewrites every Conv it can into the blocked NCHWc layout
(16 channels a block with AVX-512, 8 with AVX2) and inserts ReorderInput / ReorderOutput wherever an NCHWc
value meets an op without an NCHWc kernel. This script
1. opens the bundle's ONNX with onnxruntime's optimiser, saves the optimised graph and counts the reorders
   by the op on their other side;
2. applies candidate exact edits to the graph, each written here as a small function (experiments, not
   product passes), checks each edited graph against the unedited one (max rel), counts its reorders and
   times all graphs in one process in alternation (batch 1, one thread, onnxruntime's default options),
   next to the upstream-form static export.

Writes benchmarks/layout_measured.md and puts it into benchmarks/RESULTS.md between the
`<!-- bench_layout -->` markers.

    python benchmarks/bench_layout.py                       # lite_hrnet_18, ~3 min
    python benchmarks/bench_layout.py --model lite_hrnet_30 --rounds 20 --no-write
"""

from __future__ import annotations

import argparse
import collections
import copy
import datetime
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from results_md import publish  # noqa: E402 - benchmarks/, on sys.path when run as a script

from hrdeploy.bench.harness import library_versions, machine_info  # noqa: E402
from hrdeploy.optimize.graph import GraphIndex, add_initializer, attr, replace_nodes  # noqa: E402

NCHWC_DOMAIN = "com.microsoft.nchwc"


def _dims(index: GraphIndex, name: str) -> list[int | str] | None:
    vi = index.value_info.get(name)
    if vi is None or not vi.type.tensor_type.HasField("shape"):
        return None
    return [d.dim_value if d.HasField("dim_value") else d.dim_param for d in vi.type.tensor_type.shape.dim]


def _const(index: GraphIndex, name: str) -> np.ndarray | None:
    value = index.const(name)
    node = index.producer.get(name)
    if value is None and node is not None and node.op_type == "Constant":
        value = numpy_helper.to_array(node.attribute[0].t)
    return value


def avgpool_to_conv(model: onnx.ModelProto) -> int:
    """AveragePool (no padding) -> depthwise Conv with every weight 1/(kh*kw): the same sums."""
    g, done = model.graph, 0
    index = GraphIndex(g)
    for n in g.node:
        k = list(attr(n, "kernel_shape", []))
        if n.op_type != "AveragePool" or len(k) != 2 or any(attr(n, "pads", [0])) or attr(n, "ceil_mode", 0):
            continue
        dims = _dims(index, n.input[0])
        if not dims or not isinstance(dims[1], int):
            continue
        weight = add_initializer(g, f"{n.name}_mean", np.full((dims[1], 1, *k), 1.0 / (k[0] * k[1]), np.float32))
        strides = list(attr(n, "strides", [1, 1]))
        n.op_type = "Conv"
        del n.attribute[:]
        n.attribute.extend([helper.make_attribute("kernel_shape", k), helper.make_attribute("strides", strides),
                            helper.make_attribute("group", dims[1])])
        n.input.append(weight)
        done += 1
    return done


def reducemean_to_global_pool(model: onnx.ModelProto) -> int:
    """ReduceMean over (H, W) keeping dims -> GlobalAveragePool (which has an NCHWc kernel)."""
    index, done = GraphIndex(model.graph), 0
    for n in model.graph.node:
        if n.op_type != "ReduceMean" or attr(n, "keepdims", 1) != 1 or len(n.input) < 2:
            continue
        axes = _const(index, n.input[1])
        if axes is None or sorted(int(a) % 4 for a in np.atleast_1d(axes)) != [2, 3]:
            continue
        n.op_type = "GlobalAveragePool"
        del n.input[1:]
        del n.attribute[:]
        done += 1
    return done


def broadcast_mul_to_same_shape(model: onnx.ModelProto) -> int:
    """Mul(x[N,C,H,W], s[N,C,1,1]) -> Mul(x, nearest Resize of s to H x W): NCHWc has no broadcast Mul."""
    g, inserts, done = model.graph, {}, 0
    index = GraphIndex(g)
    for n in g.node:
        if n.op_type != "Mul":
            continue
        a, b = n.input
        da, db = _dims(index, a), _dims(index, b)
        if not da or not db or len(da) != 4 or len(db) != 4:
            continue
        if db[2:] == [1, 1] and da[2:] != [1, 1] and all(isinstance(v, int) for v in da[2:]):
            x, s, dx = a, b, da
        elif da[2:] == [1, 1] and db[2:] != [1, 1] and all(isinstance(v, int) for v in db[2:]):
            x, s, dx = b, a, db
        else:
            continue
        scales = add_initializer(g, f"{n.name}_scales", np.array([1, 1, dx[2], dx[3]], np.float32))
        expanded = f"{s}_to_{n.name}"
        inserts[id(n)] = [helper.make_node("Resize", [s, "", scales], [expanded], name=f"{n.name}_expand",
                                           mode="nearest", coordinate_transformation_mode="asymmetric",
                                           nearest_mode="floor")]
        n.input[0], n.input[1] = x, expanded
        done += 1
    replace_nodes(g, set(), inserts)
    return done


def resize_mul_to_broadcast(model: onnx.ModelProto) -> int:
    """x * NearestResize(a, integer scales) -> reshape x to (N, C, h, kh, w, kw), multiply by a as
    (N, C, h, 1, w, 1), reshape back: no upsampled copy of `a`."""
    g, inserts, remove, done = model.graph, {}, set(), 0
    index = GraphIndex(g)
    for r in g.node:
        if r.op_type != "Resize" or attr(r, "mode") != b"nearest" or len(r.input) < 3 or not r.input[2]:
            continue
        scales = _const(index, r.input[2])
        users = index.consumers.get(r.output[0], [])
        if scales is None or list(scales[:2]) != [1, 1] or len(users) != 1 or users[0].op_type != "Mul":
            continue
        mul = users[0]
        x = mul.input[0] if mul.input[1] == r.output[0] else mul.input[1]
        dx, da = _dims(index, x), _dims(index, r.input[0])
        if not dx or not da or not all(isinstance(v, int) for v in dx[1:] + da[1:]):
            continue
        (c, hh, ww), (_, h, w) = dx[1:], da[1:]
        kh, kw = int(scales[2]), int(scales[3])
        if h * kh != hh or w * kw != ww:
            continue
        shapes = [add_initializer(g, f"{mul.name}_{tag}", np.array(v, np.int64)) for tag, v in
                  (("x6", [0, c, h, kh, w, kw]), ("a6", [0, c, h, 1, w, 1]), ("y4", [0, c, hh, ww]))]
        out = mul.output[0]
        inserts[id(mul)] = [
            helper.make_node("Reshape", [x, shapes[0]], [f"{out}_x6"], name=f"{mul.name}_x6"),
            helper.make_node("Reshape", [r.input[0], shapes[1]], [f"{out}_a6"], name=f"{mul.name}_a6"),
            helper.make_node("Mul", [f"{out}_x6", f"{out}_a6"], [f"{out}_y6"], name=f"{mul.name}_bcast"),
            helper.make_node("Reshape", [f"{out}_y6", shapes[2]], [out], name=f"{mul.name}_y4"),
        ]
        remove |= {id(r), id(mul)}
        done += 1
    replace_nodes(g, remove, inserts)
    return done


def strip_value_info(model: onnx.ModelProto) -> int:
    """Drop the intermediate shape annotations (semantics unchanged; onnxruntime plans buffers differently)."""
    count = len(model.graph.value_info)
    del model.graph.value_info[:]
    return count


Edit = Callable[[onnx.ModelProto], int]
VARIANTS: list[tuple[str, list[Edit]]] = [
    ("AveragePool -> depthwise Conv", [avgpool_to_conv]),
    ("ReduceMean -> GlobalAveragePool", [reducemean_to_global_pool]),
    ("ReduceMean -> GlobalAveragePool, broadcast Mul -> same-shape Mul", [reducemean_to_global_pool,
                                                                         broadcast_mul_to_same_shape]),
    ("nearest Resize + Mul -> 6-D broadcast Mul", [resize_mul_to_broadcast]),
    ("intermediate value_info removed", [strip_value_info]),
]


def edited(model: onnx.ModelProto, edits: list[Edit]) -> tuple[onnx.ModelProto, list[int]]:
    out, sites = copy.deepcopy(model), []
    for edit in edits:
        out = onnx.shape_inference.infer_shapes(out)
        sites.append(edit(out))
        if edit is not strip_value_info:
            del out.graph.value_info[:]
            out = onnx.shape_inference.infer_shapes(out)
    onnx.checker.check_model(out)
    return out, sites


def session(path: Path, optimized: Path | None = None):  # -> onnxruntime.InferenceSession
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.log_severity_level = 3
    if optimized is not None:
        opts.optimized_model_filepath = str(optimized)
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def reorder_census(path: Path, work: Path) -> dict[str, Any]:
    """Kernels of onnxruntime's optimised graph: reorders by the op on their other side, NCHWc convs."""
    optimized = work / f"{path.stem}.ort.onnx"
    session(path, optimized)
    g = onnx.load(str(optimized)).graph
    producer = {o: n for n in g.node for o in n.output}
    consumers: dict[str, list[onnx.NodeProto]] = collections.defaultdict(list)
    for n in g.node:
        for i in n.input:
            consumers[i].append(n)
    into, out_of = collections.Counter(), collections.Counter()
    for n in g.node:
        if n.op_type == "ReorderInput":
            p = producer.get(n.input[0])
            into[p.op_type if p is not None else "graph input"] += 1
        elif n.op_type == "ReorderOutput":
            out_of.update(c.op_type for c in consumers[n.output[0]])
    convs = [n for n in g.node if n.op_type in ("Conv", "FusedConv")]
    return {"kernels": len(g.node), "reorder_input": sum(into.values()),
            "reorder_output": sum(n.op_type == "ReorderOutput" for n in g.node),
            "reorder_input_from": dict(into.most_common()), "reorder_output_to": dict(out_of.most_common()),
            "nchwc_convs": sum(n.domain == NCHWC_DOMAIN for n in convs), "convs": len(convs)}


def alternate(paths: list[Path], x: np.ndarray, rounds: int) -> tuple[list[float], list[np.ndarray]]:
    """Median ms per graph, all called in turn `rounds` times after 2 warm-up rounds; and their outputs."""
    sessions = [session(p) for p in paths]
    feeds = [{s.get_inputs()[0].name: x} for s in sessions]
    outputs = [s.run(None, f)[0] for s, f in zip(sessions, feeds, strict=True)]
    times: list[list[float]] = [[] for _ in sessions]
    for r in range(rounds + 2):
        for i, (s, f) in enumerate(zip(sessions, feeds, strict=True)):
            t = time.perf_counter()
            s.run(None, f)
            if r >= 2:
                times[i].append((time.perf_counter() - t) * 1e3)
    return [statistics.median(t) for t in times], outputs


def export(model: str, out: Path, *flags: str) -> Path:
    if not (out / "model.onnx").is_file():
        cli = Path(sys.executable).with_name("hrdeploy")
        subprocess.run([str(cli), "export", model, "-o", str(out), "--force", *flags], check=True,
                       stdout=subprocess.DEVNULL)
    return out / "model.onnx"


def measure(model_name: str, work: Path, rounds: int) -> dict[str, Any]:
    ours = export(model_name, work / model_name / "hrdeploy", "--dynamic-batch")
    upstream = export(model_name, work / model_name / "upstream", "--no-rewrite", "--batch", "1")
    base = onnx.load(str(ours))
    graphs = [("hrdeploy bundle as exported", ours, [])]
    tmp = work / model_name / "variants"
    tmp.mkdir(parents=True, exist_ok=True)
    for k, (label, edits) in enumerate(VARIANTS):
        model, sites = edited(base, edits)
        path = tmp / f"variant{k}.onnx"
        onnx.save(model, str(path))
        graphs.append((label, path, sites))
    graphs.append(("upstream form, static batch 1", upstream, []))
    h, w = (int(d.dim_value) for d in base.graph.input[0].type.tensor_type.shape.dim[2:])
    x = np.random.default_rng(0).standard_normal((1, 3, h, w), dtype=np.float32)
    p50, outputs = alternate([p for _, p, _ in graphs], x, rounds)
    ref = outputs[0]
    rows = []
    for (label, path, sites), ms, y in zip(graphs, p50, outputs, strict=True):
        rows.append({"graph": label, "sites": sites, "p50_ms": ms, "ratio": ms / p50[0],
                     "max_rel": float(np.abs(y - ref).max() / np.abs(ref).max()), **reorder_census(path, tmp)})
    return {"model": model_name, "size": [h, w], "rounds": rounds, "rows": rows, "load": os.getloadavg(),
            "measured": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")}


def _top(counter: dict[str, int], n: int = 5) -> str:
    return ", ".join(f"{op} {c}" for op, c in list(counter.items())[:n])


def render(result: dict[str, Any], command: str) -> str:
    m, v = machine_info(), library_versions()
    rows = result["rows"]
    base, up = rows[0], rows[-1]
    lines = [
        f"## Layout reorders in {result['model']} and exact edits that move them (bench_layout.py)", "",
        f"Generated by `{command}` ({result['measured']}, load average "
        f"{'/'.join(f'{x:.1f}' for x in result['load'])}). {m['cpu']}, onnxruntime {v.get('onnxruntime')} CPU, "
        f"1 thread, default session options, batch 1 at {result['size'][0]}x{result['size'][1]}, seeded "
        f"weights; {result['rounds']} rounds of alternating calls, medians. `kernels`, reorders and NCHWc convs "
        "are counted in the graph onnxruntime's optimiser produces from each ONNX. `max rel` is against the "
        "unedited bundle.", "",
        "| graph | sites | b1 p50 ms | vs bundle | max rel | kernels | ReorderInput | ReorderOutput "
        "| NCHWc convs |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        sites = "+".join(map(str, r["sites"])) or "-"
        lines.append(f"| {r['graph']} | {sites} | {r['p50_ms']:.1f} | {r['ratio']:.3f} | {r['max_rel']:.1e} "
                     f"| {r['kernels']} | {r['reorder_input']} | {r['reorder_output']} "
                     f"| {r['nchwc_convs']}/{r['convs']} |")
    lines += [
        "",
        f"In the bundle as exported, {base['nchwc_convs']} of {base['convs']} convolutions run in NCHWc and "
        f"onnxruntime adds {base['reorder_input']} ReorderInput (fed by {_top(base['reorder_input_from'])}) and "
        f"{base['reorder_output']} ReorderOutput (read by {_top(base['reorder_output_to'])}); the upstream "
        f"export gets {up['reorder_input']} and {up['reorder_output']}.",
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="lite_hrnet_18")
    ap.add_argument("--rounds", type=int, default=40)
    ap.add_argument("--work", type=Path, default=Path("out/bench_layout"))
    ap.add_argument("--no-write", action="store_true", help="print the section, leave RESULTS.md alone")
    args = ap.parse_args(argv)
    args.work.mkdir(parents=True, exist_ok=True)
    result = measure(args.model, args.work, args.rounds)
    command = "python benchmarks/bench_layout.py " + " ".join(argv if argv is not None else sys.argv[1:])
    section = render(result, command.strip())
    print(section)
    if not args.no_write:
        publish(section, HERE / "layout_measured.md", HERE / "RESULTS.md", "bench_layout")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
