"""The served keypoint pipeline: an encoded photo and person boxes in, keypoints in image pixels out.

Three steps, the same in `hrdeploy serve --pipeline` (PyTriton) and in the Triton ensemble that
`hrdeploy triton-repo --pipeline` writes (Python-backend models around the network):

    IMAGE (BYTES [1]), BOXES (FP32 [N, 4] x1,y1,x2,y2)
      --preprocess-->   CROPS (FP32 [N, 3, H, W]), TRANSFORMS (FP64 [N, 2, 3], image -> input pixels)
      --network-->      heatmaps (FP32 [N, K, h, w]), Triton's dynamic batcher across requests
      --postprocess-->  KEYPOINTS (FP32 [N, K, 3]: x, y in image pixels, score)

The pre- and post-processing are hrdeploy.pose's own (the affine crop and decoding of `hrdeploy infer`),
called here, never copied. A request this module refuses raises RequestError, whose one-line message the
server answers as a Triton error; the server keeps serving. Imports numpy and Pillow only (no torch), so a
Triton container needs `pip install --no-deps hrdeploy` beside the numpy and Pillow it has.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from hrdeploy.errors import UserError
from hrdeploy.serve.batching import DEFAULT_MAX_BOXES

IMAGE, BOXES, KEYPOINTS = "IMAGE", "BOXES", "KEYPOINTS"  # the pipeline's client-facing tensors
CROPS, TRANSFORMS = "CROPS", "TRANSFORMS"  # between the ensemble's steps
MAX_IMAGE_BYTES = 32 * 1024 * 1024


PIPELINE_SUFFIX = "_pipeline"  # the pipeline model (PyTriton) or ensemble (triton-repo) of network NAME: NAME_pipeline


def pipeline_model_name(network: str) -> str:
    """The keypoint pipeline's model name for network model `network`."""
    return f"{network}{PIPELINE_SUFFIX}"


def network_model_name(pipeline: str) -> str:
    """The network model behind pipeline model `pipeline` (its name without the suffix)."""
    return pipeline.removesuffix(PIPELINE_SUFFIX)


class RequestError(ValueError):
    """A request the pipeline refuses: the message says which tensor is wrong and how to fix it."""


@dataclass(frozen=True)
class PipelineConfig:
    """What the pre- and post-processing steps need; from the bundle, carried in config.pbtxt parameters."""

    input_hw: tuple[int, int]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    num_keypoints: int
    max_boxes: int = DEFAULT_MAX_BOXES
    post_process: str = "default"  # "default" (mmpose's quarter-pixel shift) or "dark"

    def to_parameters(self) -> dict[str, str]:
        """String parameters (Triton's ModelConfig.parameters take string values)."""
        return {"input_height": str(self.input_hw[0]), "input_width": str(self.input_hw[1]),
                "mean": ",".join(repr(v) for v in self.mean), "std": ",".join(repr(v) for v in self.std),
                "num_keypoints": str(self.num_keypoints), "max_boxes": str(self.max_boxes),
                "post_process": self.post_process}

    @classmethod
    def from_parameters(cls, params: Mapping[str, str]) -> PipelineConfig:
        """The inverse of `to_parameters`."""
        def floats(key: str) -> tuple[float, float, float]:
            a, b, c = (float(v) for v in params[key].split(","))
            return a, b, c

        return cls(input_hw=(int(params["input_height"]), int(params["input_width"])), mean=floats("mean"),
                   std=floats("std"), num_keypoints=int(params["num_keypoints"]), max_boxes=int(params["max_boxes"]),
                   post_process=params["post_process"])


def pipeline_config(bundle: object, max_boxes: int = DEFAULT_MAX_BOXES, dark: bool = False) -> PipelineConfig:
    """The pipeline of a top-down pose bundle (a hrdeploy.bundle.Bundle); UserError for other models."""
    from hrdeploy.pose.pipeline import config_from_bundle

    cfg = config_from_bundle(bundle)
    if cfg.task != "pose_topdown":
        raise UserError(f"{cfg.model} is {cfg.task.replace('pose_', '')}; the keypoint pipeline crops person boxes, "
                        "so it serves top-down pose models only (drop --pipeline)")
    if len(cfg.output_names) != 1:
        raise UserError(f"{cfg.model} has {len(cfg.output_names)} outputs; the keypoint pipeline decodes one heatmap "
                        "output")
    return PipelineConfig(cfg.input_hw, cfg.mean, cfg.std, cfg.num_keypoints, max_boxes, "dark" if dark else "default")


def check_boxes(boxes: object, image_hw: tuple[int, int], max_boxes: int) -> np.ndarray:
    """BOXES as float64 [N, 4] (x, y, w, h) after checking the request's [N, 4] x1,y1,x2,y2 float32 boxes.

    Refused: another dtype or shape, no box, more than `max_boxes`, NaN or infinite values, a box with zero
    or negative width or height, a box that does not overlap the image.
    """
    arr = np.asarray(boxes)
    if arr.dtype != np.float32:
        raise RequestError(f"{BOXES} has dtype {arr.dtype}; send float32 (FP32) boxes")
    if arr.ndim != 2 or arr.shape[1] != 4:
        raise RequestError(f"{BOXES} has shape {list(arr.shape)}; send [N, 4] boxes as x1,y1,x2,y2 pixels")
    n = len(arr)
    if n == 0:
        raise RequestError(f"{BOXES} holds no box; send at least one [x1, y1, x2, y2] person box")
    if n > max_boxes:
        raise RequestError(f"{BOXES} holds {n} boxes; this server takes at most {max_boxes} per request: "
                           "split the people over several requests")
    img_h, img_w = image_hw
    for i, (x1, y1, x2, y2) in enumerate(arr.astype(np.float64)):
        if not np.isfinite([x1, y1, x2, y2]).all():
            raise RequestError(f"{BOXES} row {i} is {[float(v) for v in (x1, y1, x2, y2)]}: NaN or infinite; "
                               "send finite pixel coordinates")
        if x2 <= x1 or y2 <= y1:
            raise RequestError(f"{BOXES} row {i} ({x1:g},{y1:g},{x2:g},{y2:g}) has zero or negative width or "
                               "height; send x1,y1,x2,y2 with x2 > x1 and y2 > y1")
        if x1 >= img_w or y1 >= img_h or x2 <= 0 or y2 <= 0:
            raise RequestError(f"{BOXES} row {i} ({x1:g},{y1:g},{x2:g},{y2:g}) lies outside the {img_w}x{img_h} "
                               "image; send boxes in that image's pixels")
    xyxy = arr.astype(np.float64)
    return np.concatenate([xyxy[:, :2], xyxy[:, 2:] - xyxy[:, :2]], axis=1)


def decode_request_image(image: object) -> np.ndarray:
    """The RGB uint8 photo of an IMAGE tensor: one element of encoded bytes (JPEG/PNG/BMP/WebP)."""
    from hrdeploy.images import decode_image

    arr = np.asarray(image)
    if arr.dtype != object and arr.dtype.kind != "S":
        raise RequestError(f"{IMAGE} has dtype {arr.dtype}; send the file's bytes as one BYTES element")
    if arr.size != 1:
        raise RequestError(f"{IMAGE} has {arr.size} elements (shape {list(arr.shape)}); send one encoded photo "
                           "per request, shape [1]")
    data = arr.reshape(-1)[0]
    if not isinstance(data, bytes | np.bytes_):
        raise RequestError(f"{IMAGE} holds {type(data).__name__}; send the file's bytes as one BYTES element")
    if len(data) > MAX_IMAGE_BYTES:
        raise RequestError(f"{IMAGE} is {len(data)} bytes; this server takes photos up to {MAX_IMAGE_BYTES} bytes")
    if not data:
        raise RequestError(f"{IMAGE} is empty (0 bytes); send the bytes of a JPEG/PNG/BMP/WebP file")
    try:
        return decode_image(bytes(data), f"{IMAGE} ({len(data)} bytes)")
    except UserError as err:
        raise RequestError(str(err)) from err


def preprocess_request(image: object, boxes: object, cfg: PipelineConfig) -> tuple[np.ndarray, np.ndarray]:
    """CROPS float32 [N, 3, H, W] and TRANSFORMS float64 [N, 2, 3] of one request (IMAGE, BOXES).

    Each crop is hrdeploy.pose.preprocess.preprocess of the decoded photo and one box, as `hrdeploy infer
    --bbox x,y,w,h` crops it (1.25 padding at the model's aspect ratio, ImageNet normalisation).
    """
    from hrdeploy.pose.preprocess import preprocess

    photo = decode_request_image(image)
    xywh = check_boxes(boxes, photo.shape[:2], cfg.max_boxes)
    crops, matrices = zip(*(preprocess(photo, cfg.input_hw, cfg.mean, cfg.std, box=tuple(b)) for b in xywh),
                          strict=True)
    return np.stack(crops), np.stack(matrices)


def postprocess_request(heatmaps: object, transforms: object, cfg: PipelineConfig) -> np.ndarray:
    """KEYPOINTS float32 [N, K, 3] (x, y in image pixels, score): hrdeploy.pose.decode.keypoints_in_image."""
    from hrdeploy.pose.decode import keypoints_in_image

    hm, tf = np.asarray(heatmaps), np.asarray(transforms, dtype=np.float64)
    if hm.ndim != 4 or hm.shape[1] != cfg.num_keypoints:
        raise RequestError(f"heatmaps have shape {list(hm.shape)}; expected [N, {cfg.num_keypoints}, h, w]")
    if tf.shape != (len(hm), 2, 3):
        raise RequestError(f"{TRANSFORMS} have shape {list(tf.shape)}; expected [{len(hm)}, 2, 3]")
    return keypoints_in_image(hm, tf, cfg.input_hw, cfg.post_process).astype(np.float32)
