"""COCO keypoint AP of a pose runner on annotated people, scored by pycocotools' COCOeval.

Top-down models crop each person box (the ground-truth boxes, or the boxes of a COCO-results detection
file) with hrdeploy.pose.preprocess (mmpose's affine crop, x1.25), run in batches, decode with
hrdeploy.pose.decode and map back to image pixels; the predictions become a COCO results list that
`pycocotools.cocoeval.COCOeval(..., "keypoints")` scores. Bottom-up models run on whole images with their
grouping (hrdeploy.pose.pipeline.predict_bottomup). Nothing here re-implements the COCO evaluation.
"""

from __future__ import annotations

import contextlib
import io
import math
import os
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from hrdeploy.errors import UserError, missing_dependency
from hrdeploy.io import not_a_file
from hrdeploy.parity.bootstrap import Outcomes
from hrdeploy.pose.preprocess import check_box

# COCOeval.stats order for iouType="keypoints"
STAT_NAMES = ("AP", "AP50", "AP75", "APm", "APl", "AR", "AR50", "AR75", "ARm", "ARl")
# mmpose's TopDownCocoDataset rescoring: a person's score is its box score times the mean of the keypoint
# scores above this threshold.
KPT_SCORE_THR = 0.2


def _pycocotools() -> tuple[Any, Any]:
    try:
        from pycocotools.coco import COCO
        from pycocotools.cocoeval import COCOeval
    except ImportError as err:
        raise missing_dependency("pycocotools", purpose="COCO keypoint AP") from err
    return COCO, COCOeval


@dataclass(frozen=True)
class PersonBox:
    """One person to crop: image, box (x, y, w, h) in image pixels, box score, and its annotation id (GT)."""

    image_id: int
    file: Path
    box: tuple[float, float, float, float]
    score: float = 1.0
    ann_id: int | None = None


def _read_json(path: Path, what: str) -> Any:
    import json

    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as err:
        raise UserError(f"cannot read {what} {path} ({str(err).splitlines()[0]}); pass a JSON file") from err


def _is(value: Any, kind: Any) -> bool:
    """JSON type check of one value: int excludes bool, float is any finite number, None is null; a tuple of
    kinds accepts any of them."""
    if isinstance(kind, tuple):
        return any(_is(value, k) for k in kind)
    if kind is None:
        return value is None
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind is float:
        return number and math.isfinite(value)
    if kind is int:
        return number and isinstance(value, int)
    return isinstance(value, kind)


def _fields(item: Any, where: str, **kinds: Any) -> str | None:
    """What is wrong with JSON object `item` (a required key per kind; an optional one when None is allowed)."""
    if not isinstance(item, dict):
        return f"{where} is {type(item).__name__}, not an object"
    for key, kind in kinds.items():
        optional = isinstance(kind, tuple) and None in kind
        if key not in item and not optional:
            return f"{where} has no {key!r}"
        if key in item and not _is(item[key], kind):
            return f"{where} {key} is {item[key]!r}"
    return None


def _box_problem(box: Any, where: str) -> str | None:
    if not isinstance(box, list) or len(box) != 4 or not all(_is(v, float) for v in box):
        return f"{where} must be 4 finite numbers [x, y, w, h], not {box!r}"
    return None


def coco_problem(data: Any) -> str | None:
    """What keeps `data` from being a COCO keypoint annotation set pycocotools can index (None when it can)."""
    if not isinstance(data, dict):
        return f"it holds {type(data).__name__}, not an object"
    for key in ("images", "annotations", "categories"):
        if not isinstance(data.get(key), list):
            return f"{key!r} must be a list"
    for i, img in enumerate(data["images"]):
        if problem := _fields(img, f"images[{i}]", id=int, file_name=str):
            return problem
    points = {}
    for i, cat in enumerate(data["categories"]):
        if problem := _fields(cat, f"categories[{i}]", id=int, keypoints=(list, None)):
            return problem
        points[cat["id"]] = len(cat.get("keypoints") or ())
    images = {img["id"] for img in data["images"]}
    for i, ann in enumerate(data["annotations"]):
        where = f"annotations[{i}]"
        problem = (_fields(ann, where, id=int, image_id=int, category_id=int, iscrowd=(int, None),
                           num_keypoints=(int, None), keypoints=(list, None))
                   or _box_problem(ann.get("bbox"), f"{where} bbox"))
        if problem:
            return problem
        if ann["image_id"] not in images or ann["category_id"] not in points:
            return f"{where} names image {ann['image_id']} or category {ann['category_id']}, which are not listed"
        kps = ann.get("keypoints")
        if kps is not None and (len(kps) != 3 * points[ann["category_id"]] or not all(_is(v, float) for v in kps)):
            return f"{where} keypoints must be {3 * points[ann['category_id']]} numbers (x, y, v per keypoint)"
    return None


class CocoKeypoints:
    """A COCO keypoint annotation file with its image folder."""

    def __init__(self, ann: str | os.PathLike, images: str | os.PathLike) -> None:
        COCO, _ = _pycocotools()
        self.ann, self.images = Path(ann), Path(images)
        if not self.ann.is_file():
            raise UserError(f"annotation file {self.ann} {not_a_file(self.ann)}; pass a COCO keypoint json with --ann")
        if not self.images.is_dir():
            raise UserError(f"image folder {self.images} does not exist; pass the folder of the --ann images "
                            "with --images")
        data = _read_json(self.ann, "annotation file")
        problem = coco_problem(data)
        if problem:
            raise UserError(f"{self.ann} is not a COCO keypoint file: {problem}; pass a COCO keypoint json "
                            "(images, annotations, categories) such as person_keypoints_val2017.json")
        with contextlib.redirect_stdout(io.StringIO()):
            self.coco = COCO()
            self.coco.dataset = data
            self.coco.createIndex()
        cats = self.coco.loadCats(self.coco.getCatIds())
        person = [c for c in cats if c.get("keypoints")]
        if not person or not self.coco.getAnnIds(catIds=[person[0]["id"]]):
            raise UserError(f"{self.ann} has no keypoint annotations (no category with 'keypoints'); pass a COCO "
                            "keypoint json such as person_keypoints_val2017.json")
        self.category_id = int(person[0]["id"])
        self.num_keypoints = len(person[0]["keypoints"])
        missing = [img["file_name"] for img in self.coco.loadImgs(self.image_ids())
                   if not (self.images / img["file_name"]).is_file()]
        if missing:
            raise UserError(f"{len(missing)} image(s) of {self.ann.name} are not in {self.images} (e.g. "
                            f"{missing[0]}); pass the folder that holds them with --images")

    def image_ids(self) -> list[int]:
        """Images with at least one annotated person (what COCOeval scores), within `subset` if one was made."""
        ids = {a["image_id"] for a in self.coco.loadAnns(self.coco.getAnnIds(catIds=[self.category_id]))}
        only = getattr(self, "_only", None)
        return sorted(ids if only is None else ids & only)

    def subset(self, image_ids: Iterable[int]) -> CocoKeypoints:
        """The same annotations scored on `image_ids` only (e.g. the tuning photos of a calibration set)."""
        import copy

        out = copy.copy(self)
        out._only = {int(i) for i in image_ids}
        return out

    def file(self, image_id: int) -> Path:
        return self.images / self.coco.loadImgs([image_id])[0]["file_name"]

    def gt_boxes(self) -> list[PersonBox]:
        """Ground-truth person boxes with at least one labelled keypoint, not crowd (as mmpose's loader)."""
        anns = self.coco.loadAnns(self.coco.getAnnIds(imgIds=self.image_ids(), catIds=[self.category_id],
                                                      iscrowd=False))
        boxes = [PersonBox(a["image_id"], self.file(a["image_id"]), tuple(float(v) for v in a["bbox"]), 1.0, a["id"])
                 for a in anns if a.get("num_keypoints", 0) > 0 and a["bbox"][2] > 0 and a["bbox"][3] > 0]
        if not boxes:
            raise UserError(f"{self.ann} has no person with labelled keypoints and a non-empty box (not crowd); "
                            "pass annotations with at least one such person")
        return boxes

    def det_boxes(self, dets: str | os.PathLike, min_score: float = 0.0) -> list[PersonBox]:
        """Person boxes of a COCO results file (image_id, bbox, score) on this file's images."""
        rows = _read_json(Path(dets), "detections")
        problem = None if isinstance(rows, list) else f"it holds {type(rows).__name__}, not a list"
        for i, r in enumerate(rows if problem is None else ()):
            problem = (_fields(r, f"detection [{i}]", image_id=int, category_id=(int, None), score=(float, None))
                       or _box_problem(r["bbox"] if "bbox" in r else None, f"detection [{i}] bbox"))
            if problem:
                break
        if problem:
            raise UserError(f"detections {dets}: {problem}; pass a COCO results json: a list of "
                            "{image_id, category_id, bbox [x,y,w,h], score}")
        known = set(self.coco.getImgIds())
        out = []
        for r in rows:
            score = float(r.get("score", 1.0))
            if r["image_id"] in known and r.get("category_id", self.category_id) == self.category_id \
                    and score >= min_score:
                img = self.coco.imgs[r["image_id"]]
                if "height" in img and "width" in img:
                    check_box(r["bbox"], (img["height"], img["width"]))
                out.append(PersonBox(r["image_id"], self.file(r["image_id"]), tuple(float(v) for v in r["bbox"]),
                                     score))
        out = [b for b in out if b.box[2] > 0 and b.box[3] > 0]
        if not out:
            raise UserError(f"detections {dets} hold no person box on the images of {self.ann.name} with a score of "
                            f"at least {min_score:g}; pass the detections of these images (or a lower --min-det-score)")
        return out

    def score(self, results: list[dict[str, Any]]) -> dict[str, Any]:
        """COCOeval keypoint stats of `results` (COCO results format) and the mean OKS per annotated person."""
        return self.evaluate(results)[0]

    def evaluate(
        self, results: list[dict[str, Any]], owners: Sequence[int | None] | None = None
    ) -> tuple[dict[str, Any], Outcomes | None]:
        """`score`, and the per-person (or per-image) matching outcomes for a paired bootstrap.

        owners[i]: the annotation id of the person whose box gave results[i] (None: a detection's box).
        """
        _, COCOeval = _pycocotools()
        if not results:
            return {**{k: 0.0 for k in STAT_NAMES}, "mean_oks": 0.0, "people": 0}, None
        with contextlib.redirect_stdout(io.StringIO()):
            dt = self.coco.loadRes(list(results))
            ev = COCOeval(self.coco, dt, "keypoints")
            ev.params.imgIds = self.image_ids()
            ev.evaluate()
            ev.accumulate()
            ev.summarize()
        stats = {k: float(v) for k, v in zip(STAT_NAMES, ev.stats, strict=True)}
        # mean OKS: each annotated person's best OKS among the predictions of its image (COCOeval's own matrix)
        best = []
        for img_id in ev.params.imgIds:
            ious = ev.ious.get((img_id, self.category_id))
            gts = ev._gts[img_id, self.category_id]
            for j, gt in enumerate(gts):
                if gt.get("num_keypoints", 0) > 0 and not gt.get("iscrowd", 0):
                    best.append(float(np.max(ious[:, j])) if len(ious) else 0.0)
        stats = {**stats, "mean_oks": float(np.mean(best)) if best else 0.0, "people": len(best)}
        return stats, Outcomes.from_cocoeval(ev, owners)


class ImageCache:
    """Decoded RGB images by path (a handful per evaluation set)."""

    def __init__(self) -> None:
        self._images: dict[Path, np.ndarray] = {}

    def __call__(self, path: Path) -> np.ndarray:
        if path not in self._images:
            from hrdeploy.images import read_image

            self._images[path] = read_image(path)
        return self._images[path]


def crop_people(
    boxes: Sequence[PersonBox], input_hw: tuple[int, int], mean: Sequence[float], std: Sequence[float],
    images: ImageCache | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Model inputs [N, 3, H, W] and image->input matrices [N, 2, 3] of the top-down crops of `boxes`."""
    from hrdeploy.pose.preprocess import preprocess

    images = images or ImageCache()
    xs, ms = [], []
    for b in boxes:
        x, m = preprocess(images(b.file), input_hw, mean, std, box=b.box)
        xs.append(x)
        ms.append(m)
    h, w = input_hw
    return (np.stack(xs) if xs else np.zeros((0, 3, h, w), np.float32)), (np.stack(ms) if ms else np.zeros((0, 2, 3)))


RunFn = Callable[[np.ndarray], np.ndarray]


@dataclass
class _HeatmapRunner:
    """A RunFn as a runner of the comparator: its heatmaps as output "heatmaps", and the seconds spent in it."""

    fn: RunFn
    name: str = "heatmaps"
    seconds: float = 0.0

    def run(self, x: np.ndarray) -> dict[str, np.ndarray]:
        t0 = time.perf_counter()
        out = self.fn(np.ascontiguousarray(x, dtype=np.float32))
        self.seconds += time.perf_counter() - t0
        return {self.name: np.asarray(out, dtype=np.float32)}


def run_heatmaps(run: RunFn, x: np.ndarray, batch: int, fixed_batch: bool = False) -> tuple[np.ndarray, float]:
    """`run` (float32 NCHW -> heatmaps) over `x` in batches of `batch`, by the comparator's run; also the seconds
    spent in `run`. fixed_batch pads the last batch (static-batch graphs and engines take exactly `batch`)."""
    from hrdeploy.parity.comparator import Comparator
    from hrdeploy.parity.loaders import Batches

    runner = _HeatmapRunner(run)
    results = Comparator.run([runner], Batches(x, batch, pad=fixed_batch))
    return results.joined(runner.name, len(x))[runner.name], runner.seconds


def decode_people(
    heatmaps: np.ndarray, matrices: np.ndarray, input_hw: tuple[int, int], post_process: str = "default",
) -> np.ndarray:
    """Keypoints [N, K, 3] (x, y in image pixels, score) from top-down heatmaps and the crops' matrices."""
    from hrdeploy.pose.decode import keypoints_in_image

    return keypoints_in_image(heatmaps, matrices, input_hw, post_process)


def results_from_keypoints(
    boxes: Sequence[PersonBox], keypoints: np.ndarray, category_id: int = 1
) -> list[dict[str, Any]]:
    """COCO results (one per box) with mmpose's rescoring: box score x mean keypoint score above KPT_SCORE_THR."""
    out = []
    for b, kp in zip(boxes, keypoints, strict=True):
        s = kp[:, 2]
        good = s[s > KPT_SCORE_THR]
        score = b.score * (float(good.mean()) if good.size else 0.0)
        flat = np.concatenate([kp[:, :2], s[:, None]], axis=1).ravel()
        out.append({"image_id": b.image_id, "category_id": category_id,
                    "keypoints": [round(float(v), 3) for v in flat], "score": round(score, 6)})
    return out


@dataclass
class CropSet:
    """People cropped for a top-down model: boxes, model inputs [N, 3, H, W] and image->input matrices."""

    boxes: list[PersonBox]
    x: np.ndarray
    matrices: np.ndarray
    input_hw: tuple[int, int]

    @classmethod
    def build(cls, boxes: Sequence[PersonBox], input_hw: tuple[int, int], mean: Sequence[float],
              std: Sequence[float], images: ImageCache | None = None) -> CropSet:
        x, m = crop_people(boxes, input_hw, mean, std, images)
        return cls(list(boxes), x, m, (int(input_hw[0]), int(input_hw[1])))

    def __len__(self) -> int:
        return len(self.boxes)

    @property
    def boxes_wh(self) -> np.ndarray:
        """Each person's box (w, h) grown to the model's aspect ratio (the region the crop shows, unpadded)."""
        from hrdeploy.pose.preprocess import box_to_center_scale

        sizes = [box_to_center_scale(b.box, self.input_hw, padding=1.0)[1] for b in self.boxes]
        return np.array(sizes, dtype=np.float64).reshape(-1, 2)

    def keypoints(
        self, run: RunFn, batch: int = 8, *, fixed_batch: bool = False, flip_index: Sequence[int] | None = None,
        post_process: str = "default",
    ) -> tuple[np.ndarray, np.ndarray, float]:
        """Keypoints [N, K, 3] in image pixels, the (flip-averaged) heatmaps, and seconds spent running `run`.

        flip_index: run the mirrored crops too and average (mmpose's flip test with its heatmap shift).
        """
        from hrdeploy.pose.decode import flip_test_average

        heatmaps, seconds = run_heatmaps(run, self.x, batch, fixed_batch)
        if flip_index is not None:
            flipped, s2 = run_heatmaps(run, np.ascontiguousarray(self.x[..., ::-1]), batch, fixed_batch)
            heatmaps, seconds = flip_test_average(heatmaps, flipped, flip_index), seconds + s2
        return decode_people(heatmaps, self.matrices, self.input_hw, post_process), heatmaps, seconds


def bottomup_results(runner: Any, coco: CocoKeypoints, cfg: Any, flip_test: bool = False) -> tuple[list, float]:
    """COCO results of a bottom-up runner on whole images (HigherHRNet grouping), and seconds spent."""
    from hrdeploy.pose.pipeline import predict_bottomup

    images, results, seconds = ImageCache(), [], 0.0
    for image_id in coco.image_ids():
        image = images(coco.file(image_id))
        t0 = time.perf_counter()
        people = predict_bottomup(runner, image, cfg, flip_test=flip_test)
        seconds += time.perf_counter() - t0
        for p in people:
            kp = np.nan_to_num(p.keypoints, nan=0.0)
            results.append({"image_id": image_id, "category_id": coco.category_id,
                            "keypoints": [round(float(v), 3) for v in kp.ravel()], "score": round(float(p.score), 6)})
    return results, seconds
