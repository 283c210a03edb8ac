"""`hrdeploy infer` on scikit-image's astronaut photo: PNG + JSON per image, --compare, and bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from hrdeploy.bundle import FORMAT, MANIFEST
from hrdeploy.cli import cli
from hrdeploy.datasets import COCO


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory):
    from hrdeploy.pose.samples import write_sample_photos

    return write_sample_photos(tmp_path_factory.mktemp("photos"), names=("astronaut", "coffee"))


def _one_line_error(result, *needles: str) -> None:
    assert result.exit_code == 2, result.output
    lines = [ln for ln in result.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    for needle in needles:
        assert needle in lines[0], result.output


def test_infer_bundle_writes_png_and_json(cli_runner, lite18_bundle, photos, tmp_path) -> None:
    from hrdeploy.images import read_image
    from hrdeploy.pose.preprocess import preprocess
    from hrdeploy.runtime.onnxruntime import OrtRunner

    astronaut = photos[0]
    out = tmp_path / "pred"
    result = cli_runner.invoke(
        cli, ["infer", str(astronaut), str(lite18_bundle), "--bbox", "120,20,260,480", "--out", str(out)]
    )
    assert result.exit_code == 0, result.output
    assert "astronaut.png: 1 person" in result.output
    with Image.open(out / "astronaut.png") as png:
        assert png.size == (512, 512)
    record = json.loads((out / "astronaut.json").read_text())
    assert record["model"] == "lite_hrnet_18" and record["backend"] == "ort"
    (person,) = record["people"]
    assert person["box"] == [120.0, 20.0, 260.0, 480.0]
    kps = person["keypoints"]
    assert [k["name"] for k in kps] == list(COCO.keypoints)
    # scores are the heatmap maxima of the ONNX on the mmpose crop
    x, _ = preprocess(read_image(astronaut), (128, 96), (0.485, 0.456, 0.406), (0.229, 0.224, 0.225),
                      box=(120, 20, 260, 480))
    heatmaps = OrtRunner(lite18_bundle / "model.onnx").run(x[None])["heatmaps"]
    np.testing.assert_allclose([k["score"] for k in kps], heatmaps[0].max(axis=(1, 2)), rtol=1e-4)
    # keypoints lie in the crop: the box widened to 3:4 (360x480) around its centre, padded 1.25x
    xs, ys = np.array([k["x"] for k in kps]), np.array([k["y"] for k in kps])
    assert (xs >= 250 - 225 - 1e-3).all() and (xs <= 250 + 225).all()
    assert (ys >= 260 - 300 - 1e-3).all() and (ys <= 260 + 300).all()
    assert np.ptp(xs) > 10 and np.ptp(ys) > 10  # not all at one point


def test_infer_compare_with_eager(cli_runner, lite18_bundle, photos, tmp_path) -> None:
    out = tmp_path / "cmp"
    result = cli_runner.invoke(
        cli,
        ["infer", str(photos[0]), str(lite18_bundle), "--bbox", "120,20,260,480", "--compare", "--flip-test",
         "--dark", "--out", str(out)],
    )
    assert result.exit_code == 0, result.output
    assert "mean keypoint distance eager vs ort:" in result.output
    record = json.loads((out / "astronaut.json").read_text())
    cmp = record["compare"]
    assert cmp["reference"] == "eager" and cmp["paired_people"] == 1
    eager_xy = np.array([[k["x"], k["y"]] for k in cmp["people"][0]["keypoints"]])
    ort_xy = np.array([[k["x"], k["y"]] for k in record["people"][0]["keypoints"]])
    dist = np.linalg.norm(eager_xy - ort_xy, axis=1)
    assert cmp["mean_keypoint_distance_px"] == pytest.approx(dist.mean(), abs=1e-3)
    assert dist.mean() < 1.0  # fp32 ONNX vs eager: sub-pixel
    with Image.open(out / "astronaut.png") as png:
        assert png.size == (2 * 512 + 8, 512)  # eager | ort side by side


def test_infer_whole_image_without_box(cli_runner, lite18_bundle, photos, tmp_path) -> None:
    out = tmp_path / "whole"
    result = cli_runner.invoke(cli, ["infer", str(photos[1]), str(lite18_bundle), "--out", str(out)])
    assert result.exit_code == 0, result.output
    record = json.loads((out / "coffee.json").read_text())
    assert record["input_size"] == [128, 96] and record["width"] == 600
    (person,) = record["people"]
    assert person["box"] is None
    xs = np.array([k["x"] for k in person["keypoints"]])
    assert (xs >= 0).all() and (xs <= 600).all()  # letterbox: the 600 px width fills the input


def test_bare_onnx_is_described_by_its_metadata(cli_runner, lite18_bundle, photos, tmp_path) -> None:
    import shutil

    bare = tmp_path / "bare.onnx"  # outside the bundle: preprocessing and keypoints come from metadata_props
    shutil.copy(lite18_bundle / "model.onnx", bare)
    runs = {}
    for name, source in (("bundle", [str(lite18_bundle)]), ("bare", ["--onnx", str(bare)])):
        result = cli_runner.invoke(cli, ["infer", str(photos[0]), *source, "--bbox", "120,20,260,480",
                                         "--out", str(tmp_path / name)])
        assert result.exit_code == 0, result.output
        runs[name] = json.loads((tmp_path / name / "astronaut.json").read_text())
    assert runs["bare"]["people"] == runs["bundle"]["people"]
    assert runs["bare"]["input_size"] == [128, 96]
    _one_line_error(cli_runner.invoke(cli, ["infer", str(photos[0]), "--onnx", str(bare), "--compare"]), "--model")


def test_unreadable_image_is_one_line_error(cli_runner, lite18_bundle, tmp_path) -> None:
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG but not really")
    _one_line_error(cli_runner.invoke(cli, ["infer", str(bad), str(lite18_bundle), "--out", str(tmp_path)]),
                    "broken.png")


def test_box_outside_image_is_one_line_error(cli_runner, lite18_bundle, photos, tmp_path) -> None:
    result = cli_runner.invoke(
        cli, ["infer", str(photos[0]), str(lite18_bundle), "--bbox", "600,600,50,50", "--out", str(tmp_path)]
    )
    _one_line_error(result, "outside", "512x512")
    result = cli_runner.invoke(cli, ["infer", str(photos[0]), str(lite18_bundle), "--bbox", "1,2,3"])
    _one_line_error(result, "x,y,w,h")


def test_segmentation_model_is_one_line_error(cli_runner, photos, tmp_path) -> None:
    _one_line_error(cli_runner.invoke(cli, ["infer", str(photos[0]), "--model", "hrnetv2_w18_small_v1"]),
                    "segmentation", "pose model")
    bundle = tmp_path / "seg"
    bundle.mkdir()
    manifest = {
        "format": FORMAT, "model": {"name": "hrnetv2_w48", "task": "segmentation", "dataset": "cityscapes"},
        "input": {"height": 512, "width": 1024, "mean": [0.5] * 3, "std": [0.5] * 3},
        "outputs": [{"name": "logits", "stride": 4, "channels": 19}], "keypoints": None, "artifacts": {},
    }
    (bundle / MANIFEST).write_text(json.dumps(manifest))
    _one_line_error(cli_runner.invoke(cli, ["infer", str(photos[0]), str(bundle)]), "hrnetv2_w48", "segmentation")


def test_missing_model_and_bad_paths(cli_runner, photos, tmp_path) -> None:
    _one_line_error(cli_runner.invoke(cli, ["infer", str(photos[0])]), "no model")
    _one_line_error(cli_runner.invoke(cli, ["infer", str(photos[0]), str(tmp_path / "out" / "l18")]), "does not exist")
    _one_line_error(
        cli_runner.invoke(cli, ["infer", str(photos[0]), "--model", "higher_hrnet_w32", "--bbox", "1,1,50,50"]),
        "bottom-up", "--bbox",
    )
    _one_line_error(cli_runner.invoke(cli, ["infer", str(photos[0]), "--model", "lite_hrnet_18", "--compare"]),
                    "--compare")


@pytest.mark.slow
def test_infer_bottom_up_higher_hrnet(cli_runner, photos, tmp_path) -> None:
    """Eager inference (--model) of a bottom-up network: grouping into people, flip test included."""
    out = tmp_path / "bu"
    result = cli_runner.invoke(
        cli,
        ["infer", str(photos[0]), "--model", "higher_hrnet_w32", "--input-size", "128x128", "--flip-test",
         "--out", str(out)],
    )
    assert result.exit_code == 0, result.output
    assert "higher_hrnet_w32 (bottomup, coco, input 128x128) on eager" in result.output
    record = json.loads((out / "astronaut.json").read_text())
    assert record["backend"] == "eager" and record["flip_test"] is True
    people = record["people"]
    assert people, "seeded HigherHRNet finds peaks above the 0.1 detection threshold"
    scores = [p["score"] for p in people]
    assert scores == sorted(scores, reverse=True)
    for p in people:
        assert p["box"] is None and [k["name"] for k in p["keypoints"]] == list(COCO.keypoints)
        found = [k for k in p["keypoints"] if k["x"] is not None]
        assert found and all(-1 <= k["x"] <= 513 and -1 <= k["y"] <= 513 for k in found)
