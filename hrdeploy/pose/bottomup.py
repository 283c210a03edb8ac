"""Bottom-up (HigherHRNet) decoding: aggregate the output resolutions, heatmap NMS, associative-embedding grouping.

Follows HRNet/HigherHRNet-Human-Pose-Estimation:
- lib/core/inference.py `get_multi_stage_outputs` + `aggregate_results` (single scale, PROJECT2IMAGE):
  every output is bilinearly resized (align_corners=False) to the last (finest) output, the first K
  channels of each are averaged as heatmaps, the tag channels (K..2K of the 1/4 output, TAG_PER_JOINT)
  are kept; the flip pass mirrors the outputs back and permutes channels by the flip index; heatmaps
  and tags are then projected to the input size and the flip pair averaged (tags stacked).
- lib/core/group.py `HeatmapParser`: NMS by 5x5 max-pool equality, top-k (max 30 people) per joint,
  `match_by_tag` (joints in upstream joint order; detection threshold 0.1; a joint joins the person whose
  mean tag is nearest if the L2 tag distance is < 1, else starts a new person; the cost
  round(dist) * 100 - score is minimised by scipy's `linear_sum_assignment` where upstream uses Munkres: ties
  may resolve differently, the total cost is the same), the quarter-pixel `adjust` (+0.5 pixel centre) and
  `refine` (fill missing joints by heatmap minus tag distance).
The same grouping is mmpose 0.x's `AssociativeEmbedding` / mmpose/core/post_processing/group.py.
Grouping runs on the host, outside the engine (open-mmlab/mmpose#738).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy.optimize import linear_sum_assignment


@dataclass(frozen=True)
class GroupParams:
    """HigherHRNet's TEST defaults (experiments/coco/higher_hrnet/*.yaml)."""

    max_num_people: int = 30
    detection_threshold: float = 0.1
    tag_threshold: float = 1.0
    use_detection_val: bool = True
    ignore_too_much: bool = False
    nms_kernel: int = 5
    adjust: bool = True
    refine: bool = True


# HigherHRNet Params.joint_order for COCO (1-based in upstream): head, shoulders, hips, elbows, ...
COCO_JOINT_ORDER = tuple(i - 1 for i in (1, 2, 3, 4, 5, 6, 7, 12, 13, 8, 9, 10, 11, 14, 15, 16, 17))


def joint_order(num_joints: int) -> tuple[int, ...]:
    return COCO_JOINT_ORDER if num_joints == 17 else tuple(range(num_joints))


def resize_bilinear(maps: np.ndarray, out_hw: tuple[int, int]) -> np.ndarray:
    """torch.nn.functional.interpolate(mode='bilinear', align_corners=False) of [N, C, H, W] in numpy."""
    maps = np.asarray(maps, dtype=np.float32)
    in_h, in_w = maps.shape[-2:]
    out_h, out_w = out_hw
    if (in_h, in_w) == (out_h, out_w):
        return maps.copy()

    def axis(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        src = np.maximum((np.arange(n_out, dtype=np.float64) + 0.5) * (n_in / n_out) - 0.5, 0.0)
        i0 = np.minimum(np.floor(src).astype(np.int64), n_in - 1)
        i1 = np.minimum(i0 + 1, n_in - 1)
        return i0, i1, (src - i0).astype(np.float32)

    y0, y1, ly = axis(in_h, out_h)
    x0, x1, lx = axis(in_w, out_w)
    rows = maps[..., y0, :] * (1 - ly)[:, None] + maps[..., y1, :] * ly[:, None]
    return rows[..., x0] * (1 - lx) + rows[..., x1] * lx


def aggregate_outputs(
    outputs: Sequence[np.ndarray],
    num_joints: int,
    *,
    flipped_outputs: Sequence[np.ndarray] | None = None,
    flip_index: Sequence[int] | None = None,
    project_hw: tuple[int, int] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Heatmaps [N, K, H, W] and tags [N, K, H, W, T] from the multi-resolution outputs.

    `outputs` in model order (coarse 1/4 map with heatmaps + tags first, finest last); an output
    carries tags when it has at least 2K channels. `flipped_outputs` are the outputs of the mirrored
    input (flip test, needs `flip_index`). `project_hw` (the input size) as upstream's PROJECT2IMAGE.
    """
    k = num_joints

    def one_pass(outs: Sequence[np.ndarray], flip: bool) -> tuple[np.ndarray, list[np.ndarray]]:
        final_hw = outs[-1].shape[-2:]
        hm_sum, n_hm, tags = 0.0, 0, []
        for i, out in enumerate(outs):
            out = np.asarray(out, dtype=np.float32)
            if len(outs) > 1 and i != len(outs) - 1:
                out = resize_bilinear(out, final_hw)
            if flip:
                out = out[..., ::-1]
            hm = out[:, :k]
            tag = out[:, k : 2 * k] if out.shape[1] >= 2 * k else None
            if flip:
                hm = hm[:, list(flip_index)]
                tag = None if tag is None else tag[:, list(flip_index)]
            hm_sum = hm_sum + hm
            n_hm += 1
            if tag is not None:
                tags.append(tag)
        return hm_sum / n_hm, tags

    heatmaps, tags = one_pass(outputs, False)
    heatmap_list = [heatmaps]
    if flipped_outputs is not None:
        if flip_index is None:
            raise ValueError("flip test needs the flip index of the dataset")
        hm_f, tags_f = one_pass(flipped_outputs, True)
        heatmap_list.append(hm_f)
        tags = tags + tags_f
    if not tags:
        raise ValueError(f"no output carries associative-embedding tags (>= {2 * k} channels)")
    if project_hw is not None:
        heatmap_list = [resize_bilinear(h, project_hw) for h in heatmap_list]
        tags = [resize_bilinear(t, project_hw) for t in tags]
    else:
        hw = heatmap_list[0].shape[-2:]
        tags = [resize_bilinear(t, hw) for t in tags]
    final = sum(heatmap_list) / len(heatmap_list)
    return np.ascontiguousarray(final), np.stack(tags, axis=-1)


def heatmap_nms(heatmaps: np.ndarray, kernel: int = 5) -> np.ndarray:
    """Keep only local maxima: det * (maxpool(det, kernel, stride 1, pad kernel // 2) == det)."""
    pad = kernel // 2
    h, w = heatmaps.shape[-2:]
    padded = np.pad(heatmaps, [(0, 0)] * (heatmaps.ndim - 2) + [(pad, pad), (pad, pad)], constant_values=-np.inf)
    pooled = np.full_like(heatmaps, -np.inf)
    for dy in range(kernel):
        for dx in range(kernel):
            np.maximum(pooled, padded[..., dy : dy + h, dx : dx + w], out=pooled)
    return heatmaps * (pooled == heatmaps)


def top_k(det: np.ndarray, tags: np.ndarray, params: GroupParams) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per joint, the `max_num_people` strongest NMS peaks.

    Returns tags [K, M, T], locations (x, y) [K, M, 2] and values [K, M].
    """
    k, h, w = det.shape
    nms = heatmap_nms(det, params.nms_kernel).reshape(k, h * w)
    m = min(params.max_num_people, h * w)
    ind = np.argsort(-nms, axis=1, kind="stable")[:, :m]
    val = np.take_along_axis(nms, ind, axis=1)
    tag = tags.reshape(k, h * w, -1)
    tag_k = np.take_along_axis(tag, ind[..., None], axis=1)
    loc = np.stack([ind % w, ind // w], axis=-1)
    return tag_k, loc, val


def match_by_tag(tag_k: np.ndarray, loc_k: np.ndarray, val_k: np.ndarray, params: GroupParams) -> np.ndarray:
    """Group joint candidates into people: [P, K, 3 + T] rows (x, y, score, tag...), zeros for missing joints."""
    num_joints = tag_k.shape[0]
    default = np.zeros((num_joints, 3 + tag_k.shape[2]))
    people: list[np.ndarray] = []
    person_tags: list[list[np.ndarray]] = []
    for i, idx in enumerate(joint_order(num_joints)):
        tags = tag_k[idx]
        joints = np.concatenate([loc_k[idx], val_k[idx, :, None], tags], axis=1)
        mask = joints[:, 2] > params.detection_threshold
        tags, joints = tags[mask], joints[mask]
        if joints.shape[0] == 0:
            continue
        if i == 0 or not people:
            for tag, joint in zip(tags, joints, strict=True):
                people.append(default.copy())
                people[-1][idx] = joint
                person_tags.append([tag])
            continue
        grouped = list(range(min(len(people), params.max_num_people)))
        if params.ignore_too_much and len(grouped) == params.max_num_people:
            continue
        mean_tags = np.array([np.mean(person_tags[g], axis=0) for g in grouped])
        dist = np.linalg.norm(joints[:, None, 3:] - mean_tags[None], ord=2, axis=2)
        cost = np.round(dist) * 100 - joints[:, 2:3] if params.use_detection_val else dist.copy()
        num_added, num_grouped = dist.shape
        if num_added > num_grouped:
            cost = np.concatenate([cost, np.full((num_added, num_added - num_grouped), 1e10)], axis=1)
        for row, col in zip(*linear_sum_assignment(cost), strict=True):
            if col < num_grouped and dist[row, col] < params.tag_threshold:
                people[grouped[col]][idx] = joints[row]
                person_tags[grouped[col]].append(tags[row])
            else:
                people.append(default.copy())
                people[-1][idx] = joints[row]
                person_tags.append([tags[row]])
    if not people:
        return np.zeros((0, num_joints, 3 + tag_k.shape[2]), dtype=np.float32)
    return np.array(people, dtype=np.float32)


def adjust(people: np.ndarray, det: np.ndarray) -> np.ndarray:
    """Upstream `adjust`: quarter-pixel shift towards the higher neighbour, then +0.5 (pixel centre)."""
    out = people.copy()
    k, h, w = det.shape
    for p in range(out.shape[0]):
        for j in range(k):
            if out[p, j, 2] > 0:
                x, y = float(out[p, j, 0]), float(out[p, j, 1])
                xi, yi = int(x), int(y)
                hm = det[j]
                x += 0.25 if hm[yi, min(xi + 1, w - 1)] > hm[yi, max(xi - 1, 0)] else -0.25
                y += 0.25 if hm[min(yi + 1, h - 1), xi] > hm[max(0, yi - 1), xi] else -0.25
                out[p, j, 0:2] = (x + 0.5, y + 0.5)
    return out


def refine(det: np.ndarray, tags: np.ndarray, keypoints: np.ndarray) -> np.ndarray:
    """Upstream `refine`: fill each missing joint at argmax(heatmap - round(tag distance to the mean tag)).

    det [K, H, W], tags [K, H, W, T], keypoints [K, 3 + T] -> keypoints with the missing joints filled.
    """
    keypoints = keypoints.copy()
    k, h, w = det.shape
    found = [tags[j, int(keypoints[j, 1]), int(keypoints[j, 0])] for j in range(k) if keypoints[j, 2] > 0]
    if not found:
        return keypoints
    prev_tag = np.mean(found, axis=0)
    for j in range(k):
        if keypoints[j, 2] != 0:
            continue
        hm = det[j]
        if tags.shape[-1] == 1:  # sqrt(x * x) == |x| exactly in IEEE arithmetic, and 3x faster
            tt = np.abs(tags[j, :, :, 0] - prev_tag[0])
        else:
            tt = np.sqrt(((tags[j] - prev_tag) ** 2).sum(axis=2))
        yy, xx = np.unravel_index(np.argmax(hm - np.round(tt)), hm.shape)
        val = hm[yy, xx]
        if val <= 0:
            continue
        x = xx + 0.5 + (0.25 if hm[yy, min(xx + 1, w - 1)] > hm[yy, max(xx - 1, 0)] else -0.25)
        y = yy + 0.5 + (0.25 if hm[min(yy + 1, h - 1), xx] > hm[max(0, yy - 1), xx] else -0.25)
        keypoints[j, 0:3] = (x, y, val)
    return keypoints


def group_people(
    heatmaps: np.ndarray, tags: np.ndarray, params: GroupParams | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """HeatmapParser.parse for one image: people [P, K, 3] (x, y, score in heatmap pixels) and scores [P].

    heatmaps [K, H, W], tags [K, H, W, T]. A person's score is the mean of its joint scores after
    `adjust` and before `refine`, as upstream.
    """
    params = params or GroupParams()
    det = np.asarray(heatmaps, dtype=np.float32)
    tags = np.asarray(tags, dtype=np.float32)
    if tags.ndim == 3:
        tags = tags[..., None]
    people = match_by_tag(*top_k(det, tags, params), params)
    if params.adjust:
        people = adjust(people, det)
    scores = people[:, :, 2].mean(axis=1) if len(people) else np.zeros(0, dtype=np.float32)
    if params.refine and len(people):
        people = np.stack([refine(det, tags, p) for p in people])
    return people[:, :, :3].astype(np.float64), scores.astype(np.float64)
