"""Bad input, table-driven, across every command: exit 2, one `error:` line, no traceback, nothing written
or deleted outside the places the user named (the inputs here are never touched), and no expensive work.

The fixture world is hand-made (tiny bundles: a manifest and a one-conv ONNX), so the table runs in seconds.
"""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

import numpy as np
import onnx
import pytest
from PIL import Image
from tiny_bundles import tiny_bundle, tiny_coco, tiny_onnx

from hrdeploy.bundle import Bundle
from hrdeploy.cli import COMMANDS, cli


class Evil:
    def __reduce__(self):
        return (print, ("pwned",))


def _edit(root: Path, change) -> None:
    m = json.loads((root / "manifest.json").read_text())
    change(m)
    (root / "manifest.json").write_text(json.dumps(m))


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    w = tmp_path_factory.mktemp("world")
    kw = {"name": "lite_hrnet_18", "height": 64, "width": 64}
    tiny_bundle(w / "good", **kw)
    for name, content in (("trunc", None), ("random", os.urandom(4096)), ("empty_onnx", b"")):
        root = tiny_bundle(w / name, **kw)
        data = (root / "model.onnx").read_bytes()
        (root / "model.onnx").write_bytes(data[: len(data) // 2] if content is None else content)
    for name, text in (("list_manifest", "[]"), ("bad_json", "{not json"), ("no_manifest", None)):
        root = tiny_bundle(w / name, **kw)
        if text is None:
            (root / "manifest.json").unlink()
        else:
            (root / "manifest.json").write_text(text)
    edits = {
        "no_input": lambda m: m.pop("input"),
        "foreign": lambda m: m.update(format="other-tool/3"),
        "str_height": lambda m: m["input"].update(height="abc"),
        "no_artifacts": lambda m: m.update(artifacts={}),
        "abs_path": lambda m: m["artifacts"]["onnx"].update(file="/etc/passwd"),
        "dotdot": lambda m: m["artifacts"]["onnx"].update(file="../outside.onnx"),
        "symlink": lambda m: m["artifacts"]["onnx"].update(file="link.onnx"),
        "int4": lambda m: m["artifacts"]["onnx"].update(precision="int4"),
        "huge_height": lambda m: m["input"].update(height=10**30),
        "big_height": lambda m: m["input"].update(height=10**5),
        "stage_str": lambda m: m.update(stages={"quantize": {"calib_samples": "abc"}}),
        # a manifest that no longer describes its ONNX (valid numbers, another model)
        "other_size": lambda m: m["input"].update(height=128, shape=["batch", 3, 128, 64]),
        "other_input": lambda m: m["input"].update(name="image"),
        "other_output": lambda m: m.update(outputs=[{"name": "heatmaps_tags", "stride": 4, "channels": 34}]),
    }
    for name, change in edits.items():
        _edit(tiny_bundle(w / name, **kw), change)
    tiny_onnx(w / "outside.onnx", height=64, width=64)
    os.symlink(w / "outside.onnx", w / "symlink" / "link.onnx")
    # ONNX files whose external weights lie outside their folder (or are missing)
    for name, location in (("ext_dotdot", "../outside.bin"), ("ext_abs", str(w / "outside.bin")),
                           ("ext_link", "link.bin"), ("ext_missing", "gone.bin")):
        root = tiny_bundle(w / name, **kw)
        model = onnx.load(root / "model.onnx")
        onnx.save_model(model, root / "model.onnx", save_as_external_data=True, location="w.bin", size_threshold=0)
        model = onnx.load(root / "model.onnx", load_external_data=False)
        for t in model.graph.initializer:
            for entry in t.external_data:
                if entry.key == "location":
                    entry.value = location
        onnx.save(model, root / "model.onnx")
        Bundle.open(root).record_artifact("onnx", "model.onnx", precision="fp32")
    (w / "outside.bin").write_bytes((w / "ext_abs" / "w.bin").read_bytes())
    os.symlink(w / "outside.bin", w / "ext_link" / "link.bin")
    (w / "missing_file").mkdir()
    tiny_bundle(w / "missing_file", **kw)
    (w / "missing_file" / "model.onnx").unlink()

    (w / "notes").mkdir()
    (w / "notes" / "notes.txt").write_text("my notes\n")
    (w / "notes" / "code.py").write_text("print('mine')\n")
    (w / "afile").write_text("a plain file\n")
    (w / "empty_dir").mkdir()

    (w / "notes.txt").write_text("hello, these are notes, not weights\n")
    (w / "evil.pth").write_bytes(pickle.dumps({"weights": Evil()}, protocol=2))
    (w / "empty.pth").write_bytes(b"")
    (w / "text.safetensors").write_text("not safetensors")

    presets = {
        "batch_abc": "export:\n  batch: abc\n",
        "opset_str": "export:\n  opset: nineteen\n",
        "opset_quoted": 'export:\n  opset: "19"\n',
        "simplify_str": 'export:\n  simplify: "false"\n',
        "dynamic_int": "export:\n  dynamic_batch: 1\n",
        "unknown_key": "export:\n  bacth: 4\n",
        "unknown_section": "deploy:\n  batch: 4\n",
        "list": "- export\n- batch\n",
        "section_list": "export:\n  - batch\n",
        "broken": "export: [unclosed\n",
        "input_size_bad": "export:\n  input_size: big\n",
        "build_str": 'build:\n  max_batch: "8"\n',
        "quantize_bool": "quantize:\n  calib_samples: true\n",
        "batch_huge": "export:\n  batch: 1000000000000\n",
        "size_strs": 'export:\n  input_size: [256, "192"]\n',
        "calib_str": 'quantize:\n  calib_samples: "abc"\n',
        "calib_huge": "quantize:\n  calib_samples: 1000000000000000000000000000000\n",
        "max_batch_huge": "build:\n  max_batch: 1000000000000000000000000000000\n",
        "workspace_inf": "build:\n  workspace: .inf\n",
        "seed_huge": "export:\n  seed: 1000000000000000000000000000000\n",
    }
    (w / "presets").mkdir()
    for name, text in presets.items():
        (w / "presets" / f"{name}.yaml").write_text(text)
    (w / "presets" / "binary.yaml").write_bytes(b"\xff\xfe\x00\x81garbage")

    (w / "img").mkdir()
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (96, 64, 3), dtype=np.uint8)).save(w / "img" / "good.png")
    Image.fromarray(np.zeros((1, 1, 3), np.uint8)).save(w / "one_px.png")
    (w / "tiny_imgs").mkdir()
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(w / "tiny_imgs" / "small.png")
    (w / "text.jpg").write_text("not an image")

    ann = tiny_coco(w / "coco", size=(96, 64))
    good = json.loads(ann.read_text())
    broken_anns = {
        "list": [],
        "no_images": {**good, "images": None},
        "bbox3": {**good, "annotations": [{**good["annotations"][0], "bbox": [1, 2, 3]}]},
        "kps_short": {**good, "annotations": [{**good["annotations"][0], "keypoints": [1, 2, 2]}]},
        "image_no_name": {**good, "images": [{"id": 1}]},
        "no_people": {**good, "annotations": [{**a, "num_keypoints": 0} for a in good["annotations"]]},
    }
    for name, data in broken_anns.items():
        (w / "coco" / f"ann_{name}.json").write_text(json.dumps(data))
    broken_dets = {
        "bbox3": [{"image_id": 1, "category_id": 1, "bbox": [1, 2, 3], "score": 0.9}],
        "dict": {"image_id": 1},
        "score_str": [{"image_id": 1, "bbox": [1, 2, 3, 4], "score": "high"}],
        "huge": [{"image_id": 1, "bbox": [0, 0, 1e308, 1e308], "score": 0.9}],
        "empty": [],
        "other_images": [{"image_id": 999, "bbox": [1, 2, 3, 4], "score": 0.9}],
    }
    for name, data in broken_dets.items():
        (w / "coco" / f"dets_{name}.json").write_text(json.dumps(data))
    return w


# (command line with {w} for the world folder, regex the error line must match)
CASES: list[tuple[str, str]] = [
    # list
    ("list --bogus", "No such option .--bogus"),
    ("list extra", "unexpected extra argument"),
    # export: names, sizes, batches, options
    ("export nosuch_model -o {w}/o1", "unknown model 'nosuch_model'"),
    ("export lite_hrnet_19 -o {w}/o1", "lite_hrnet_18"),
    ("export lite_hrnet_18 -o {w}/o1 --input-size abc", "is not HxW"),
    ("export lite_hrnet_18 -o {w}/o1 --input-size 100x100", "does not divide by"),
    ("export lite_hrnet_18 -o {w}/o1 --input-size 0x0", "does not divide by|must be"),
    ("export lite_hrnet_18 -o {w}/o1 --input-size -64x64", "not HxW|does not divide"),
    ("export lite_hrnet_18 -o {w}/o1 --input-size 8192x8192", "above 4096 pixels"),
    ("export lite_hrnet_18 -o {w}/o1 --batch 0", "Invalid value for '--batch'"),
    ("export lite_hrnet_18 -o {w}/o1 --batch 1000000000000", r"batch must be (an integer in )?1\.\.1024"),
    ("export lite_hrnet_18 -o {w}/o1 --batch x", "is not a valid integer"),
    ("export lite_hrnet_18 -o {w}/o1 --opset 99", "out of range"),
    ("export lite_hrnet_18 -o {w}/o1 --opset nineteen", "is not a valid integer"),
    ("export lite_hrnet_18 -o {w}/o1 --exporter foo", "Invalid value for '--exporter'"),
    ("export lite_hrnet_18 -o {w}/o1 --dataset cityscapes", "has no 'cityscapes' variant"),
    # export: checkpoints
    ("export lite_hrnet_18 -o {w}/o1 --checkpoint {w}/missing.pth", "missing.pth does not exist"),
    ("export lite_hrnet_18 -o {w}/o1 --checkpoint {w}/notes.txt", "is not a PyTorch checkpoint"),
    ("export lite_hrnet_18 -o {w}/o1 --checkpoint {w}/evil.pth", r"would run code .* refused it"),
    ("export lite_hrnet_18 -o {w}/o1 --checkpoint {w}/empty.pth", "is not a PyTorch checkpoint"),
    ("export lite_hrnet_18 -o {w}/o1 --checkpoint {w}/text.safetensors", "not a readable safetensors"),
    # a folder where a file belongs is "a folder", not "does not exist"
    ("export lite_hrnet_18 -o {w}/o1 --checkpoint {w}/empty_dir", "empty_dir is a folder, not a file"),
    ("bench --onnx {w}/empty_dir", "empty_dir is a folder, not a file"),
    ("eval {w}/good --ann {w}/empty_dir --images {w}/coco", "empty_dir is a folder, not a file"),
    # export: presets
    ("export lite_hrnet_18 -o {w}/o1 --config {w}/presets/batch_abc.yaml", "export.batch must be an integer"),
    ("export lite_hrnet_18 -o {w}/o1 --config {w}/presets/opset_str.yaml", "export.opset must be an integer"),
    ("export lite_hrnet_18 -o {w}/o1 --config {w}/presets/opset_quoted.yaml", "export.opset must be an integer"),
    ("export lite_hrnet_18 -o {w}/o1 --config {w}/presets/simplify_str.yaml", "export.simplify must be true or"),
    ("export lite_hrnet_18 -o {w}/o1 --config {w}/presets/dynamic_int.yaml", "dynamic_batch must be true or"),
    ("export lite_hrnet_18 -o {w}/o1 --config {w}/presets/unknown_key.yaml", "unknown key 'bacth'"),
    ("export lite_hrnet_18 -o {w}/o1 --config {w}/presets/unknown_section.yaml", "unknown section 'deploy'"),
    ("export lite_hrnet_18 -o {w}/o1 --config {w}/presets/list.yaml", "must be a mapping"),
    ("export lite_hrnet_18 -o {w}/o1 --config {w}/presets/section_list.yaml", "section 'export' must be a mapping"),
    ("export lite_hrnet_18 -o {w}/o1 --config {w}/presets/broken.yaml", "cannot read config"),
    ("export lite_hrnet_18 -o {w}/o1 --config {w}/presets/binary.yaml", "cannot read config"),
    ("export lite_hrnet_18 -o {w}/o1 --config {w}/presets/input_size_bad.yaml", "is not HxW"),
    ("export lite_hrnet_18 -o {w}/o1 --config {w}/presets/build_str.yaml", "build.max_batch must be an integer"),
    ("export lite_hrnet_18 -o {w}/o1 --config {w}/presets/quantize_bool.yaml", "calib_samples must be an integer"),
    ("export lite_hrnet_18 -o {w}/o1 --config {w}/presets/batch_huge.yaml", r"batch must be .*1\.\.1024"),
    ("export lite_hrnet_18 -o {w}/o1 --config {w}/presets/size_strs.yaml", "is not HxW"),
    ("export lite_hrnet_18 -o {w}/o1 --config {w}/presets/missing.yaml", "does not exist"),
    ("export lite_hrnet_18 -o {w}/o1 --config {w}/presets/calib_str.yaml", "calib_samples must be an integer"),
    ("export lite_hrnet_18 -o {w}/o1 --config {w}/presets/calib_huge.yaml", r"calib_samples must be .*1\.\.100000"),
    ("export lite_hrnet_18 -o {w}/o1 --config {w}/presets/max_batch_huge.yaml", r"max_batch must be .*1\.\.1024"),
    ("export lite_hrnet_18 -o {w}/o1 --config {w}/presets/workspace_inf.yaml", "workspace must be a number above 0"),
    ("export lite_hrnet_18 -o {w}/o1 --config {w}/presets/seed_huge.yaml", r"seed must be .*0\.\.4294967295"),
    # export: output paths
    ("export lite_hrnet_18 -o {w}/afile", "is a file; pass a directory"),
    ("export lite_hrnet_18 -o {w}/afile/sub", "is a file, not a folder"),
    ("export lite_hrnet_18 -o {w}/afile/sub/deeper --force", "is a file, not a folder"),
    ("export lite_hrnet_18 -o {w}/notes", "not an hrdeploy bundle"),
    ("export lite_hrnet_18 -o {w}/notes --force", "not an hrdeploy bundle"),
    ("export lite_hrnet_18 -o {w}/good", "already exists; pass --force"),
    ("export lite_hrnet_18 -o . --force", "the current folder or one above it"),
    ("export lite_hrnet_18 -o .. --force", "the current folder or one above it"),
    ("export lite_hrnet_18 -o / --force", "the current folder or one above it"),
    # quantize
    ("quantize {w}/nope --precision fp16", "does not exist"),
    ("quantize {w}/notes --precision fp16", "no manifest.json"),
    ("quantize {w}/list_manifest --precision fp16", "must hold a JSON object, not list"),
    ("quantize {w}/no_input --precision fp16", "input section is missing"),
    ("quantize {w}/trunc --precision fp16", "damaged or was replaced"),
    ("quantize {w}/random --precision fp16", "damaged or was replaced"),
    ("quantize {w}/abs_path --precision fp16", "outside the bundle"),
    ("quantize {w}/dotdot --precision fp16", "outside the bundle"),
    ("quantize {w}/good --precision int4", "precision"),
    ("quantize {w}/good --precision int8 --calib-dir {w}/empty_dir", "holds no images"),
    ("quantize {w}/good --precision int8 --calib-dir {w}/nope", "does not exist"),
    ("quantize {w}/good --precision int8 --calib-dir {w}/afile", "afile is a file, not a folder"),
    ("quantize {w}/good --precision int8 --calib-dir {w}/img --val-samples 0", "val-samples.: 0 is not in"),
    ("quantize {w}/good --precision int8 --calib-dir {w}/img --calib-samples 0", "calib-samples.: 0 is not in"),
    ("quantize {w}/good --precision int8 --calib-dir {w}/tiny_imgs", "at least 16x16"),
    ("quantize {w}/good --precision int8 --calib-dir {w}/img --method bogus", "bogus"),
    ("quantize {w}/stage_str --calib-dir {w}/img", "stages .*quantize.calib_samples must be an integer"),
    ("quantize {w}/huge_height --precision fp16", r"input.height must be an integer in 1\.\.4096"),
    ("validate {w}/big_height", r"input.height must be an integer in 1\.\.4096"),
    ("infer {w}/img/good.png {w}/huge_height --out {w}/pred", r"input.height must be an integer in 1\.\.4096"),
    ("bench {w}/big_height", r"input.height must be an integer in 1\.\.4096"),
    ("validate {w}/other_size", r"takes input input of shape \['\?', 3, 64, 64\], but the manifest's is "
                                r"\[N, 3, 128, 64\]"),
    ("infer {w}/img/good.png {w}/other_size --out {w}/pred", "but the manifest's is .N, 3, 128, 64."),
    ("bench {w}/other_input --backend ort", "takes inputs .'input'., but the manifest's input is 'image'"),
    ("quantize {w}/other_output --precision fp16", "has no output 'heatmaps_tags', which the manifest lists"),
    ("doctor {w}/other_size", "but the manifest's is"),
    # build
    ("build {w}/nope --print-trtexec", "does not exist"),
    ("build {w}/notes --print-trtexec", "no manifest.json"),
    ("build {w}/abs_path --print-trtexec", "outside the bundle"),
    ("build {w}/dotdot --print-trtexec", "outside the bundle"),
    ("build {w}/symlink --print-trtexec", "symlink to .* outside the bundle"),
    ("build {w}/trunc --print-trtexec", "damaged or was replaced"),
    ("build {w}/int4 --print-trtexec", "precision must be one of fp32, fp16, int8"),
    ("build {w}/good --print-trtexec --min-batch 8 --max-batch 2", "min <= opt <= max"),
    ("build {w}/good --print-trtexec --trt 11 --precision-from flags", "TensorRT 11 removed"),
    ("build {w}/good --precision int4", "Invalid value for '--precision'"),
    ("build {w}/afile --print-trtexec", "neither a bundle directory nor an .onnx"),
    ("build {w}/good", "tensorrt|TensorRT|GPU"),
    # doctor
    ("doctor {w}/abs_path", "outside the bundle"),
    ("doctor {w}/dotdot", "outside the bundle"),
    ("doctor {w}/symlink", "outside the bundle"),
    ("doctor {w}/random", "damaged or was replaced"),
    ("doctor {w}/random/model.onnx", "not a readable ONNX model"),
    ("doctor {w}/empty_onnx/model.onnx", "not a (readable|usable) ONNX model"),
    ("doctor {w}/missing.onnx", "does not exist"),
    ("doctor {w}/bad_json", "is not valid JSON"),
    ("doctor {w}/foreign", "not an hrdeploy manifest"),
    ("doctor {w}/str_height", "input.height must be an integer"),
    ("doctor {w}/no_artifacts", "has no ONNX artifact"),
    ("doctor {w}/no_manifest", "no manifest.json"),
    ("doctor {w}/missing_file", "has no ONNX artifact"),
    # external weights: only from files beside the model, for every reader (doctor reads no weights, yet refuses)
    ("doctor {w}/ext_dotdot/model.onnx", r"external file '\.\./outside.bin', outside the model's folder"),
    ("doctor {w}/ext_abs/model.onnx", "outside the model's folder"),
    ("doctor {w}/ext_link/model.onnx", "external file 'link.bin', outside the model's folder"),
    ("doctor {w}/ext_missing/model.onnx", "external file 'gone.bin', which is missing"),
    ("doctor {w}/ext_dotdot", "outside the model's folder"),
    ("validate {w}/ext_abs", "outside the model's folder"),
    ("bench --onnx {w}/ext_dotdot/model.onnx", "outside the model's folder"),
    ("infer {w}/img/good.png {w}/ext_link --out {w}/pred", "outside the model's folder"),
    ("quantize {w}/ext_dotdot --precision fp16", "outside the model's folder"),
    # validate
    ("validate {w}/trunc", "damaged or was replaced"),
    ("validate {w}/random", "damaged or was replaced"),
    ("validate {w}/abs_path", "outside the bundle"),
    ("validate {w}/list_manifest", "must hold a JSON object"),
    ("validate {w}/no_input", "input section is missing"),
    ("validate {w}/good --backends foo", "unknown backend 'foo'"),
    ("validate {w}/good --batch 0", "Invalid value for '--batch'"),
    ("validate {w}/good --batch 1000000000000", r"outside what model.onnx accepts \(batch 1..1024\)"),
    # bench
    ("bench", "give exactly one of"),
    ("bench {w}/good --batch 0", "positive integers"),
    ("bench {w}/good --batch 1000000000000", "above the largest batch"),
    ("bench {w}/good --batch a,b", "positive integers"),
    ("bench {w}/good --backend foo", "unknown backend 'foo'"),
    ("bench {w}/trunc --backend ort", "damaged or was replaced"),
    ("bench {w}/dotdot", "outside the bundle"),
    ("bench --onnx {w}/random/model.onnx", "not a readable ONNX model"),
    ("bench --onnx {w}/missing.onnx", "does not exist"),
    ("bench {w}/good --json {w}/afile/x.json", "is a file, not a folder"),
    ("bench {w}/good --input-size 128x128", "static input size"),
    ("bench --model nosuch_model", "unknown model"),
    # command-line counts are bounded like manifest and preset numbers (torch overflows on a huge thread count)
    ("bench {w}/good --threads 1000000000000", r"--threads.: 1000000000000 is not in the range 1<=x<=256"),
    ("bench {w}/good --iterations 1000000000000000000000", r"--iterations.: .* is not in the range"),
    ("validate {w}/good --threads 1000000000000", r"--threads.: .* is not in the range"),
    ("validate {w}/good --seeded 1000000000000", r"--seeded.: .* is not in the range"),
    ("infer {w}/img/good.png {w}/good --threads 1000000000000 --out {w}/pred", r"--threads.: .* is not in the range"),
    # infer
    ("infer {w}/one_px.png {w}/good --out {w}/pred", "is 1x1 pixels; images must be at least 16x16"),
    ("infer {w}/text.jpg {w}/good --out {w}/pred", "cannot read image"),
    ("infer {w}/missing.png {w}/good --out {w}/pred", "does not exist"),
    ("infer {w}/img/good.png --out {w}/pred", "no model given"),
    ("infer {w}/img/good.png {w}/good --bbox 1,2,3 --out {w}/pred", "is not x,y,w,h"),
    ("infer {w}/img/good.png {w}/good --artifact int8 --out {w}/pred", r"'int8' is not in bundle .* quantize"),
    ("infer {w}/img/good.png {w}/abs_path --out {w}/pred", "outside the bundle"),
    ("infer {w}/img/good.png {w}/trunc --out {w}/pred", "damaged or was replaced"),
    ("infer {w}/img/good.png --onnx {w}/random/model.onnx --out {w}/pred", "not a readable ONNX model"),
    ("infer {w}/img/good.png {w}/good --out {w}/afile", "is a file"),
    ("infer {w}/img/good.png {w}/good --input-size 128x128 --out {w}/pred", "fixed 64x64 input"),
    ("infer {w}/img/good.png --model nosuch_model --out {w}/pred", "unknown model"),
    ("infer {w}/img/good.png {w}/good --model lite_hrnet_18 --out {w}/pred", "--model is for"),
    ("infer {w}/empty_dir {w}/good --out {w}/pred", "neither a bundle"),
    # infer: boxes that are not finite or reach far past the image (they would overflow the crop into NaN)
    ("infer {w}/img/good.png {w}/good --bbox 0,0,1e308,1e308 --out {w}/pred", "reaches more than the image's size"),
    ("infer {w}/img/good.png {w}/good --bbox 0,0,nan,10 --out {w}/pred", "is not 4 finite numbers"),
    ("infer {w}/img/good.png {w}/good --bbox -inf,0,10,10 --out {w}/pred", "is not 4 finite numbers"),
]
if "eval" in COMMANDS:
    CASES += [
        ("eval {w}/abs_path --ann {w}/notes.txt --images {w}/img", "outside the bundle|notes.txt"),
        ("eval {w}/nope --ann {w}/notes.txt --images {w}/img", "does not exist|notes.txt"),
        ("eval {w}/good --ann {w}/missing.json --images {w}/img", "missing.json"),
        # eval: annotation and detection files that are JSON but not COCO
        ("eval {w}/good --ann {w}/notes.txt --images {w}/coco", "cannot read annotation file .*notes.txt"),
        ("eval {w}/good --ann {w}/coco/ann_list.json --images {w}/coco", "not a COCO keypoint file: it holds list"),
        ("eval {w}/good --ann {w}/coco/ann_no_images.json --images {w}/coco", "'images' must be a list"),
        ("eval {w}/good --ann {w}/coco/ann_bbox3.json --images {w}/coco", r"annotations\[0\] bbox must be 4 finite"),
        ("eval {w}/good --ann {w}/coco/ann_kps_short.json --images {w}/coco", r"keypoints must be 51 numbers"),
        ("eval {w}/good --ann {w}/coco/ann_image_no_name.json --images {w}/coco", "images.0. has no 'file_name'"),
        ("eval {w}/good --ann {w}/coco/person_keypoints.json --images {w}/coco --dets {w}/coco/dets_bbox3.json",
         r"detection \[0\] bbox must be 4 finite numbers"),
        ("eval {w}/good --ann {w}/coco/person_keypoints.json --images {w}/coco --dets {w}/coco/dets_dict.json",
         "holds dict, not a list"),
        ("eval {w}/good --ann {w}/coco/person_keypoints.json --images {w}/coco --dets {w}/coco/dets_score_str.json",
         "detection .0. score is 'high'"),
        ("eval {w}/good --ann {w}/coco/person_keypoints.json --images {w}/coco --dets {w}/coco/dets_huge.json",
         "reaches more than the image's size"),
        ("eval {w}/good --ann {w}/coco/person_keypoints.json --images {w}/coco --dets {w}/coco/dets_empty.json",
         "hold no person box on the images of person_keypoints.json"),
        ("eval {w}/good --ann {w}/coco/person_keypoints.json --images {w}/coco --dets {w}/coco/dets_other_images.json",
         "hold no person box"),
        ("eval {w}/good --ann {w}/coco/person_keypoints.json --images {w}/coco --dets {w}/coco/dets_bbox3.json "
         "--min-det-score 2", "bbox must be 4 finite numbers"),
        ("eval {w}/good --ann {w}/coco/ann_no_people.json --images {w}/coco", "has no person with labelled keypoints"),
    ]

# the INT8 accuracy search's numbers
CASES += [
    ("quantize {w}/good --precision int8 --calib-dir {w}/img --max-ap-drop -1", "max-ap-drop.: -1.0 is not in"),
    ("quantize {w}/good --precision int8 --calib-dir {w}/img --max-ap-drop abc", "'abc' is not a valid float"),
    ("quantize {w}/good --precision int8 --calib-dir {w}/img --tune-share 1.5", "tune-share.: 1.5 is not in"),
    ("quantize {w}/good --precision int8 --calib-dir {w}/img --min-oks 0", "min-oks.: 0.0 is not in"),
    ("quantize {w}/good --precision int8 --calib-dir {w}/img --search", "--search picks INT8 layers"),
    ("quantize {w}/good --precision fp16 --equalize", "--equalize changes how conv inputs are quantized"),
    ("quantize {w}/good --precision fp16 --equalize-dense", "--equalize-dense changes how conv inputs are"),
    ("quantize {w}/good --precision fp16 --shift-activations", "--shift-activations changes how conv inputs are"),
]


def _snapshot(*roots: Path) -> dict[str, tuple]:
    """Every path under `roots` with its kind, size and mtime (symlinks not followed)."""
    out = {}
    for root in roots:
        for dirpath, dirnames, filenames in os.walk(root):
            for name in dirnames + filenames:
                p = Path(dirpath) / name
                st = p.lstat()
                out[str(p)] = (st.st_mode, st.st_size, st.st_mtime_ns)
    return out


def test_table_is_large_enough() -> None:
    assert len(CASES) >= 60
    assert {c.split()[0] for c, _ in CASES} >= {"list", "export", "quantize", "build", "doctor", "validate",
                                                 "bench", "infer"}


@pytest.mark.parametrize(("line", "message"), CASES, ids=[c for c, _ in CASES])
def test_bad_input(world: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, cli_runner, line: str,
                   message: str, capfd) -> None:
    import re
    import shlex

    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    args = shlex.split(line.format(w=world))
    before = _snapshot(world, cwd)
    result = cli_runner.invoke(cli, args, prog_name="hrdeploy")
    lines = [x for x in result.stderr.splitlines() if x.strip()]  # stdout may hold step lines before it
    assert result.exit_code == 2, result.output
    assert not isinstance(result.exception, Exception) or isinstance(result.exception, SystemExit), result.exception
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    assert "Traceback" not in result.output and "error" not in result.stdout.lower()
    assert re.search(message, lines[0]), lines[0]
    assert not re.search(r"`[^`]*`\s*--\w", lines[0]), f"an option outside the command it belongs to: {lines[0]}"
    assert _snapshot(world, cwd) == before, "a bad input changed files"
    assert "pwned" not in capfd.readouterr().out


def _deny(monkeypatch: pytest.MonkeyPatch, locked: Path) -> None:
    """Make `locked` a folder this process may neither list nor look into (as `chmod 0` does for a user who is
    not root; the tests may run as root, who passes any permission)."""
    real_stat, real_listdir, real_scandir = os.stat, os.listdir, os.scandir

    def refuse(path) -> PermissionError:  # noqa: ANN001
        return PermissionError(13, "Permission denied", os.fspath(path))

    def stat(path, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
        if isinstance(path, (str, os.PathLike)) and locked in Path(os.path.abspath(path)).parents:
            raise refuse(path)
        return real_stat(path, *args, **kwargs)

    def listdir(path="."):  # noqa: ANN001, ANN202
        if isinstance(path, (str, os.PathLike)) and Path(os.path.abspath(path)) == locked:
            raise refuse(path)
        return real_listdir(path)

    def scandir(path="."):  # noqa: ANN001, ANN202
        if isinstance(path, (str, os.PathLike)) and Path(os.path.abspath(path)) == locked:
            raise refuse(path)
        return real_scandir(path)

    monkeypatch.setattr(os, "stat", stat)
    monkeypatch.setattr(os, "listdir", listdir)
    monkeypatch.setattr(os, "scandir", scandir)


@pytest.mark.parametrize("line", [
    "export lite_hrnet_18 -o {locked}",
    "export lite_hrnet_18 -o {locked}/sub",
    "export lite_hrnet_18 -o {locked}/sub --force",
    "infer {w}/img/good.png {w}/good --out {locked}/pred",
    "bench {w}/good --json {locked}/bench.json",
    "infer {locked} {w}/good --out {w}/pred",
    "quantize {w}/good --precision int8 --calib-dir {locked}",
])
def test_a_folder_the_user_cannot_read(world: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, cli_runner,
                                       line: str) -> None:
    """A folder the user may not read, as an output (or a place under it) or as a folder of images: one error
    line naming it, nothing written."""
    import shlex

    locked = tmp_path / "locked"
    locked.mkdir()
    (locked / "theirs.txt").write_text("not yours\n")
    before = _snapshot(world, tmp_path)
    args = shlex.split(line.format(w=world, locked=locked))
    if os.geteuid() == 0:
        _deny(monkeypatch, locked)
        result = cli_runner.invoke(cli, args, prog_name="hrdeploy")
        monkeypatch.undo()
    else:
        locked.chmod(0)
        try:
            result = cli_runner.invoke(cli, args, prog_name="hrdeploy")
        finally:
            locked.chmod(0o755)
    lines = [x for x in result.stderr.splitlines() if x.strip()]
    assert result.exit_code == 2, result.output
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Permission denied" in lines[0], result.output
    assert str(locked) in lines[0]
    assert _snapshot(world, tmp_path) == before
