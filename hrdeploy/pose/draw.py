"""Drawing keypoints and skeletons (COCO / MPII) with Pillow, as mmpose's `imshow_keypoints` does with OpenCV.

Limbs and joints are coloured by side: left orange, right blue, centre green (mmpose's COCO palette idea).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from hrdeploy.pose.pipeline import Person

if TYPE_CHECKING:
    from PIL import Image

LEFT, RIGHT, CENTER = (255, 128, 0), (51, 153, 255), (0, 255, 0)
BOX = (255, 255, 0)


def _side(name: str) -> tuple[int, int, int]:
    if name.startswith("left"):
        return LEFT
    if name.startswith("right"):
        return RIGHT
    return CENTER


def draw_people(
    image: np.ndarray,
    people: Sequence[Person],
    names: Sequence[str],
    skeleton: Sequence[tuple[int, int]],
    kpt_thr: float = 0.3,
    title: str | None = None,
) -> Image.Image:
    """The RGB image with each person's box, limbs (both ends above `kpt_thr`) and joints drawn."""
    from PIL import Image, ImageDraw

    img = Image.fromarray(np.asarray(image, dtype=np.uint8)).convert("RGB")
    draw = ImageDraw.Draw(img)
    size = max(img.size)
    radius = max(2, size // 160)
    width = max(1, size // 200)
    for person in people:
        if person.box is not None:
            x, y, w, h = person.box
            draw.rectangle([x, y, x + w, y + h], outline=BOX, width=width)
        kp = person.keypoints
        visible = kp[:, 2] > kpt_thr
        for a, b in skeleton:
            if a < len(kp) and b < len(kp) and visible[a] and visible[b]:
                name_a, name_b = names[a], names[b]
                colour = _side(name_a) if _side(name_a) == _side(name_b) else CENTER
                draw.line([tuple(kp[a, :2]), tuple(kp[b, :2])], fill=colour, width=width + 1)
        for j, (x, y, _) in enumerate(kp):
            if visible[j]:
                draw.ellipse([x - radius, y - radius, x + radius, y + radius], fill=_side(names[j]), outline=(0, 0, 0))
    if title:
        draw.rectangle([0, 0, 8 * len(title) + 8, 16], fill=(0, 0, 0))
        draw.text((4, 2), title, fill=(255, 255, 255))
    return img


def side_by_side(images: Sequence[Image.Image], gap: int = 8) -> Image.Image:
    """Images placed left to right on a white canvas."""
    from PIL import Image

    w = sum(im.width for im in images) + gap * (len(images) - 1)
    h = max(im.height for im in images)
    canvas = Image.new("RGB", (w, h), (255, 255, 255))
    x = 0
    for im in images:
        canvas.paste(im, (x, 0))
        x += im.width + gap
    return canvas
