"""Accuracy-driven mixed precision for a Q/DQ graph: which conv blocks stay in higher precision.

Post-training INT8 of a depthwise pose backbone loses most of its accuracy in a few places (the head's
depthwise projections, the stem, some fuse layers); which ones is a property of the trained weights, so it is
measured, not guessed. With one calibrated Q/DQ graph (every conv quantized), a candidate is the same graph with
the Q/DQ of some convs bypassed (`graph.bypass_qdq`: float activation and weight, so TensorRT runs them in its
higher precision), judged on held-out tuning people:

1. sensitivity: each unit (a module block's depthwise convs, or its other convs) quantized alone (the rest
   float), scored by keypoint agreement (mean OKS with the fp32 model's keypoints) on the first tuning people:
   the cost of that unit's quantization;
2. walk: units leave INT8 in order of cost per share of the conv MACs, one at a time, until the tuning people
   meet the target
   (`Target`: keypoint agreement with fp32, and with annotations the COCO AP drop against fp32 too);
3. refine: the float units heavy in MACs are split into their sub-blocks, which go back to INT8 (largest
   MAC share first, a bounded number of trials) whenever the target still holds.

Every candidate scored is a point of the path (convs and share of conv MACs in INT8, tuning loss); the chosen
point is the last that meets the target, or the one closest to fp32 when none does. Everything is
deterministic for a given calibration and tuning set. This is in the spirit of ModelOpt's AutoQuantize and
Polygraphy's layer-wise debugging, driven by the task metric instead of a tensor error.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import onnx

from hrdeploy.parity.coco import CocoKeypoints, CropSet, RunFn, results_from_keypoints
from hrdeploy.parity.compare import keypoint_agreement
from hrdeploy.precision import graph as G

# Coarse blocks for the sensitivity pass: module-path groups (graph.group_blocks), about one per stage module.
MAX_BLOCKS = 32
# Refining: float units with at least this share of the conv MACs are split into at most REFINE_PARTS parts,
# and at most REFINE_TRIALS parts (the heaviest) are tried back in INT8.
REFINE_MIN_MACS = 0.01
REFINE_PARTS = 4
REFINE_TRIALS = 8
# The sensitivity pass ranks units by keypoint agreement (a smooth measure) on this many tuning people, per
# share of the conv MACs they hold (plus MAC_FLOOR, so that a tiny unit needs a real cost to go first): the walk
# then keeps the most INT8 MACs for the accuracy it buys back.
SENSITIVITY_PEOPLE = 48
MAC_FLOOR = 0.005


def conv_macs(model: onnx.ModelProto, input_hw: tuple[int, int]) -> dict[str, int]:
    """Multiply-accumulates of every Conv node at batch 1 and `input_hw` (shape inference on a static copy)."""
    shapes = G.static_shapes(model, input_hw)
    inits = {i.name: i for i in model.graph.initializer}
    prod = G.producers(model)
    macs = {}
    for node in model.graph.node:
        if node.op_type != "Conv":
            continue
        weight = node.input[1]
        while weight not in inits and weight in prod:  # through DequantizeLinear (and Identity)
            weight = prod[weight].input[0]
        if weight not in inits or node.output[0] not in shapes:
            continue
        out_hw = shapes[node.output[0]][2:]
        macs[node.name] = int(np.prod(out_hw) * np.prod(inits[weight].dims))
    return macs


@dataclass(frozen=True)
class Score:
    """A candidate on the tuning people: mean OKS with fp32's keypoints, and the AP drop in points (annotated)."""

    oks: float
    ap_drop: float | None = None


@dataclass(frozen=True)
class Target:
    """What a point must keep on the tuning people: keypoint agreement with fp32 always (it moves smoothly with
    the precision of each layer), and the AP drop when the people are annotated (the task metric itself, but
    noisy on a hundred people: ~1 AP point of paired standard error, so it cannot stand alone)."""

    min_oks: float
    max_ap_drop: float | None = None

    def met(self, score: Score) -> bool:
        ap_ok = self.max_ap_drop is None or score.ap_drop is None or score.ap_drop <= self.max_ap_drop
        return score.oks >= self.min_oks and ap_ok

    def describe(self) -> str:
        ap = f"AP drop <= {self.max_ap_drop:g} and " if self.max_ap_drop is not None else ""
        return f"{ap}OKS vs fp32 >= {self.min_oks:g}"


class TuningSet:
    """Held-out people to score candidates on, against the fp32 graph's own predictions (and GT if annotated)."""

    def __init__(self, crops: CropSet, coco: CocoKeypoints | None, runner: Callable[[onnx.ModelProto], RunFn],
                 fp32: onnx.ModelProto, batch: int, fixed_batch: bool) -> None:
        """runner(model) -> a function NCHW -> heatmaps on that model (one session per candidate)."""
        self.crops, self.coco, self._runner = crops, coco, runner
        self.batch, self.fixed_batch = batch, fixed_batch
        self.fp32_keypoints = self.keypoints(fp32)
        self.fp32_ap = self._ap(self.fp32_keypoints) if coco is not None else None

    def head(self, people: int) -> TuningSet:
        """The first `people` of this set, scored by keypoint agreement only (for the sensitivity pass)."""
        out = copy.copy(self)
        out.crops = CropSet(self.crops.boxes[:people], self.crops.x[:people], self.crops.matrices[:people],
                            self.crops.input_hw)
        out.coco, out.fp32_ap, out.fp32_keypoints = None, None, self.fp32_keypoints[:people]
        return out

    def keypoints(self, model: onnx.ModelProto) -> np.ndarray:
        return self.crops.keypoints(self._runner(model), self.batch, fixed_batch=self.fixed_batch)[0]

    def _ap(self, keypoints: np.ndarray) -> float:
        assert self.coco is not None
        return 100.0 * self.coco.score(results_from_keypoints(self.crops.boxes, keypoints, self.coco.category_id))["AP"]

    def score(self, model: onnx.ModelProto) -> Score:
        kp = self.keypoints(model)
        oks = keypoint_agreement(self.fp32_keypoints, kp, self.crops.boxes_wh)["oks"]
        drop = None if self.fp32_ap is None else self.fp32_ap - self._ap(kp)
        return Score(float(oks), drop)


@dataclass
class Point:
    """One candidate of the path."""

    step: str  # "int8" (every conv), "walk", "refine"
    change: str  # the block moved (to float on the walk, back to INT8 when refining)
    float_convs: list[str]
    convs_int8: int
    mac_share_int8: float
    oks: float
    ap_drop: float | None
    within: bool
    latency_ratio: float | None = None  # onnxruntime time / fp32 time, measured alternating


@dataclass
class SearchResult:
    target: str
    blocks: list[dict[str, Any]]  # sensitivity rows, most costly first
    points: list[Point] = field(default_factory=list)
    chosen: int = 0

    @property
    def float_convs(self) -> list[str]:
        return self.points[self.chosen].float_convs

    def as_dict(self) -> dict[str, Any]:
        points = [{k: v for k, v in asdict(p).items() if k != "float_convs"} for p in self.points]
        return {"target": self.target, "blocks": self.blocks, "chosen": self.chosen,
                "float_convs": self.float_convs, "points": points}


def search_mixed_precision(
    qdq: onnx.ModelProto,
    float_weights: dict[str, onnx.TensorProto],
    scopes: dict[str, str],
    macs: dict[str, int],
    tuning: TuningSet,
    target: Target,
    *,
    max_blocks: int = MAX_BLOCKS,
    log: Callable[[str], None] = lambda s: None,
) -> SearchResult:
    """The fewest conv units in float for which the tuning people meet `target` (see the module doc)."""
    search = _Search(qdq, float_weights, scopes, macs, tuning, target, log)
    rows = search.rank(max_blocks)
    result = SearchResult(target.describe(), [{k: v for k, v in r.items() if k != "members"} for r in rows])
    float_set: set[str] = set()
    result.points.append(search.evaluate("int8", "", float_set))
    float_set = search.walk(rows, float_set, result.points)
    if result.points[-1].within:
        search.refine(rows, float_set, result.points)
    within = [i for i, p in enumerate(result.points) if p.within]
    result.chosen = within[-1] if within else max(range(len(result.points)), key=lambda i: result.points[i].oks)
    return result


@dataclass
class _Search:
    """The steps of one search over a Q/DQ graph: rank the units, walk them out of INT8, refine."""

    qdq: onnx.ModelProto
    float_weights: dict[str, onnx.TensorProto]
    scopes: dict[str, str]
    macs: dict[str, int]
    tuning: TuningSet
    target: Target
    log: Callable[[str], None]

    def __post_init__(self) -> None:
        self.quantized, _ = G.conv_quant_status(self.qdq)
        self.total = sum(self.macs.get(n, 0) for n in self.quantized) or 1

    def share(self, names: Sequence[str]) -> float:
        """The share of the quantized convs' MACs in `names`."""
        return sum(self.macs.get(n, 0) for n in names) / self.total

    def evaluate(self, step: str, change: str, float_set: set[str]) -> Point:
        """The point with `float_set` in float, scored on the tuning people."""
        score = self.tuning.score(with_float_convs(self.qdq, float_set, self.float_weights))
        int8 = [n for n in self.quantized if n not in float_set]
        p = Point(step, change, sorted(float_set), len(int8), round(self.share(int8), 5), round(score.oks, 5),
                  None if score.ap_drop is None else round(score.ap_drop, 3), self.target.met(score))
        if step != "int8":
            self.log(_describe(p))
        return p

    def rank(self, max_blocks: int) -> list[dict[str, Any]]:
        """Units by the OKS they cost alone (on the first tuning people) per share of MACs, costliest first."""
        rows = []
        ranking = self.tuning.head(SENSITIVITY_PEOPLE)
        for name, members in candidate_units(self.qdq, self.quantized, self.scopes, max_blocks).items():
            alone = ranking.score(G.bypass_qdq(self.qdq, set(members), self.float_weights))
            rows.append({"block": name, "convs": len(members), "members": members,
                         "mac_share": round(self.share(members), 5), "oks": round(alone.oks, 5)})
        rows.sort(key=lambda r: -(1.0 - r["oks"]) / (r["mac_share"] + MAC_FLOOR))
        self.log(f"int8 search: {len(rows)} units ranked on {len(ranking.crops)} tuning people; first to leave "
                 "INT8: " + ", ".join(f"{r['block']} (OKS {r['oks']:.3f})" for r in rows[:3]))
        return rows

    def walk(self, rows: list[dict[str, Any]], float_set: set[str], points: list[Point]) -> set[str]:
        """The costliest units leave INT8, one after another, until the target is met."""
        for row in rows:
            if points[-1].within:
                break
            float_set = float_set | set(row["members"])
            points.append(self.evaluate("walk", row["block"], float_set))
        return float_set

    def refine(self, rows: list[dict[str, Any]], float_set: set[str], points: list[Point]) -> None:
        """Parts of the MAC-heavy float units go back to INT8 while the target holds."""
        heavy = sorted((r for r in rows if set(r["members"]) <= float_set and r["mac_share"] >= REFINE_MIN_MACS),
                       key=lambda r: -r["mac_share"])
        parts = [members for r in heavy
                 for members in G.group_blocks(r["members"], self.scopes, max_blocks=REFINE_PARTS).values()]
        for members in sorted(parts, key=lambda m: -self.share(m))[:REFINE_TRIALS]:
            trial = float_set - set(members)
            p = self.evaluate("refine", _common_scope(members, self.scopes), trial)
            points.append(p)
            if p.within:
                float_set = trial


def _common_scope(names: Sequence[str], scopes: dict[str, str]) -> str:
    paths = [scopes.get(n, "").split(".") for n in names]
    common = []
    for parts in zip(*paths, strict=False):
        if len(set(parts)) > 1:
            break
        common.append(parts[0])
    return ".".join(common) or names[0]


def with_float_convs(qdq: onnx.ModelProto, float_convs: set[str] | Sequence[str],
                     float_weights: dict[str, onnx.TensorProto]) -> onnx.ModelProto:
    """`qdq` with the Q/DQ of `float_convs` bypassed (fp32 weights restored); every other node that reads
    through Q/DQ (convs, and e.g. the residual adds ModelOpt quantizes) keeps it."""
    return G.bypass_qdq(qdq, set(G.qdq_consumers(qdq)) - set(float_convs), float_weights)


def depthwise_convs(model: onnx.ModelProto) -> set[str]:
    """Conv nodes with one input channel per group and more than one group (weights read through Q/DQ)."""
    inits = {i.name: i for i in model.graph.initializer}
    prod = G.producers(model)
    out = set()
    for node in model.graph.node:
        if node.op_type != "Conv" or next((a.i for a in node.attribute if a.name == "group"), 1) <= 1:
            continue
        weight = node.input[1]
        while weight not in inits and weight in prod:
            weight = prod[weight].input[0]
        if weight in inits and inits[weight].dims[1] == 1:
            out.add(node.name)
    return out


def candidate_units(qdq: onnx.ModelProto, quantized: Sequence[str], scopes: dict[str, str],
                    max_blocks: int) -> dict[str, list[str]]:
    """The units that move between INT8 and float: module blocks, each split into its depthwise convs
    ("<block> (dw)": one activation scale per tensor rounds away a depthwise conv's quiet channels, so these
    carry most of the loss at a small share of the MACs) and the rest."""
    dw = depthwise_convs(qdq)
    units: dict[str, list[str]] = {}
    for name, members in G.group_blocks(quantized, scopes, max_blocks=max_blocks).items():
        parts = ((f"{name} (dw)", [m for m in members if m in dw]), (name, [m for m in members if m not in dw]))
        for key, part in parts:
            if part:
                units[key] = part
    return units


def _describe(p: Point) -> str:
    ap = f"dAP {-p.ap_drop:+.2f}, " if p.ap_drop is not None else ""
    verb = "float" if p.step == "walk" else "back to int8"
    return (f"int8 search: {p.change} {verb}: {p.convs_int8} convs int8 ({100 * p.mac_share_int8:.1f} % of MACs), "
            f"{ap}OKS {p.oks:.4f}{'' if p.within else ' (target not met)'}")


def latency_ratios(models: Sequence[onnx.ModelProto], fp32: onnx.ModelProto, x: np.ndarray, threads: int | None,
                   rounds: int = 5) -> list[float]:
    """Each model's median onnxruntime time over the fp32 graph's, runs alternating model/fp32 on `x`."""
    import time

    from hrdeploy.runtime.onnxruntime import ort_session

    ref = ort_session(fp32, threads)
    name = ref.get_inputs()[0].name
    out = []
    for model in models:
        sess = ort_session(model, threads)
        sess.run(None, {name: x})  # warm-up
        ref.run(None, {name: x})
        ratios = []
        for _ in range(rounds):
            t0 = time.perf_counter()
            sess.run(None, {name: x})
            t1 = time.perf_counter()
            ref.run(None, {name: x})
            ratios.append((t1 - t0) / max(time.perf_counter() - t1, 1e-9))
        out.append(float(np.median(ratios)))
    return out
