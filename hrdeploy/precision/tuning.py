"""Calibration and tuning people for INT8, and the accuracy search run on them.

The calibration photos' people (the boxes of `--calib-ann`, or the person crops the fp32 model finds) are
split by photo, seeded: calibration people set the activation ranges, tuning people judge the candidates
of hrdeploy.precision.search. Splitting by photo keeps two crops of one photo on the same side.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from hrdeploy.errors import UserError
from hrdeploy.parity.coco import CocoKeypoints, CropSet, PersonBox
from hrdeploy.precision import graph as G
from hrdeploy.precision.search import (
    SearchResult,
    Target,
    TuningSet,
    conv_macs,
    latency_ratios,
    search_mixed_precision,
    with_float_convs,
)
from hrdeploy.precision.shift import shift_activations
from hrdeploy.precision.targets import MIN_TUNING_PEOPLE


def split_by_photo(boxes: Sequence[PersonBox], share: float, seed: int) -> tuple[list[PersonBox], list[PersonBox]]:
    """(calibration, tuning) people: a seeded `share` of the photos (rounded, at least one) goes to tuning."""
    files = sorted({b.file for b in boxes})
    order = np.random.default_rng(seed).permutation(len(files))
    n_tune = min(len(files), max(1, round(share * len(files))))
    tune_files = {files[i] for i in order[:n_tune]}
    return [b for b in boxes if b.file not in tune_files], [b for b in boxes if b.file in tune_files]


def check_tuning_size(tuning: Sequence[PersonBox], total: int, share: float) -> None:
    if len(tuning) < MIN_TUNING_PEOPLE:
        raise UserError(
            f"the tuning set has {len(tuning)} people ({share:.0%} of the photos of {total} people); the INT8 "
            f"search needs at least {MIN_TUNING_PEOPLE}: give more calibration photos of people, a larger "
            "--tune-share, or --no-search"
        )


def tuning_annotations(calib_ann: str | os.PathLike | None, calib_dir: str | os.PathLike,
                       tuning: Sequence[PersonBox]) -> CocoKeypoints | None:
    """The COCO keypoint annotations of the tuning photos, when --calib-ann is a COCO keypoint json."""
    if calib_ann is None or any(p.ann_id is None for p in tuning):
        return None  # MPII boxes or found crops: keypoint agreement with fp32 drives the search
    return CocoKeypoints(calib_ann, calib_dir).subset({p.image_id for p in tuning})


@dataclass
class SearchOutcome:
    model: onnx.ModelProto
    record: dict[str, Any]


def search_int8(
    qdq_path: str | os.PathLike, float_ref_path: str | os.PathLike, scopes: dict[str, str], tuning_crops: CropSet,
    coco: CocoKeypoints | None, *, max_ap_drop: float, min_oks: float, batch: int | None, threads: int | None,
    log: Callable[[str], None], choose_shift: bool = False,
) -> SearchOutcome:
    """Run the search on the tuning people; the chosen graph and the manifest's record of the path.

    choose_shift: search the graph as it is (signed activations) and shifted (hrdeploy.precision.shift, the same
    calibration), and keep the chosen point that meets the target with the higher tuning OKS (neither meets it:
    the higher OKS). The encoding is a property of the trained weights like the float layers, so the tuning
    people decide it too.
    """
    from hrdeploy.runtime.onnxruntime import ort_session

    qdq, float_ref = onnx.load(os.fspath(qdq_path)), onnx.load(os.fspath(float_ref_path))
    graphs = {"shifted" if _is_shifted(qdq) else "signed": qdq}
    if choose_shift:
        graphs["shifted"] = shift_activations(qdq, tuning_crops.input_hw)[0]

    def runner(model: onnx.ModelProto) -> Callable[[np.ndarray], np.ndarray]:
        sess = ort_session(model, threads)
        name = sess.get_inputs()[0].name
        return lambda x: sess.run(None, {name: x})[0]

    tuning = TuningSet(tuning_crops, coco, runner, float_ref, batch or 8, batch is not None)
    target = Target(min_oks, max_ap_drop if coco is not None else None)
    weights = G.conv_float_weights(float_ref)
    macs = conv_macs(float_ref, tuning_crops.input_hw)
    results = {}
    for encoding, graph in graphs.items():
        if len(graphs) > 1:
            log(f"int8 search: {encoding} activations")
        results[encoding] = search_mixed_precision(graph, weights, scopes, macs, tuning, target, log=log)
    encoding = max(results, key=lambda k: encoding_merit(results[k]))
    result, qdq = results[encoding], graphs[encoding]
    if len(graphs) > 1:
        log(f"int8 search: keeping the {encoding} activations (" + ", ".join(
            f"{k}: OKS {r.points[r.chosen].oks:.4f}{'' if r.points[r.chosen].within else ', target not met'}"
            for k, r in results.items()) + ")")
    path = result.points
    probe = np.ascontiguousarray(tuning_crops.x[: batch or 1])
    log(f"int8 search: timing {len(path)} points against fp32 on onnxruntime")
    ratios = latency_ratios([with_float_convs(qdq, p.float_convs, weights) for p in path], float_ref, probe, threads)
    for p, r in zip(path, ratios, strict=True):
        p.latency_ratio = round(r, 3)
    record = result.as_dict()
    encodings = {k: {key: getattr(r.points[r.chosen], key) for key in _SUMMARY} for k, r in results.items()}
    record.update(tuning_people=len(tuning_crops), tuning_fp32_ap=tuning.fp32_ap, annotated=coco is not None,
                  activations=encoding, encodings=encodings)
    chosen = with_float_convs(qdq, result.float_convs, weights)
    return SearchOutcome(G.prune_dead_nodes(chosen), record)


_SUMMARY = ("convs_int8", "mac_share_int8", "oks", "ap_drop", "within")


def encoding_merit(result: SearchResult) -> tuple[bool, float]:
    """How a search's chosen point ranks against another encoding's: meeting the target first, then OKS."""
    point = result.points[result.chosen]
    return point.within, point.oks


def _is_shifted(model: onnx.ModelProto) -> bool:
    return any(n.name.endswith(G.SHIFT_BACK_SUFFIX) for n in model.graph.node)


def describe_split(calib: Sequence[PersonBox], tuning: Sequence[PersonBox], source: str | Path) -> str:
    def photos(people: Sequence[PersonBox]) -> int:
        return len({p.file for p in people})

    return (f"{len(calib)} calibration people ({photos(calib)} photos) and {len(tuning)} tuning people "
            f"({photos(tuning)} photos) from {source}")
