"""Image -> people: pre-processing, one runner call (two with the flip test), decoding, back to image pixels.

Top-down follows mmpose 0.x's TopDown.forward_test + TopDownHeatmapSimpleHead.decode (affine crop with
1.25 padding, flip test with `flip_back` and `shift_heatmap`, `keypoints_from_heatmaps`); bottom-up follows
HigherHRNet's test path (hrdeploy.pose.bottomup). Works with any hrdeploy Runner (eager, ONNX Runtime,
TensorRT): a runner takes a float32 NCHW batch and returns outputs by name.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from hrdeploy.datasets import KEYPOINT_SETS, flip_index
from hrdeploy.errors import UserError
from hrdeploy.pose.bottomup import GroupParams, aggregate_outputs, group_people
from hrdeploy.pose.decode import flip_test_average, keypoints_in_image
from hrdeploy.pose.preprocess import apply_transform, invert_transform, preprocess
from hrdeploy.runtime.base import Runner

if TYPE_CHECKING:
    from hrdeploy.bundle import Bundle


@dataclass(frozen=True)
class PoseConfig:
    """What inference needs to know about a pose model (from a manifest, ONNX metadata or a ModelSpec)."""

    model: str
    task: str  # "pose_topdown" | "pose_bottomup"
    dataset: str
    input_hw: tuple[int, int]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    keypoint_names: tuple[str, ...]
    flip_pairs: tuple[tuple[int, int], ...]
    skeleton: tuple[tuple[int, int], ...]
    output_names: tuple[str, ...] = ("heatmaps",)

    @property
    def num_keypoints(self) -> int:
        return len(self.keypoint_names)

    @property
    def flip_index(self) -> list[int]:
        return flip_index(self.num_keypoints, self.flip_pairs)


def _check_pose_task(model: str, task: str) -> None:
    if not task.startswith("pose"):
        kind = {"segmentation": "a segmentation", "detection_neck": "a detection-neck"}.get(task, f"a {task}")
        raise UserError(
            f"{model} is {kind} model, not a pose model; `hrdeploy infer` draws keypoints, so use a pose model "
            "(see `hrdeploy list`)"
        )


def config_from_bundle(bundle: Bundle) -> PoseConfig:
    """PoseConfig of a bundle; a non-pose bundle is a UserError."""
    m, inp, kps = bundle.model, bundle.input, bundle.keypoints
    _check_pose_task(m.name, m.task)
    if kps is None or not kps.names:
        raise UserError(f"bundle of {m.name} has no keypoints in its manifest; re-export it with `hrdeploy export`")
    return PoseConfig(
        model=m.name, task=m.task, dataset=kps.dataset or m.dataset, input_hw=inp.size, mean=inp.mean,
        std=inp.std, keypoint_names=kps.names, flip_pairs=kps.flip_pairs, skeleton=kps.skeleton,
        output_names=bundle.output_names,
    )


def config_from_spec(name: str, dataset: str | None = None, input_size: tuple[int, int] | None = None) -> PoseConfig:
    """PoseConfig of a registered model (ModelSpec is the source of truth)."""
    from hrdeploy.registry import get_spec
    from hrdeploy.zoo import check_dataset, check_input_size

    spec = get_spec(name)
    _check_pose_task(name, spec.task)
    dataset = check_dataset(spec, dataset)
    size = check_input_size(spec, input_size or spec.input_size(dataset))
    kps = spec.keypoint_set(dataset)
    assert kps is not None
    return PoseConfig(
        model=name, task=spec.task, dataset=dataset, input_hw=size, mean=spec.mean, std=spec.std,
        keypoint_names=kps.keypoints, flip_pairs=kps.flip_pairs, skeleton=kps.skeleton,
        output_names=spec.output_names,
    )


def config_from_onnx_metadata(meta: dict[str, Any], input_size: tuple[int, int] | None = None) -> PoseConfig:
    """PoseConfig from an exported ONNX's hrdeploy.* metadata_props (hrdeploy.export.metadata)."""
    if "model" not in meta or "task" not in meta:
        raise UserError("the ONNX has no hrdeploy metadata; pass --model NAME (and --dataset) to say what it is")
    _check_pose_task(str(meta["model"]), str(meta["task"]))
    shape = list(meta.get("input_shape", []))
    if input_size is None:
        if len(shape) == 4 and all(isinstance(v, int) for v in shape[2:]):
            input_size = (shape[2], shape[3])
        else:
            raise UserError("the ONNX has a dynamic input size; pass --input-size HxW")
    dataset = str(meta.get("dataset", ""))
    known = KEYPOINT_SETS.get(dataset)
    names = tuple(meta.get("keypoint_names") or (known.keypoints if known else ()))
    if not names:
        raise UserError("the ONNX metadata lists no keypoints; pass --model NAME (and --dataset)")
    return PoseConfig(
        model=str(meta["model"]), task=str(meta["task"]), dataset=dataset, input_hw=tuple(input_size),
        mean=tuple(meta["mean"]), std=tuple(meta["std"]), keypoint_names=names,
        flip_pairs=tuple(tuple(p) for p in meta.get("flip_pairs", known.flip_pairs if known else ())),
        skeleton=known.skeleton if known else (), output_names=tuple(meta.get("outputs", ("heatmaps",))),
    )


@dataclass
class Person:
    """One detected person in image pixels: keypoints [K, 3] = (x, y, score); NaN x, y for a joint not found."""

    keypoints: np.ndarray
    score: float
    box: tuple[float, float, float, float] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self, names: Sequence[str]) -> dict[str, Any]:
        return {
            "score": _num(self.score, 6),
            "box": None if self.box is None else [_num(v, 3) for v in self.box],
            "keypoints": [
                {"name": n, "x": _num(x, 3), "y": _num(y, 3), "score": _num(s, 6)}
                for n, (x, y, s) in zip(names, self.keypoints, strict=True)
            ],
        }


def _num(v: float, digits: int) -> float | None:
    """JSON number, or null for what is not a finite number (NaN: a joint that was not found)."""
    return round(float(v), digits) if np.isfinite(v) else None


def _run(runner: Runner, x: np.ndarray) -> list[np.ndarray]:
    out = runner.run(np.ascontiguousarray(x[None], dtype=np.float32))
    return [out[name] for name in runner.output_names]


def predict_topdown(
    runner: Runner,
    image: np.ndarray,
    cfg: PoseConfig,
    boxes: Sequence[Sequence[float] | None] = (None,),
    *,
    flip_test: bool = False,
    post_process: str = "default",
    dark_kernel: int = 11,
    shift_heatmap: bool = True,
) -> list[Person]:
    """One Person per box (None = the whole image, letterboxed); keypoints mapped back to image pixels."""
    people = []
    for box in boxes:
        x, matrix = preprocess(image, cfg.input_hw, cfg.mean, cfg.std, box=box)
        heatmaps = _run(runner, x)[0]
        if heatmaps.shape[1] != cfg.num_keypoints:
            raise UserError(
                f"{cfg.model}: the model gives {heatmaps.shape[1]} heatmaps but the keypoint set has "
                f"{cfg.num_keypoints}; check --dataset"
            )
        if flip_test:
            flipped = _run(runner, np.ascontiguousarray(x[:, :, ::-1]))[0]
            heatmaps = flip_test_average(heatmaps, flipped, cfg.flip_index, shift=shift_heatmap)
        kpts = keypoints_in_image(heatmaps, matrix[None], cfg.input_hw, post_process, dark_kernel)[0]
        people.append(Person(kpts, float(kpts[:, 2].mean()), None if box is None else tuple(map(float, box))))
    return people


def predict_bottomup(
    runner: Runner,
    image: np.ndarray,
    cfg: PoseConfig,
    *,
    flip_test: bool = False,
    params: GroupParams | None = None,
) -> list[Person]:
    """People found by associative-embedding grouping, sorted by score, in image pixels.

    The image is letterboxed into the model input (HigherHRNet resizes the short side to the input size;
    a fixed-shape engine needs the whole frame at its own size instead).
    """
    x, matrix = preprocess(image, cfg.input_hw, cfg.mean, cfg.std, box=None)
    outputs = _run(runner, x)
    flipped = _run(runner, np.ascontiguousarray(x[:, :, ::-1])) if flip_test else None
    try:
        heatmaps, tags = aggregate_outputs(
            outputs, cfg.num_keypoints, flipped_outputs=flipped, flip_index=cfg.flip_index, project_hw=cfg.input_hw
        )
    except ValueError as err:
        raise UserError(f"{cfg.model}: cannot decode the bottom-up outputs ({err})") from err
    people, scores = group_people(heatmaps[0], tags[0], params or GroupParams())
    inv = invert_transform(matrix)
    result = []
    for kpts, score in zip(people, scores, strict=True):
        xy = apply_transform(kpts[:, :2], inv)  # heatmaps were projected to the input size
        xy[kpts[:, 2] == 0] = np.nan  # joints neither grouped nor refined: not found
        result.append(Person(np.concatenate([xy, kpts[:, 2:3]], axis=1), float(score)))
    result.sort(key=lambda p: -p.score)
    return result


def predict(
    runner: Runner,
    image: np.ndarray,
    cfg: PoseConfig,
    boxes: Sequence[Sequence[float] | None] = (None,),
    *,
    flip_test: bool = False,
    post_process: str = "default",
) -> list[Person]:
    """Top-down or bottom-up by the config's task."""
    if cfg.task == "pose_bottomup":
        return predict_bottomup(runner, image, cfg, flip_test=flip_test)
    return predict_topdown(runner, image, cfg, boxes, flip_test=flip_test, post_process=post_process)


def keypoint_distance(a: Sequence[Person], b: Sequence[Person], in_order: bool = False) -> dict[str, float]:
    """Mean / max keypoint distance (image pixels) between two predictions of the same image.

    People are paired in order when `in_order` (top-down: one per box) and otherwise by minimum mean
    distance (scipy's linear_sum_assignment; bottom-up); unpaired people are counted, not measured.
    """
    from scipy.optimize import linear_sum_assignment

    if not a or not b:
        return {"mean_px": float("nan"), "max_px": float("nan"), "pairs": 0, "unpaired": len(a) + len(b)}
    pa = np.stack([p.keypoints[:, :2] for p in a])  # [P, K, 2]
    pb = np.stack([q.keypoints[:, :2] for q in b])
    joint_d = np.linalg.norm(pa[:, None] - pb[None], axis=-1)  # [P, Q, K], NaN where a joint is missing
    found = np.isfinite(joint_d)
    with np.errstate(invalid="ignore", divide="ignore"):
        dist = np.where(found.any(-1), np.where(found, joint_d, 0).sum(-1) / found.sum(-1), 1e12)
    if in_order:
        pairs = [(i, i) for i in range(min(len(a), len(b)))]
    else:
        pairs = list(zip(*linear_sum_assignment(dist), strict=True))
    d = np.concatenate([joint_d[i, j][found[i, j]] for i, j in pairs])
    if not d.size:
        return {"mean_px": float("nan"), "max_px": float("nan"), "pairs": len(pairs), "unpaired": len(a) + len(b)}
    return {
        "mean_px": float(d.mean()), "max_px": float(d.max()), "pairs": len(pairs),
        "unpaired": len(a) + len(b) - 2 * len(pairs),
    }
