"""Dataset facts: keypoint names, flip pairs, skeletons, class counts (one source of truth).

Keypoint orders and flip pairs follow mmpose's dataset configs (coco.py, mpii.py).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class KeypointSet:
    name: str
    keypoints: tuple[str, ...]
    flip_pairs: tuple[tuple[int, int], ...]
    skeleton: tuple[tuple[int, int], ...]

    @property
    def num_keypoints(self) -> int:
        return len(self.keypoints)

    def flip_index(self) -> list[int]:
        return flip_index(self.num_keypoints, self.flip_pairs)


def flip_index(num_keypoints: int, flip_pairs: Iterable[tuple[int, int]]) -> list[int]:
    """Channel order of the horizontally flipped heatmaps: each left/right pair swapped."""
    index = list(range(num_keypoints))
    for a, b in flip_pairs:
        index[a], index[b] = b, a
    return index


COCO = KeypointSet(
    name="coco",
    keypoints=(
        "nose", "left_eye", "right_eye", "left_ear", "right_ear",
        "left_shoulder", "right_shoulder", "left_elbow", "right_elbow",
        "left_wrist", "right_wrist", "left_hip", "right_hip",
        "left_knee", "right_knee", "left_ankle", "right_ankle",
    ),
    flip_pairs=((1, 2), (3, 4), (5, 6), (7, 8), (9, 10), (11, 12), (13, 14), (15, 16)),
    skeleton=(
        (15, 13), (13, 11), (16, 14), (14, 12), (11, 12), (5, 11), (6, 12), (5, 6), (5, 7),
        (6, 8), (7, 9), (8, 10), (1, 2), (0, 1), (0, 2), (1, 3), (2, 4), (3, 5), (4, 6),
    ),
)

MPII = KeypointSet(
    name="mpii",
    keypoints=(
        "right_ankle", "right_knee", "right_hip", "left_hip", "left_knee", "left_ankle",
        "pelvis", "thorax", "upper_neck", "head_top", "right_wrist", "right_elbow",
        "right_shoulder", "left_shoulder", "left_elbow", "left_wrist",
    ),
    flip_pairs=((0, 5), (1, 4), (2, 3), (10, 15), (11, 14), (12, 13)),
    skeleton=(
        (0, 1), (1, 2), (2, 6), (6, 3), (3, 4), (4, 5), (6, 7), (7, 8), (8, 9),
        (8, 12), (12, 11), (11, 10), (8, 13), (13, 14), (14, 15),
    ),
)

KEYPOINT_SETS = {"coco": COCO, "mpii": MPII}

CITYSCAPES_CLASSES = 19
