"""Test stand-in for Triton's onnxruntime backend (absent from PyTriton's tritonserver): a Python-backend model
that runs REPO/<network>/1/model.onnx with onnxruntime on each batch Triton's dynamic batcher forms.

Copied as model.py into the network's directory of a `triton-repo --pipeline` repository by the ensemble test,
so the written preprocess, postprocess and ensemble configs run on a real tritonserver here.
"""

import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):  # noqa: ANN001, ANN201
        config = json.loads(args["model_config"])
        self.input, self.output = config["input"][0]["name"], config["output"][0]["name"]
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        self.session = ort.InferenceSession(str(Path(__file__).with_name("model.onnx")), options,
                                            providers=["CPUExecutionProvider"])

    def execute(self, requests):  # noqa: ANN001, ANN201
        xs = [pb_utils.get_input_tensor_by_name(r, self.input).as_numpy() for r in requests]
        y = self.session.run([self.output], {self.input: np.concatenate(xs)})[0]
        bounds = np.cumsum([0, *(len(x) for x in xs)])
        return [pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor(self.output, y[a:b])])
                for a, b in zip(bounds[:-1], bounds[1:], strict=True)]
