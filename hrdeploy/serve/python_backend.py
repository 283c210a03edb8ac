"""Triton Python-backend models of the keypoint pipeline ensemble that `hrdeploy triton-repo --pipeline` writes.

Each model's `1/model.py` in the repository is one import line (`from hrdeploy.serve.python_backend import
PreprocessModel as TritonPythonModel`), so the running code is this installed module and hrdeploy.pose, not a
copy. Inside tritonserver the Python backend provides `triton_python_backend_utils`; the pipeline settings
(input size, mean/std, keypoints, box limit, decoding) come from the model's config.pbtxt parameters. A
refused request gets a TritonError response with hrdeploy.serve.pipeline's one-line reason; the other
requests of the same execute() call are answered normally.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from hrdeploy.serve.pipeline import (
    BOXES,
    CROPS,
    IMAGE,
    KEYPOINTS,
    TRANSFORMS,
    PipelineConfig,
    RequestError,
    postprocess_request,
    preprocess_request,
)

HEATMAPS_PARAMETER = "heatmaps_input"  # postprocess: the name of its heatmap input (the network's output name)


def _pb() -> Any:
    """triton_python_backend_utils (only importable inside tritonserver's Python backend, or a test's stub)."""
    import triton_python_backend_utils

    return triton_python_backend_utils


class _PipelineStep:
    """initialize() reads the PipelineConfig from the parameters; execute() answers each request on its own."""

    def initialize(self, args: dict[str, str]) -> None:
        config = json.loads(args["model_config"])
        self.parameters = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        self.cfg = PipelineConfig.from_parameters(self.parameters)

    def execute(self, requests: list[Any]) -> list[Any]:
        pb = _pb()
        responses = []
        for request in requests:
            def get(name: str, request: Any = request) -> Any:
                tensor = pb.get_input_tensor_by_name(request, name)
                if tensor is None:
                    raise RequestError(f"the request has no {name} input")
                return tensor.as_numpy()

            try:
                outputs = self.step(get)
            except RequestError as err:
                responses.append(pb.InferenceResponse(output_tensors=[], error=pb.TritonError(str(err))))
                continue
            responses.append(pb.InferenceResponse(output_tensors=[pb.Tensor(k, v) for k, v in outputs.items()]))
        return responses

    def step(self, get: Callable[[str], Any]) -> dict[str, Any]:
        raise NotImplementedError

    def finalize(self) -> None:
        pass


class PreprocessModel(_PipelineStep):
    """IMAGE (BYTES [1]) + BOXES (FP32 [N, 4]) -> CROPS (FP32 [N, 3, H, W]) + TRANSFORMS (FP64 [N, 2, 3])."""

    def step(self, get: Callable[[str], Any]) -> dict[str, Any]:
        crops, transforms = preprocess_request(get(IMAGE), get(BOXES), self.cfg)
        return {CROPS: crops, TRANSFORMS: transforms}


class PostprocessModel(_PipelineStep):
    """Heatmaps (FP32 [N, K, h, w], the network's output) + TRANSFORMS -> KEYPOINTS (FP32 [N, K, 3])."""

    def step(self, get: Callable[[str], Any]) -> dict[str, Any]:
        return {KEYPOINTS: postprocess_request(get(self.parameters[HEATMAPS_PARAMETER]), get(TRANSFORMS), self.cfg)}
