"""The served keypoint pipeline: photos and person boxes in, keypoints out (`serve --pipeline`,
`triton-repo --pipeline`, `loadtest --pipeline`).

Unmarked tests run everywhere. Tests marked `serve` need the serve extra (`make test-serve`); those on real
photos need ../shared/data (the trained PP-TinyPose 128x96 and coco-val) and skip, saying so, without it.
The ensemble that `triton-repo --pipeline` writes runs on PyTriton's own tritonserver binary, with a
Python-backend onnxruntime stand-in for the network (that binary has no onnxruntime backend).
"""

from __future__ import annotations

import importlib.util
import io
import json
import os
import re
import shutil
import sys
import types
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from serve_helpers import BundledTriton, Server, need_serve_extra, one_line_error, running
from tiny_bundles import tiny_bundle

from hrdeploy.cli import cli
from hrdeploy.runtime.factory import open_runner
from hrdeploy.serve.pipeline import (
    BOXES,
    IMAGE,
    KEYPOINTS,
    PipelineConfig,
    RequestError,
    check_boxes,
    decode_request_image,
    postprocess_request,
    preprocess_request,
)

NAME = "wider_naive_lite_hrnet_18"  # the trained PP-TinyPose network of ../shared/data
PIPELINE = f"{NAME}_pipeline"
MAX_BOXES = 16  # coco-val has at most 13 people per photo
TOLERANCE_PX = 0.01


def _png(width: int, height: int, seed: int = 0) -> bytes:
    from PIL import Image

    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return buf.getvalue()


def _bytes(data: bytes) -> np.ndarray:
    return np.array([data], dtype=object)


CFG = PipelineConfig((64, 48), (0.485, 0.456, 0.406), (0.229, 0.224, 0.225), 17, max_boxes=4)


# ------------------------------------------------------------------------------------------ everywhere


def test_pipeline_config_round_trips_through_parameters() -> None:
    dark = PipelineConfig((256, 192), (0.485, 0.456, 0.406), (0.229, 0.224, 0.225), 17, 32, "dark")
    assert PipelineConfig.from_parameters(dark.to_parameters()) == dark
    assert all(isinstance(v, str) for v in dark.to_parameters().values())


def test_boxes_become_xywh_exactly() -> None:
    boxes = np.array([[10.5, 20.25, 60.5, 120.25], [-5, -5, 30, 40]], np.float32)  # partly outside is fine
    assert check_boxes(boxes, (100, 80), 4).tolist() == [[10.5, 20.25, 50.0, 100.0], [-5.0, -5.0, 35.0, 45.0]]


@pytest.mark.parametrize(("boxes", "needle"), [
    (np.zeros((0, 4), np.float32), "holds no box"),
    (np.tile(np.array([[0, 0, 9, 9]], np.float32), (5, 1)), "holds 5 boxes; this server takes at most 4"),
    (np.array([[1, 1, 9, 9]], np.float64), "dtype float64; send float32"),
    (np.array([[1, 1, 9, 9, 9]], np.float32), "shape [1, 5]"),
    (np.array([1, 1, 9, 9], np.float32), "shape [4]"),
    (np.array([[np.nan, 1, 9, 9]], np.float32), "row 0 is [nan, 1.0, 9.0, 9.0]: NaN or infinite"),
    (np.array([[1, 1, 9, 9], [1, 1, np.inf, 9]], np.float32), "row 1 is [1.0, 1.0, inf, 9.0]: NaN or infinite"),
    (np.array([[5, 1, 5, 9]], np.float32), "row 0 (5,1,5,9) has zero or negative width"),
    (np.array([[1, 9, 9, 2]], np.float32), "row 0 (1,9,9,2) has zero or negative width or height"),
    (np.array([[80, 10, 90, 20]], np.float32), "row 0 (80,10,90,20) lies outside the 80x100 image"),
    (np.array([[-20, 10, -1, 20]], np.float32), "lies outside the 80x100 image"),
])
def test_bad_boxes_are_refused_with_the_reason(boxes: np.ndarray, needle: str) -> None:
    with pytest.raises(RequestError) as err:
        check_boxes(boxes, (100, 80), 4)
    assert needle in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize(("image", "needle"), [
    (_bytes(b""), "IMAGE is empty (0 bytes)"),
    (_bytes(b"GIF89a not really"), "cannot read IMAGE (17 bytes) (UnidentifiedImageError)"),
    (_bytes(_png(8, 20)), "is 8x20 pixels; images must be at least 16x16"),
    (np.array([b"a", b"b"], dtype=object), "IMAGE has 2 elements"),
    (np.zeros(1, np.float32), "IMAGE has dtype float32"),
    (np.array([123], dtype=object), "IMAGE holds int"),
    (_bytes(bytes(32 * 1024 * 1024 + 1)), "IMAGE is 33554433 bytes; this server takes photos up to 33554432 bytes"),
])
def test_bad_images_are_refused_with_the_reason(image: np.ndarray, needle: str) -> None:
    with pytest.raises(RequestError) as err:
        decode_request_image(image)
    assert needle in str(err.value)


@pytest.mark.parametrize("post_process", ["default", "dark"])
def test_pipeline_steps_are_hrdeploy_infer(tmp_path: Path, post_process: str) -> None:
    """preprocess -> runner -> postprocess gives `predict` (hrdeploy infer's path) keypoints, bit for bit."""
    from hrdeploy.bundle import Bundle
    from hrdeploy.images import decode_image
    from hrdeploy.pose.pipeline import config_from_bundle, predict

    b = Bundle.open(tiny_bundle(tmp_path / "b"))
    data = _png(120, 90, seed=1)
    boxes = np.array([[10, 5, 70, 85], [50, 20, 119, 60]], np.float32)
    with open_runner(b.artifact("onnx"), 1) as runner:
        crops, transforms = preprocess_request(_bytes(data), boxes, CFG)
        assert crops.shape == (2, 3, 64, 48) and crops.dtype == np.float32 and transforms.shape == (2, 2, 3)
        heatmaps = runner.run(crops)["heatmaps"]
        got = postprocess_request(heatmaps, transforms, replace(CFG, post_process=post_process))
        if post_process == "dark":  # the setting reaches the decoder
            assert np.abs(got - postprocess_request(heatmaps, transforms, CFG))[..., :2].max() > 1.0
        xywh = [(float(x1), float(y1), float(x2 - x1), float(y2 - y1)) for x1, y1, x2, y2 in boxes]
        want = np.stack([p.keypoints for p in predict(runner, decode_image(data), config_from_bundle(b), xywh,
                                                      post_process=post_process)])
    assert got.shape == (2, 17, 3) and got.dtype == np.float32
    np.testing.assert_array_equal(got, want.astype(np.float32))


def test_pipeline_options_are_refused_where_they_do_not_apply(cli_runner, tmp_path: Path) -> None:
    dyn, static = tiny_bundle(tmp_path / "dyn"), tiny_bundle(tmp_path / "static", dynamic_batch=False)
    cases = [
        (["serve", dyn, "--dark"], "configure the keypoint pipeline; add --pipeline"),
        (["serve", static, "--pipeline"], "static batch of 1, but the keypoint pipeline sends each photo's crops"),
        (["serve", dyn, "--pipeline", "--max-batch", "8", "--max-boxes", "9"],
         "--max-boxes 9 is over the network's max batch 8"),
        (["serve", dyn, "--pipeline", "--max-boxes", "0"], "--max-boxes 0: give 1 or more"),
        (["triton-repo", dyn, "-o", tmp_path / "r", "--max-boxes", "4"], "configure the keypoint pipeline"),
        (["triton-repo", static, "-o", tmp_path / "r", "--pipeline"], "re-export with --dynamic-batch"),
        (["triton-repo", dyn, "-o", tmp_path / "r", "--pipeline", "--hrdeploy-source", tmp_path],
         "give an hrdeploy checkout"),
        (["loadtest", "http://127.0.0.1:9", "--model", "m", "--requests", "1", "--images", tmp_path],
         "drive a keypoint pipeline; add --pipeline"),
        (["loadtest", "http://127.0.0.1:9", "--model", "m", "--requests", "1", "--pipeline"],
         "--pipeline needs --images"),
    ]
    for args, needle in cases:
        one_line_error(cli_runner.invoke(cli, [os.fspath(a) for a in args]), needle)
    assert not (tmp_path / "r").exists()


def test_pipeline_batching_fits_a_request_into_one_network_run() -> None:
    from hrdeploy.errors import UserError
    from hrdeploy.serve.batching import plan_pipeline_batching
    from hrdeploy.serve.spec import ServeSpec, TensorSpec

    def spec(batch_range):  # noqa: ANN001, ANN202
        return ServeSpec(bundle=Path("b"), model="m", key="engine_fp16", path=Path("b/m.engine"), kind="engine",
                         precision="fp16", input=TensorSpec("input", "float32", (3, 64, 48)),
                         outputs=(TensorSpec("heatmaps", "float32", (17, 16, 12)),), batch_range=batch_range,
                         static_batch=None)

    def plan(batch_range, max_batch, max_boxes):  # noqa: ANN001, ANN202
        batching, boxes = plan_pipeline_batching(spec(batch_range), max_batch, max_boxes, 100)
        return batching.max_batch_size, boxes

    assert plan((1, None), None, None) == (32, 32)  # dynamic-batch ONNX: 32 boxes, a max batch that holds them
    assert plan((1, None), None, 4) == (8, 4)
    assert plan((1, None), 12, None) == (12, 12)
    assert plan((1, 8), None, None) == (8, 8)  # an engine's profile bounds both
    with pytest.raises(UserError, match="--max-boxes 16 is over the network's max batch 8"):
        plan((1, 8), None, 16)


def test_photo_requests_without_annotations_send_the_whole_photo(tmp_path: Path) -> None:
    from hrdeploy.serve.loadtest import photo_requests

    (tmp_path / "a.png").write_bytes(_png(40, 30))
    (tmp_path / "b.png").write_bytes(_png(20, 50, seed=1))
    reqs, coco = photo_requests(tmp_path)
    assert coco is None and [r.file.name for r in reqs] == ["a.png", "b.png"]
    assert [r.boxes.tolist() for r in reqs] == [[[0, 0, 40, 30]], [[0, 0, 20, 50]]]
    assert reqs[1].data == (tmp_path / "b.png").read_bytes() and reqs[0].people == ()


def test_photo_requests_split_crowded_photos(shared_data: Path) -> None:
    from hrdeploy.serve.loadtest import photo_requests

    folder = shared_data / "coco-val"
    reqs, coco = photo_requests(folder, folder / "person_keypoints.json", max_boxes=5)
    people = [p for r in reqs for p in r.people]
    assert len(people) == len(coco.gt_boxes()) == 149 and max(len(r.boxes) for r in reqs) == 5
    assert len(reqs) > len({p.image_id for p in people}) == 33  # photos with more than 5 people are split
    for r in reqs:
        xywh = np.array([p.box for p in r.people])
        np.testing.assert_allclose(r.boxes, np.concatenate([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], 1), rtol=1e-6)


def _triton_repo(bundle: Path, repo: Path, *extra: str) -> None:
    result = CliRunner().invoke(cli, ["triton-repo", os.fspath(bundle), "-o", os.fspath(repo), "--pipeline",
                                      "--device", "cpu", *extra])
    assert result.exit_code == 0, result.output


def test_triton_repo_pipeline_writes_four_models(tmp_path: Path) -> None:
    bundle, repo = tiny_bundle(tmp_path / "b"), tmp_path / "repo"
    _triton_repo(bundle, repo, "--max-boxes", "6", "--pipeline-instances", "2", "--dark")
    assert sorted(os.fspath(p.relative_to(repo)) for p in repo.rglob("*") if p.is_file()) == [
        "tiny/1/model.onnx", "tiny/config.pbtxt", "tiny_pipeline/config.pbtxt", "tiny_postprocess/1/model.py",
        "tiny_postprocess/config.pbtxt", "tiny_preprocess/1/model.py", "tiny_preprocess/config.pbtxt"]
    assert (repo / "tiny_pipeline" / "1").is_dir()  # Triton wants the version directory of an ensemble too
    assert "max_batch_size: 8" in (repo / "tiny" / "config.pbtxt").read_text()  # max(6 boxes, default 8)
    code = (repo / "tiny_preprocess" / "1" / "model.py").read_text()
    assert "from hrdeploy.serve.python_backend import PreprocessModel as TritonPythonModel" in code
    again = CliRunner().invoke(cli, ["triton-repo", os.fspath(bundle), "-o", os.fspath(repo), "--pipeline"])
    one_line_error(again, "exists; pass --force")


# ------------------------------------------------------------------------------------------ serve extra


def _parse(path: Path):  # noqa: ANN202 - tritonclient's ModelConfig
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    return text_format.Parse(path.read_text(), model_config_pb2.ModelConfig())


def _full_dims(t, batching: bool) -> list[int]:  # noqa: ANN001
    return ([-1] if batching else []) + list(t.dims)


def _compatible(a: list[int], b: list[int]) -> bool:
    return len(a) == len(b) and all(x == y or -1 in (x, y) for x, y in zip(a, b, strict=True))


@pytest.mark.serve
def test_ensemble_config_parses_and_its_tensors_connect(tmp_path: Path) -> None:
    """Every config parses as Triton's ModelConfig, and the ensemble passes Triton's tensor checks
    (ensemble_utils.cc ValidateTensorMapping: each step input mapped once, same data type, dims equal up to -1
    either as written or with the batch dim of a batching model)."""
    need_serve_extra()
    from tritonclient.grpc import model_config_pb2

    bundle, repo = tiny_bundle(tmp_path / "b"), tmp_path / "repo"
    _triton_repo(bundle, repo, "--max-boxes", "6")
    configs = {p.parent.name: _parse(p) for p in repo.glob("*/config.pbtxt")}
    ens = configs["tiny_pipeline"]
    assert (ens.platform, ens.max_batch_size) == ("ensemble", 0)
    string, fp32 = model_config_pb2.DataType.Value("TYPE_STRING"), model_config_pb2.DataType.Value("TYPE_FP32")
    assert [(t.name, t.data_type, list(t.dims)) for t in ens.input] == [(IMAGE, string, [1]), (BOXES, fp32, [-1, 4])]
    assert [(t.name, t.data_type, list(t.dims)) for t in ens.output] == [(KEYPOINTS, fp32, [-1, 17, 3])]
    pre = configs["tiny_preprocess"]
    assert (pre.backend, pre.max_batch_size, pre.instance_group[0].count) == ("python", 0, 4)
    params = {k: v.string_value for k, v in pre.parameters.items()}
    assert PipelineConfig.from_parameters(params) == PipelineConfig((64, 48), (0.485, 0.456, 0.406),
                                                                    (0.229, 0.224, 0.225), 17, 6, "default")
    tensors = {t.name: (t.data_type, _full_dims(t, False)) for t in [*ens.input, *ens.output]}
    steps = [s.model_name for s in ens.ensemble_scheduling.step]
    assert steps == ["tiny_preprocess", "tiny", "tiny_postprocess"]
    for step in ens.ensemble_scheduling.step:
        model = configs[step.model_name]
        batching = model.max_batch_size > 0
        assert sorted(step.input_map) == sorted(t.name for t in model.input)
        for t in model.input:
            dtype, dims = tensors[step.input_map[t.name]]
            assert dtype == t.data_type and (_compatible(dims, list(t.dims)) or
                                             _compatible(dims, _full_dims(t, batching))), (step.model_name, t.name)
        for t in model.output:
            if t.name in step.output_map:
                name = step.output_map[t.name]
                if name in tensors:  # an ensemble output: checked against the ensemble's declaration
                    assert tensors[name] == (t.data_type, _full_dims(t, batching))
                tensors[name] = (t.data_type, _full_dims(t, batching))


def _stub_pb_utils() -> types.ModuleType:
    """The parts of triton_python_backend_utils the pipeline's Python models use."""
    pb = types.ModuleType("triton_python_backend_utils")

    class Tensor:
        def __init__(self, name: str, array: np.ndarray) -> None:
            self._name, self._array = name, array

        def name(self) -> str:
            return self._name

        def as_numpy(self) -> np.ndarray:
            return self._array

    class TritonError:
        def __init__(self, message: str) -> None:
            self._message = message

        def message(self) -> str:
            return self._message

    class InferenceResponse:
        def __init__(self, output_tensors: list, error: TritonError | None = None) -> None:
            self.output_tensors, self.error = output_tensors, error

    pb.Tensor, pb.TritonError, pb.InferenceResponse = Tensor, TritonError, InferenceResponse
    pb.get_input_tensor_by_name = lambda request, name: next((t for t in request if t.name() == name), None)
    return pb


def _load_model_py(path: Path):  # noqa: ANN202 - the module's TritonPythonModel class
    spec = importlib.util.spec_from_file_location(f"model_{path.parent.parent.name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.TritonPythonModel


@pytest.mark.serve
def test_python_backend_models_answer_each_request(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The written model.py files, with Triton's model_config JSON and a stub of triton_python_backend_utils:
    good requests get hrdeploy infer's keypoints, a bad one its own error, in the same execute() call."""
    need_serve_extra()
    from google.protobuf.json_format import MessageToJson

    from hrdeploy.bundle import Bundle
    from hrdeploy.images import decode_image
    from hrdeploy.pose.pipeline import config_from_bundle, predict

    monkeypatch.setitem(sys.modules, "triton_python_backend_utils", _stub_pb_utils())
    pb = sys.modules["triton_python_backend_utils"]
    bundle, repo = tiny_bundle(tmp_path / "b"), tmp_path / "repo"
    _triton_repo(bundle, repo, "--max-boxes", "3")
    models = {}
    for step in ("preprocess", "postprocess"):
        model = _load_model_py(repo / f"tiny_{step}" / "1" / "model.py")()
        model.initialize({"model_config": MessageToJson(_parse(repo / f"tiny_{step}" / "config.pbtxt"),
                                                         preserving_proto_field_name=True)})
        models[step] = model
    data = _png(100, 80, seed=2)
    boxes = np.array([[5, 5, 60, 75], [40, 10, 99, 50]], np.float32)
    requests = [[pb.Tensor(IMAGE, _bytes(data)), pb.Tensor(BOXES, boxes)],
                [pb.Tensor(IMAGE, _bytes(b"\x89PNG broken")), pb.Tensor(BOXES, boxes)],
                [pb.Tensor(IMAGE, _bytes(data)), pb.Tensor(BOXES, np.repeat(boxes, 2, axis=0))],
                [pb.Tensor(IMAGE, _bytes(data))]]
    pre = models["preprocess"].execute(requests)
    assert [r.error.message() if r.error else None for r in pre] == [
        None, "cannot read IMAGE (11 bytes) (UnidentifiedImageError); pass a valid JPEG/PNG/BMP/WebP file",
        "BOXES holds 4 boxes; this server takes at most 3 per request: split the people over several requests",
        "the request has no BOXES input"]
    crops, transforms = (t.as_numpy() for t in pre[0].output_tensors)
    with open_runner(Bundle.open(bundle).artifact("onnx"), 1) as runner:
        heatmaps = runner.run(crops)["heatmaps"]
        xywh = [(float(x1), float(y1), float(x2 - x1), float(y2 - y1)) for x1, y1, x2, y2 in boxes]
        want = np.stack([p.keypoints for p in predict(runner, decode_image(data), config_from_bundle(Bundle.open(
            bundle)), xywh)])
    post = models["postprocess"].execute([[pb.Tensor("heatmaps", heatmaps), pb.Tensor("TRANSFORMS", transforms)],
                                          [pb.Tensor("heatmaps", heatmaps[:1]), pb.Tensor("TRANSFORMS", transforms)]])
    assert post[0].error is None and post[0].output_tensors[0].name() == KEYPOINTS
    np.testing.assert_array_equal(post[0].output_tensors[0].as_numpy(), want.astype(np.float32))
    assert post[1].error.message() == "TRANSFORMS have shape [2, 2, 3]; expected [1, 2, 3]"


# ------------------------------------------------------------------------------------------ real photos


@pytest.fixture(scope="module")
def photos(shared_data: Path):  # noqa: ANN201 - (list of PhotoRequest, CocoKeypoints)
    """The coco-val photos with their annotated people, as `loadtest --pipeline --ann` sends them."""
    from hrdeploy.serve.loadtest import photo_requests

    folder = shared_data / "coco-val"
    if not (folder / "person_keypoints.json").is_file():
        pytest.skip(f"{folder} is absent: the coco-val photos and annotations are needed")
    return photo_requests(folder, folder / "person_keypoints.json", MAX_BOXES)


@pytest.fixture(scope="module")
def infer_keypoints(photos, trained_128_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> list[np.ndarray]:
    """`hrdeploy infer` keypoints [N, K, 3] of each request, given the boxes the server gets: the float32
    x1,y1,x2,y2 as --bbox x,y,w,h (w = x2 - x1 in float64, as the server computes it)."""
    need_serve_extra()
    out = tmp_path_factory.mktemp("infer")
    runner, answers = CliRunner(), []
    for i, req in enumerate(photos[0]):
        args = ["infer", os.fspath(req.file), os.fspath(trained_128_bundle), "--threads", "1", "--out",
                os.fspath(out / str(i))]
        for x1, y1, x2, y2 in req.boxes.astype(np.float64):
            args += ["--bbox", f"{x1!r},{y1!r},{x2 - x1!r},{y2 - y1!r}"]
        result = runner.invoke(cli, args)
        assert result.exit_code == 0, result.output
        people = json.loads((out / str(i) / f"{req.file.stem}.json").read_text())["people"]
        answers.append(np.array([[[k["x"], k["y"], k["score"]] for k in p["keypoints"]] for p in people]))
    return answers


def _send(client_mod, port: int, data: np.ndarray, boxes: np.ndarray, image_type: str = "BYTES",  # noqa: ANN001
          boxes_type: str = "FP32", model: str = PIPELINE) -> np.ndarray:
    client = client_mod.InferenceServerClient(f"127.0.0.1:{port}")
    try:
        image = client_mod.InferInput(IMAGE, list(data.shape), image_type)
        image.set_data_from_numpy(data)
        box = client_mod.InferInput(BOXES, list(boxes.shape), boxes_type)
        box.set_data_from_numpy(boxes)
        return client.infer(model, [image, box]).as_numpy(KEYPOINTS)
    finally:
        client.close()


def _served_equal_infer(http_port: int, grpc_port: int, photos, infer_keypoints) -> None:  # noqa: ANN001
    import tritonclient.grpc as grpcclient
    import tritonclient.http as httpclient

    worst = 0.0
    for client_mod, port in ((httpclient, http_port), (grpcclient, grpc_port)):
        for req, want in zip(photos[0], infer_keypoints, strict=True):
            got = _send(client_mod, port, _bytes(req.data), req.boxes)
            assert got.shape == want.shape == (len(req.boxes), 17, 3) and got.dtype == np.float32
            worst = max(worst, float(np.abs(got[..., :2] - want[..., :2]).max()))
            np.testing.assert_allclose(got[..., 2], want[..., 2], atol=2e-6)  # infer's JSON rounds scores to 1e-6
    assert worst <= TOLERANCE_PX, worst  # infer's JSON rounds x, y to 1e-3 px


_GOOD_BOX = np.array([[100, 50, 300, 400]], np.float32)
BAD_REQUESTS = {  # name -> (IMAGE array, BOXES array, IMAGE datatype, BOXES datatype, needle in the error)
    "undecodable bytes": (_bytes(b"\xff\xd8 not a jpeg"), _GOOD_BOX, "BYTES", "FP32", "cannot read IMAGE ("),
    "empty image": (_bytes(b""), _GOOD_BOX, "BYTES", "FP32", "IMAGE is empty (0 bytes)"),
    "image below 16 px": (_bytes(_png(12, 40)), _GOOD_BOX, "BYTES", "FP32", "is 12x40 pixels"),
    "zero-width box": (None, np.array([[100, 50, 100, 400]], np.float32), "BYTES", "FP32",
                       "row 0 (100,50,100,400) has zero or negative width or height"),
    "negative box": (None, np.array([[300, 400, 100, 50]], np.float32), "BYTES", "FP32",
                     "has zero or negative width or height"),
    "box outside the image": (None, np.array([[5000, 50, 6000, 400]], np.float32), "BYTES", "FP32",
                              "row 0 (5000,50,6000,400) lies outside the"),
    "NaN box": (None, np.array([[100, np.nan, 300, 400]], np.float32), "BYTES", "FP32", "NaN or infinite"),
    "too many boxes": (None, np.repeat(_GOOD_BOX, MAX_BOXES + 1, axis=0), "BYTES", "FP32",
                       f"holds {MAX_BOXES + 1} boxes; this server takes at most {MAX_BOXES}"),
    "FP64 boxes": (None, _GOOD_BOX.astype(np.float64), "BYTES", "FP64", "expects 'FP32'"),
    "boxes of 5 numbers": (None, np.full((2, 5), 50, np.float32), "BYTES", "FP32",
                           "unexpected shape for input 'BOXES'"),
    "FP32 image": (np.zeros(1, np.float32), _GOOD_BOX, "FP32", "FP32", "expects 'BYTES'"),
    "two images": ("two", _GOOD_BOX, "BYTES", "FP32", "unexpected shape for input 'IMAGE'"),
}


def _bad_request_then_good(http_port: int, name: str, photos, infer_keypoints, no_box_needle: str) -> None:  # noqa: ANN001
    import tritonclient.http as httpclient
    from tritonclient.utils import InferenceServerException

    req, want = photos[0][0], infer_keypoints[0]
    if name == "no boxes":
        image, boxes, image_type, boxes_type = None, np.zeros((0, 4), np.float32), "BYTES", "FP32"
        needle = no_box_needle
    else:
        image, boxes, image_type, boxes_type, needle = BAD_REQUESTS[name]
    if image is None:
        image = _bytes(req.data)
    elif isinstance(image, str):
        image = np.array([req.data, req.data], dtype=object)
    with pytest.raises(InferenceServerException) as err:
        _send(httpclient, http_port, image, boxes, image_type, boxes_type)
    assert needle in err.value.message(), err.value.message()
    got = _send(httpclient, http_port, _bytes(req.data), req.boxes)  # the server keeps serving
    assert float(np.abs(got[..., :2] - want[..., :2]).max()) <= TOLERANCE_PX


@pytest.fixture(scope="module")
def pipeline_server(trained_128_bundle: Path, request: pytest.FixtureRequest):  # noqa: ANN201
    """`serve --pipeline` of the trained network; it starts while `hrdeploy infer` computes the reference."""
    server = Server(trained_128_bundle, "--pipeline", "--max-boxes", str(MAX_BOXES), "--pipeline-instances", "3",
                    "--max-queue-delay-us", "2000", model=PIPELINE)
    try:
        request.getfixturevalue("infer_keypoints")
    except BaseException:
        server.stop()
        raise
    with running(server) as s:
        yield s


@pytest.mark.serve
def test_served_keypoints_equal_hrdeploy_infer_over_http_and_grpc(pipeline_server: Server, photos,  # noqa: ANN001
                                                                   infer_keypoints) -> None:
    _served_equal_infer(pipeline_server.http, pipeline_server.grpc, photos, infer_keypoints)


# PyTriton's shared-memory transport refuses an empty tensor before hrdeploy sees the request
PYTRITON_NO_BOX = "memoryview: cannot cast view with zeros in shape or strides"


@pytest.mark.serve
@pytest.mark.parametrize("name", [*BAD_REQUESTS, "no boxes"])
def test_bad_requests_get_triton_errors_and_serving_continues(pipeline_server: Server, name: str, photos,  # noqa: ANN001
                                                              infer_keypoints) -> None:
    _bad_request_then_good(pipeline_server.http, name, photos, infer_keypoints, PYTRITON_NO_BOX)


@pytest.mark.serve
def test_pipeline_load_test_scores_what_the_server_answered(pipeline_server: Server, photos, infer_keypoints,  # noqa: ANN001
                                                            shared_data: Path, tmp_path: Path) -> None:
    """Crops of several requests share network runs, and the AP of the answers is infer's AP."""
    from hrdeploy.parity.coco import results_from_keypoints

    reqs, coco = photos
    people = [p for r in reqs for p in r.people]
    infer_ap = coco.score(results_from_keypoints(people, np.concatenate(infer_keypoints), coco.category_id))["AP"]
    out = tmp_path / "lt.json"
    result = CliRunner().invoke(cli, [
        "loadtest", f"grpc://127.0.0.1:{pipeline_server.grpc}", "--model", PIPELINE, "--pipeline",
        "--images", os.fspath(shared_data / "coco-val"), "--ann", os.fspath(shared_data / "coco-val" /
                                                                              "person_keypoints.json"),
        "--max-boxes", str(MAX_BOXES), "--concurrency", "1,6", "--requests", "40", "--metrics-url",
        f"http://127.0.0.1:{pipeline_server.metrics}/metrics", "--json", os.fspath(out)])
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())
    assert report["target"]["people"] == 149 and report["target"]["network_model"] == NAME
    one, six = report["results"]
    assert [(r["concurrency"], r["requests"], r["failures"]) for r in (one, six)] == [(1, 40, 0), (6, 40, 0)]
    assert one["network_requests_per_batch"] == 1.0  # one client waits for each answer: nothing to batch with
    assert one["network_batch"] > 1.0  # but a photo's people go to the network together
    assert six["network_requests_per_batch"] > 1.0  # several clients: crops of several requests in one run
    for r in (one, six):
        assert r["ap"] == round(infer_ap, 4) and r["people_per_s"] > r["throughput_rps"] > 0
    assert re.search(r"\| 6 \| 40 \| 0 \|", out.with_suffix(".md").read_text())
    network = CliRunner().invoke(cli, ["loadtest", f"http://127.0.0.1:{pipeline_server.http}", "--model", NAME,
                                       "--pipeline", "--images", os.fspath(shared_data / "coco-val"), "--requests",
                                       "1", "--json", os.fspath(out)])
    one_line_error(network, f"model '{NAME}' takes ['input'] and answers ['heatmaps'], not a keypoint pipeline")


@pytest.fixture(scope="module")
def ensemble_server(trained_128_bundle: Path, infer_keypoints, tmp_path_factory: pytest.TempPathFactory):  # noqa: ANN001, ANN201
    """`triton-repo --pipeline` on tritonserver (PyTriton's binary), the network on an onnxruntime stand-in."""
    work = tmp_path_factory.mktemp("ensemble")
    repo = work / "repo"
    _triton_repo(trained_128_bundle, repo, "--max-boxes", str(MAX_BOXES), "--max-queue-delay-us", "2000")
    network = repo / NAME / "config.pbtxt"
    text = network.read_text().replace('backend: "onnxruntime"', 'backend: "python"')
    network.write_text(re.sub(r'default_model_filename: ".*"\n', "", text))
    shutil.copy(Path(__file__).with_name("triton_ort_network.py"), repo / NAME / "1" / "model.py")
    with running(BundledTriton(repo, work)) as server:
        yield server


@pytest.mark.serve
def test_ensemble_keypoints_equal_hrdeploy_infer_over_http_and_grpc(ensemble_server: BundledTriton, photos,  # noqa: ANN001
                                                                    infer_keypoints) -> None:
    _served_equal_infer(ensemble_server.http, ensemble_server.grpc, photos, infer_keypoints)


@pytest.mark.serve
@pytest.mark.parametrize("name", [*BAD_REQUESTS, "no boxes"])
def test_ensemble_bad_requests_get_triton_errors_and_serving_continues(ensemble_server: BundledTriton,  # noqa: ANN001
                                                                       name: str, photos, infer_keypoints) -> None:
    _bad_request_then_good(ensemble_server.http, name, photos, infer_keypoints, "BOXES holds no box")
