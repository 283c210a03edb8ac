"""INT8 explicit quantization: a Q/DQ ONNX graph as TensorRT consumes it.

Conventions (TensorRT "Explicit Quantization" guide; deployment-facts.md): int8 weights per output
channel, symmetric; int8 activations per tensor, symmetric (zero point 0); Q/DQ only on the inputs of
Conv/ConvTranspose/Gemm/MatMul (TensorRT fuses DQ->Conv->(bias, BN, ReLU) and propagates scales through
pooling/resize/concat), never on graph outputs; biases stay float.

Two backends:
- `modelopt`: NVIDIA ModelOpt ONNX PTQ, `modelopt.onnx.quantization.quantize(quantize_mode="int8")`,
  which also follows TensorRT's fusion rules (e.g. residual-add inputs), with high_precision_dtype="fp32"
  so that the non-quantized part stays fp32 (its default would also cast it to fp16).
- `ort`: onnxruntime.quantization.quantize_static in QDQ format with per_channel=True, QInt8 activations
  and weights, ActivationSymmetric/WeightSymmetric, OpTypesToExcludeOutputQuantization for every
  quantized op type (no Q/DQ on their outputs) and QuantizeBias=False, after onnxruntime's own
  pre-processing (shape inference, Conv+BN folding). Calibration ranges are symmetric; onnxruntime's entropy
  calibrator (128 histogram bins) lands on about the max range, and with 2048 bins it takes minutes per
  model, so percentile (99.99th) is this backend's default.
Both backends leave wide-range depthwise convs in fp32 unless told otherwise (`wide_range_depthwise`).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from hrdeploy.errors import UserError
from hrdeploy.precision import graph as G
from hrdeploy.precision.equalize import depthwise_nodes, equalize_dense_convs, equalize_depthwise, input_channel_ranges
from hrdeploy.precision.shift import shift_activations

METHODS = ("entropy", "max", "percentile")
DEFAULT_METHOD = {"ort": "percentile", "modelopt": "entropy"}
PERCENTILE = 99.99
# A depthwise conv mixes no channels, so with one activation scale per tensor (all TensorRT allows) every
# channel much quieter than the loudest is rounded away and the folded BN scales the noise back up.
# Depthwise convs whose input's loudest channel exceeds the median channel's range this many times stay
# fp32 (--no-auto-exclude turns this off). Measured on Lite-HRNet-18: see docs/precision.md.
DW_RANGE_RATIO = 8.0
ORT_OP_TYPES = ["Conv", "ConvTranspose", "Gemm", "MatMul"]


def wide_range_depthwise(
    model: onnx.ModelProto, data_batches: list[np.ndarray], ratio: float = DW_RANGE_RATIO
) -> dict[str, float]:
    """Depthwise convs (group == channels > 1) whose input channel ranges spread more than `ratio`.

    Returns node name -> (max |x| over the tensor) / (median over channels of max |x| per channel).
    """
    dws = depthwise_nodes(model)
    if not dws:
        return {}
    per_channel = input_channel_ranges(model, [n.input[0] for n in dws], data_batches)
    result = {}
    for node in dws:
        pc = per_channel[node.input[0]]
        spread = float(pc.max() / max(float(np.median(pc)), 1e-12))
        if spread > ratio:
            result[node.name] = round(spread, 1)
    return result


@contextlib.contextmanager
def _cwd(folder: Path) -> Iterator[None]:
    """Run in `folder`: onnxruntime's symbolic shape inference saves `sym_shape_infer_temp.onnx` and a
    `<uuid>.data` into the working folder when it gives up, which must not be the user's."""
    before = os.getcwd()
    os.chdir(folder)
    try:
        yield
    finally:
        os.chdir(before)


def _ort_preprocess(src: Path, dst: Path) -> onnx.ModelProto:
    """onnxruntime's recommended pre-processing (symbolic shapes, basic fusions); plain copy if it fails."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    src, dst = src.absolute(), dst.absolute()
    with _cwd(dst.parent):
        try:
            quant_pre_process(os.fspath(src), os.fspath(dst))
        except Exception:  # noqa: BLE001 - symbolic shape inference gives up on some graphs
            try:
                quant_pre_process(os.fspath(src), os.fspath(dst), skip_symbolic_shape=True)
            except Exception:  # noqa: BLE001
                onnx.save(onnx.load(os.fspath(src)), os.fspath(dst))
    model = G.ensure_node_names(onnx.load(os.fspath(dst)))
    onnx.save(model, os.fspath(dst))
    return model


# hrdeploy's calibration method -> onnxruntime's CalibrationMethod member
ORT_CALIBRATION = {"entropy": "Entropy", "max": "MinMax", "percentile": "Percentile"}
# Symmetric INT8 as TensorRT takes it: no bias quantization, no Q/DQ on the outputs of the quantized ops.
ORT_EXTRA_OPTIONS = {
    "ActivationSymmetric": True,
    "WeightSymmetric": True,
    "CalibTensorRangeSymmetric": True,
    "OpTypesToExcludeOutputQuantization": list(ORT_OP_TYPES),
    "QuantizeBias": False,
    "MatMulConstBOnly": True,
    "CalibPercentile": PERCENTILE,
}


def _calibration_reader(data_batches: list[np.ndarray], input_name: str) -> Any:
    """onnxruntime's CalibrationDataReader over the calibration batches."""
    from onnxruntime.quantization import CalibrationDataReader

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self._it = iter(data_batches)

        def get_next(self) -> dict[str, np.ndarray] | None:
            batch = next(self._it, None)
            return None if batch is None else {input_name: batch}

        def __len__(self) -> int:
            return len(data_batches)

    return Reader()


def quantize_ort(
    src: str | os.PathLike,
    dst: str | os.PathLike,
    data_batches: list[np.ndarray],
    method: str,
    exclude_patterns: list[str],
    src_scopes: dict[str, str],
    workdir: str | os.PathLike,
    auto_exclude: bool = True,
    equalize: bool = False,
    equalize_dense: bool = False,
    shift: bool = False,
) -> dict[str, Any]:
    """Q/DQ graph by onnxruntime quantize_static, with `equalize` after depthwise input equalization, with
    `equalize_dense` after dense-conv input equalization (hrdeploy.precision.equalize), with `shift` its
    non-negative conv inputs shifted onto all 256 codes (hrdeploy.precision.shift). Returns the backend's
    record (excluded nodes etc.)."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    workdir = Path(workdir)
    pre_path = workdir / "preprocessed.onnx"
    pre = _ort_preprocess(Path(src), pre_path)
    scopes = {**G.node_scopes(pre), **{k: v for k, v in src_scopes.items() if v}}
    excluded = sorted({n for names in G.match_nodes(pre, exclude_patterns, scopes).values() for n in names})
    runtime_weights = G.non_constant_weight_convs(pre)
    equalized: dict[str, str] = {}
    equalized_dense: dict[str, str] = {}
    if equalize:
        pre, equalized = equalize_depthwise(pre, data_batches, skip=set(excluded))
    if equalize_dense:
        pre, equalized_dense = equalize_dense_convs(pre, data_batches, skip=set(excluded))
    if equalize or equalize_dense:
        onnx.save(pre, os.fspath(pre_path))
        scopes = {**G.node_scopes(pre), **scopes}
    auto = wide_range_depthwise(pre, data_batches) if auto_exclude else {}

    with _cwd(workdir):  # calibration writes augmented models; keep anything stray out of the user's folder
        quantize_static(
            os.fspath(pre_path.absolute()),
            os.fspath(Path(dst).absolute()),
            _calibration_reader(data_batches, pre.graph.input[0].name),
            quant_format=QuantFormat.QDQ,
            op_types_to_quantize=list(ORT_OP_TYPES),
            per_channel=True,
            activation_type=QuantType.QInt8,
            weight_type=QuantType.QInt8,
            nodes_to_exclude=sorted(set(excluded) | set(runtime_weights) | set(auto)),
            calibrate_method=getattr(CalibrationMethod, ORT_CALIBRATION[method]),
            extra_options=ORT_EXTRA_OPTIONS,
        )
    # quantize_static puts one Q/DQ pair on a tensor for all its consumers, so a residual Add, ReLU or Slice that
    # reads a conv's input would read it rounded to INT8 too: only the quantized ops keep reading through Q/DQ
    qdq = onnx.load(os.fspath(dst))
    qdq = G.bypass_qdq(qdq, {n.name for n in qdq.graph.node if n.op_type in ORT_OP_TYPES})
    if shift:
        height, width = (d.dim_value for d in pre.graph.input[0].type.tensor_type.shape.dim[2:4])
        if not (height and width):
            raise UserError("--shift-activations adds back a map of the input's size: it needs a fixed input "
                            "height and width (export without dynamic spatial axes), or drop it")
        qdq, _ = shift_activations(qdq, (height, width))
    onnx.save(qdq, os.fspath(dst))
    return {
        "converter": "onnxruntime.quantization.quantize_static",
        "excluded_nodes": excluded,
        "auto_excluded": auto,
        "equalized": equalized,
        "equalized_dense": equalized_dense,
        "runtime_weight_convs": runtime_weights,
        "float_reference": os.fspath(pre_path),
        "scopes": scopes,
        "options": {"per_channel": True, "activation_symmetric": True, "quantize_bias": False,
                    "op_types": ORT_OP_TYPES, "percentile": PERCENTILE if method == "percentile" else None},
    }


def quantize_modelopt(
    src: str | os.PathLike,
    dst: str | os.PathLike,
    data_batches: list[np.ndarray],
    method: str,
    exclude_patterns: list[str],
    src_scopes: dict[str, str],
    workdir: str | os.PathLike,
    auto_exclude: bool = True,
) -> dict[str, Any]:
    """Q/DQ graph by NVIDIA ModelOpt ONNX PTQ (int8, CPU calibration, fp32 elsewhere)."""
    import re

    from modelopt.onnx.quantization import quantize

    if method not in ("entropy", "max"):
        raise UserError(f"ModelOpt calibrates with entropy or max, not {method!r}; use --method entropy|max "
                        "or --backend ort")
    model = G.ensure_node_names(onnx.load(os.fspath(src)))
    named = Path(workdir) / "named.onnx"
    onnx.save(model, named)
    scopes = {**G.node_scopes(model), **{k: v for k, v in src_scopes.items() if v}}
    excluded = sorted({n for names in G.match_nodes(model, exclude_patterns, scopes).values() for n in names})
    runtime_weights = G.non_constant_weight_convs(model)
    auto = wide_range_depthwise(model, data_batches) if auto_exclude else {}
    skip = sorted(set(excluded) | set(auto))
    quantize(
        onnx_path=os.fspath(named),
        quantize_mode="int8",
        calibration_data={model.graph.input[0].name: np.concatenate(data_batches)},
        calibration_method=method,
        calibration_eps=["cpu"],
        nodes_to_exclude=[f"^{re.escape(n)}$" for n in skip] or None,
        high_precision_dtype="fp32",
        output_path=os.fspath(dst),
        log_level="WARNING",
    )
    return {
        "converter": "modelopt.onnx.quantization",
        "excluded_nodes": excluded,
        "auto_excluded": auto,
        "runtime_weight_convs": runtime_weights,
        "float_reference": os.fspath(named),
        "scopes": scopes,
        "options": {"high_precision_dtype": "fp32", "calibration_eps": ["cpu"]},
    }


def qdq_summary(model: onnx.ModelProto) -> dict[str, Any]:
    """Facts about a Q/DQ graph: quantized / unquantized convs, zero points, per-channel weights, outputs."""
    from onnx import numpy_helper

    consts = {init.name: init for init in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "Constant":
            for attr in node.attribute:
                if attr.name == "value":
                    consts[node.output[0]] = attr.t
    prod = G.producers(model)
    users_of = G.consumers(model)
    quantized, plain = G.conv_quant_status(model)
    nonzero_zp = 0
    per_channel_weights = 0
    per_tensor_weights = 0
    int8 = 0
    for node in model.graph.node:
        if node.op_type not in ("QuantizeLinear", "DequantizeLinear"):
            continue
        if len(node.input) > 2 and node.input[2] in consts:
            zp = numpy_helper.to_array(consts[node.input[2]])
            nonzero_zp += int(np.any(zp != 0))
            int8 += int(zp.dtype == np.int8)
        if node.op_type == "DequantizeLinear":
            weight_users = [u for u in users_of.get(node.output[0], []) if u.input[1:2] == [node.output[0]]]
            if any(u.op_type in ("Conv", "ConvTranspose") for u in weight_users) and node.input[1] in consts:
                scale = numpy_helper.to_array(consts[node.input[1]])
                if scale.ndim == 1 and scale.size > 1:
                    per_channel_weights += 1
                else:
                    per_tensor_weights += 1
    outputs_quantized = [o.name for o in model.graph.output
                         if o.name in prod and prod[o.name].op_type == "DequantizeLinear"]
    counts = G.count_ops(model)
    return {
        "convs_quantized": len(quantized),
        "convs_unquantized": len(plain),
        "unquantized_convs": plain,
        "quantize_nodes": counts.get("QuantizeLinear", 0),
        "dequantize_nodes": counts.get("DequantizeLinear", 0),
        "nonzero_zero_points": nonzero_zp,
        "int8_zero_points": int8,
        "per_channel_weights": per_channel_weights,
        "per_tensor_weights": per_tensor_weights,
        "outputs_quantized": outputs_quantized,
        "shifted_convs": sum(n.op_type == "Add" and n.name.endswith(G.SHIFT_BACK_SUFFIX) for n in model.graph.node),
    }
