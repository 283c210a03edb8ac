"""The trained PP-TinyPose network on real people: quantize (fp16, int8 on person crops), the gates, `hrdeploy eval`.

Uses ../shared/data (skips with the reason when absent): the trained 128x96 checkpoint (one session export),
calibration on the 5 MPII photos + scikit-image's photos, evaluation on the 12 annotated COCO people.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from hrdeploy.cli import cli

pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore::DeprecationWarning")]


@pytest.fixture(scope="module")
def calib_dir(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from hrdeploy.pose.samples import write_sample_photos

    folder = tmp_path_factory.mktemp("calib")
    for jpg in (shared_data / "mpii").glob("*.jpg"):
        shutil.copyfile(jpg, folder / jpg.name)
    write_sample_photos(folder)
    return folder


@pytest.fixture(scope="module")
def quantized(trained_128_bundle: Path, calib_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the trained bundle with fp16 and int8 added by the CLI exactly as the README says (exit 0)."""
    from click.testing import CliRunner

    bundle = Path(shutil.copytree(trained_128_bundle, tmp_path_factory.mktemp("q") / "tp"))
    runner = CliRunner()
    for args in (["--precision", "int8", "--calib-dir", str(calib_dir), "--backend", "ort"],
                 ["--precision", "fp16", "--backend", "ort"]):
        result = runner.invoke(cli, ["quantize", str(bundle), *args, "--no-sensitivity"])
        assert result.exit_code == 0, result.output
    return bundle


def _coco(shared_data: Path) -> list[str]:
    return ["--ann", str(shared_data / "coco" / "test_coco.json"), "--images", str(shared_data / "coco")]


def test_quantize_calibrates_on_person_crops_and_passes_the_crop_gate(quantized: Path) -> None:
    manifest = json.loads((quantized / "manifest.json").read_text())
    int8, fp16 = manifest["artifacts"]["int8"], manifest["artifacts"]["fp16"]
    assert "person crops found by the fp32 model" in int8["calibration"]["source"]
    assert int8["calibration"]["count"] == 11  # 5 MPII + 6 scikit-image photos, one crop each
    for entry, precision in ((int8, "int8"), (fp16, "fp16")):
        val = entry["validation"]
        assert val["mode"] == "crop-agreement" and val["passed"] is True
        from hrdeploy.parity.tolerances import TOLERANCES

        assert val["gated"]["oks"] >= TOLERANCES[precision].min_oks
    assert fp16["validation"]["gated"]["oks"] > int8["validation"]["gated"]["oks"]
    parity = json.loads((quantized / "parity.json").read_text())
    assert parity["int8"]["passed"] is True and manifest["parity"]["int8"]["passed"] is True


def test_eval_scores_every_artifact_and_matches_pycocotools(quantized: Path, shared_data: Path, cli_runner) -> None:
    import contextlib
    import io

    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    result = cli_runner.invoke(cli, ["eval", str(quantized), *_coco(shared_data), "--all"])
    assert result.exit_code == 0, result.output
    report = json.loads((quantized / "eval.json").read_text())
    rows = {r["artifact"]: r for r in report["rows"]}
    assert list(rows) == ["eager", "onnx", "int8", "fp16"] and report["people"] == 12
    assert rows["eager"]["AP"] > 0.55  # the trained net finds these people (published COCO val AP 58.1 at 128x96)
    assert abs(rows["onnx"]["dAP"]) < 0.01
    assert rows["int8"]["dAP"] >= -2.0 and abs(rows["fp16"]["dAP"]) <= 0.5
    assert all(rows[k]["passed"] for k in ("onnx", "int8", "fp16"))
    # the same predictions scored by pycocotools directly give the same numbers
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(shared_data / "coco" / "test_coco.json"))
        for key in ("eager", "int8"):
            ev = COCOeval(gt, gt.loadRes(str(quantized / f"eval.{key}.results.json")), "keypoints")
            ev.params.imgIds = sorted({a["image_id"] for a in gt.dataset["annotations"]})
            ev.evaluate()
            ev.accumulate()
            ev.summarize()
            assert rows[key]["AP"] == pytest.approx(ev.stats[0], abs=1e-4)
            assert rows[key]["AR"] == pytest.approx(ev.stats[5], abs=1e-4)
    manifest = json.loads((quantized / "manifest.json").read_text())
    assert manifest["eval"]["rows"]["int8"]["AP"] == rows["int8"]["AP"]


def test_broken_int8_fails_every_gate(trained_128_bundle: Path, shared_data: Path, calib_dir: Path, tmp_path: Path,
                                      cli_runner) -> None:
    """int8 calibrated on one tiny random image: quantize (crop gate) and validate (AP gate) exit 1."""
    tiny = tmp_path / "tiny"
    tiny.mkdir()
    from PIL import Image

    Image.fromarray(np.random.default_rng(0).integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(tiny / "t.png")
    bundle = Path(shutil.copytree(trained_128_bundle, tmp_path / "tp"))
    result = cli_runner.invoke(cli, ["quantize", str(bundle), "--precision", "int8", "--calib-dir", str(tiny),
                                     "--backend", "ort", "--no-sensitivity", "--val-dir", str(calib_dir)])
    assert result.exit_code == 1, result.output
    assert "FAIL cosine" in result.output  # of the person crops' heatmaps (keypoint agreement alone misses it)
    result = cli_runner.invoke(cli, ["validate", str(bundle), *_coco(shared_data), "--backends", "ort",
                                     "--no-localize"])
    assert result.exit_code == 1, result.output
    rows = {r["target"]: r for r in json.loads((bundle / "parity.json").read_text())["validate"]["rows"]}
    assert rows["onnx"]["passed"] is True
    assert rows["int8"]["pose"]["mode"] == "coco-ap" and rows["int8"]["pose"]["gated"]["ap_drop"] > 2.0
    assert any(f.startswith("AP drop") for f in rows["int8"]["failures"])


def test_calibrating_on_the_evaluation_images_is_refused(trained_128_bundle: Path, shared_data: Path,
                                                         cli_runner) -> None:
    result = cli_runner.invoke(cli, ["quantize", str(trained_128_bundle), "--precision", "int8", "--calib-dir",
                                     str(shared_data / "coco"), *_coco(shared_data)])
    assert result.exit_code == 2
    assert "also an evaluation image of test_coco.json" in result.output
