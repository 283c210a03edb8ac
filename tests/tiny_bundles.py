"""Hand-made bundles for fast tests: a manifest and a one-conv ONNX, no export."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from hrdeploy.bundle import FORMAT, Bundle


def tiny_onnx(path: Path, *, batch="batch", height=64, width=48, fp16=False) -> Path:
    """A 1-conv pose-like graph: input 'input' [batch, 3, H, W] -> 'heatmaps' [batch, 17, H/4, W/4]."""
    dtype = np.float16 if fp16 else np.float32
    w = numpy_helper.from_array(np.random.default_rng(0).standard_normal((17, 3, 3, 3)).astype(dtype), "w")
    nodes = [helper.make_node("Conv", ["input" if not fp16 else "x16", "w"], ["h"], strides=[4, 4], pads=[1, 1, 1, 1])]
    if fp16:
        nodes.insert(0, helper.make_node("Cast", ["input"], ["x16"], to=TensorProto.FLOAT16))
        nodes.append(helper.make_node("Cast", ["h"], ["heatmaps"], to=TensorProto.FLOAT))
    else:
        nodes.append(helper.make_node("Identity", ["h"], ["heatmaps"]))
    graph = helper.make_graph(
        nodes, "tiny", [helper.make_tensor_value_info("input", TensorProto.FLOAT, [batch, 3, height, width])],
        [helper.make_tensor_value_info("heatmaps", TensorProto.FLOAT, None)], initializer=[w],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 19)])
    model.ir_version = 9
    onnx.save(model, path)
    return path


def tiny_manifest(*, dynamic_batch: bool = True, height: int = 64, width: int = 48, name: str = "tiny") -> dict:
    """A complete manifest for a lite_hrnet_18-like top-down COCO model (no artifacts)."""
    from hrdeploy.datasets import COCO

    return {
        "format": FORMAT,
        "model": {"name": name, "family": "test", "task": "pose_topdown", "dataset": "coco", "upstream": None,
                  "checkpoint": None, "seed": 0},
        "input": {"name": "input", "shape": ["batch" if dynamic_batch else 1, 3, height, width], "layout": "NCHW",
                  "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225],
                  "height": height, "width": width, "dynamic_batch": dynamic_batch, "dynamic_shape": False,
                  "stride": 32},
        "outputs": [{"name": "heatmaps", "stride": 4, "channels": 17}],
        "keypoints": {"dataset": "coco", "names": list(COCO.keypoints),
                      "flip_pairs": [list(p) for p in COCO.flip_pairs], "skeleton": [list(p) for p in COCO.skeleton]},
        "rewrites": [],
        "export": {"exporter": "dynamo", "opset": 19, "batch": None if dynamic_batch else 1, "simplified": True},
        "artifacts": {},
    }


def tiny_bundle(root: Path, *, dynamic_batch: bool = True, with_fp16: bool = False, **manifest_kw) -> Path:
    """A bundle folder with manifest.json and model.onnx (and model.fp16.onnx when asked)."""
    root.mkdir(parents=True, exist_ok=True)
    manifest = tiny_manifest(dynamic_batch=dynamic_batch, **manifest_kw)
    tiny_onnx(root / "model.onnx", batch="batch" if dynamic_batch else 1,
              height=manifest["input"]["height"], width=manifest["input"]["width"])
    (root / "manifest.json").write_text(json.dumps(manifest))
    b = Bundle.open(root)
    b.record_artifact("onnx", "model.onnx", precision="fp32")
    if with_fp16:
        tiny_onnx(root / "model.fp16.onnx", fp16=True)
        b.record_artifact("fp16", "model.fp16.onnx", precision="fp16")
    return root


def tiny_coco(root: Path, *, images: int = 2, size: tuple[int, int] = (96, 128)) -> Path:
    """A COCO keypoint json (one person per image, 17 keypoints) with its seeded photos in `root`."""
    from PIL import Image

    from hrdeploy.datasets import COCO

    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    h, w = size
    imgs, anns = [], []
    for i in range(1, images + 1):
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(root / f"{i:03d}.png")
        imgs.append({"id": i, "file_name": f"{i:03d}.png", "height": h, "width": w})
        xy = rng.uniform([w * 0.3, h * 0.2], [w * 0.7, h * 0.8], (17, 2))
        kps = [float(v) for x, y in xy for v in (round(x, 1), round(y, 1), 2)]
        x0, y0 = xy.min(0)
        x1, y1 = xy.max(0)
        anns.append({"id": i, "image_id": i, "category_id": 1, "iscrowd": 0, "num_keypoints": 17,
                     "keypoints": kps, "bbox": [float(x0), float(y0), float(x1 - x0), float(y1 - y0)],
                     "area": float((x1 - x0) * (y1 - y0))})
    cats = [{"id": 1, "name": "person", "supercategory": "person", "keypoints": list(COCO.keypoints),
             "skeleton": [[a + 1, b + 1] for a, b in COCO.skeleton]}]
    path = root / "person_keypoints.json"
    path.write_text(json.dumps({"images": imgs, "annotations": anns, "categories": cats}))
    return path
