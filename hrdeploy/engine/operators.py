"""The TensorRT ONNX parser's operator support, per TensorRT generation (10.x, 11.x).

Follows onnx/onnx-tensorrt `docs/operators.md` as published for TensorRT 10.15 (opset 9..24) and the
TensorRT 11.x ONNX opset guide (opset 9..25; 11.0 added `Swish`). Each supported operator maps to the
tensor types the parser documents for it; unsupported operators are listed apart. Restrictions that the
table states in prose (Resize modes, pooling dims, constant `axes`, zero-point Q/DQ, ...) are checked by
`hrdeploy.engine.compat`, not encoded here.
"""

from __future__ import annotations

from dataclasses import dataclass

GENERATIONS = (10, 11)

_F = ("FP32", "FP16", "BF16")
_FI = (*_F, "INT32", "INT64")
_FIB = (*_FI, "BOOL")
_B = ("BOOL",)

# Supported by the TensorRT 10.x parser (docs/operators.md of the 10.15 release): op -> documented types.
_SUPPORTED_10: dict[str, tuple[str, ...]] = {
    "Abs": _FI, "Acos": _F, "Acosh": _F, "Add": _FI, "And": _B, "ArgMax": _FI, "ArgMin": _FI,
    "Asin": _F, "Asinh": _F, "Atan": _F, "Atanh": _F, "Attention": (*_F, "INT8", "FP8"),
    "AveragePool": _F, "BatchNormalization": _F, "BlackmanWindow": ("FP32", "FP16"),
    "Cast": (*_FI, "UINT8", "BOOL"), "CastLike": (*_FI, "UINT8", "BOOL"), "Ceil": _F, "Celu": _F,
    "Clip": _F, "Concat": _FIB, "Constant": (*_FIB, "FP8", "FP4", "INT4"),
    "ConstantOfShape": (*_FIB, "FP8", "FP4", "INT4"), "Conv": _F, "ConvTranspose": _F, "Cos": _F,
    "Cosh": _F, "CumSum": _F, "DeformConv": ("FP32", "FP16"), "DepthToSpace": _FI,
    "DequantizeLinear": ("INT8", "FP8", "FP4", "INT4"), "Div": _FI, "Dropout": _F, "Einsum": _F,
    "Elu": _F, "Equal": _FI, "Erf": _F, "Exp": _F, "Expand": _FIB, "EyeLike": _FIB, "Flatten": _FIB,
    "Floor": _F, "Gather": _FIB, "GatherElements": _FIB, "GatherND": _FIB, "Gelu": (*_FI, "INT8"),
    "Gemm": _F, "GlobalAveragePool": _F, "GlobalLpPool": _F, "GlobalMaxPool": _F, "Greater": _FI,
    "GreaterOrEqual": _FI, "GridSample": ("FP32", "FP16"), "GroupNormalization": _F, "GRU": _F,
    "HammingWindow": ("FP32", "FP16"), "HannWindow": ("FP32", "FP16"), "HardSigmoid": _F,
    "HardSwish": _F, "Hardmax": _F, "Identity": _FIB, "If": _FIB, "ImageScaler": _F,
    "InstanceNormalization": _F, "IsInf": _F, "IsNaN": _FI, "LayerNormalization": _F, "LeakyRelu": _F,
    "Less": _FI, "LessOrEqual": _FI, "Log": _F, "LogSoftmax": _F, "Loop": _FIB, "LRN": _F, "LSTM": _F,
    "LpNormalization": _F, "LpPool": _F, "MatMul": _F, "Max": _FI, "MaxPool": _F,
    "Mean": (*_FI, "FP8"), "MeanVarianceNormalization": _F, "Min": _FI, "Mish": ("FP32", "FP16"),
    "Mod": _FI, "Mul": _FI, "Neg": _FI, "NonMaxSuppression": ("FP32", "FP16"),
    "NonZero": ("FP32", "FP16"), "Not": _B, "OneHot": _FIB, "Or": _B, "Pad": _FI,
    "ParametricSoftplus": _F, "Pow": _FI, "PRelu": _F, "QuantizeLinear": _F, "RandomNormal": _F,
    "RandomNormalLike": _F, "RandomUniform": _F, "RandomUniformLike": _F, "Range": _FI,
    "Reciprocal": _F, "ReduceL1": _FI, "ReduceL2": _FI, "ReduceLogSum": _FI, "ReduceLogSumExp": _FI,
    "ReduceMax": _FI, "ReduceMean": _FI, "ReduceMin": _FI, "ReduceProd": _FI, "ReduceSum": _FI,
    "ReduceSumSquare": _FI, "Relu": _FI, "Reshape": _FIB, "Resize": _F, "ReverseSequence": _FIB,
    "RMSNormalization": _F, "RNN": _F, "RoiAlign": ("FP32", "FP16"), "RotaryEmbedding": _F, "Round": _F,
    "STFT": ("FP32",), "ScaledTanh": _F, "Scan": _F, "Scatter": _FI, "ScatterElements": _FI,
    "ScatterND": _FI, "Selu": _F, "Shape": _FIB, "Shrink": _FI, "Sigmoid": _F, "Sign": _FI, "Sin": _F,
    "Sinh": _F, "Size": _FIB, "Slice": _FIB, "Softmax": _F, "Softplus": _F, "Softsign": _F,
    "SpaceToDepth": _FI, "Split": _FIB, "Sqrt": _F, "Squeeze": _FIB, "Sub": _FI, "Sum": _FI, "Tan": _F,
    "Tanh": _F, "TensorScatter": (*_F, "INT32"), "ThresholdedRelu": _F, "Tile": _FIB, "TopK": _FI,
    "Transpose": _FIB, "Trilu": _FIB, "Unsqueeze": _FIB, "Upsample": _F, "Where": _FIB, "Xor": _B,
}

# Listed as "N" (not supported) in the same table.
_UNSUPPORTED: frozenset[str] = frozenset({
    "AffineGrid", "Bernoulli", "BitShift", "BitwiseAnd", "BitwiseNot", "BitwiseOr", "BitwiseXor", "Col2Im",
    "CenterCropPad", "Compress", "ConcatFromSequence", "ConvInteger", "DFT", "Det", "DynamicQuantizeLinear",
    "ImageDecoder", "MatMulInteger", "MaxRoiPool", "MaxUnpool", "MelWeightMatrix", "Multinomial",
    "NegativeLogLikelihoodLoss", "Optional", "OptionalGetElement", "OptionalHasElement", "QLinearConv",
    "QLinearMatMul", "RegexFullMatch", "SequenceAt", "SequenceConstruct", "SequenceEmpty", "SequenceErase",
    "SequenceInsert", "SequenceLength", "SequenceMap", "SoftmaxCrossEntropyLoss", "SplitToSequence",
    "StringConcat", "StringNormalizer", "StringSplit", "TfIdfVectorizer", "Unique",
})


@dataclass(frozen=True)
class OperatorTable:
    """What one TensorRT generation's ONNX parser accepts."""

    generation: int
    min_opset: int
    max_opset: int
    supported: dict[str, tuple[str, ...]]
    unsupported: frozenset[str]
    source: str

    def status(self, op: str) -> str:
        """"supported", "unsupported" or "unknown" (not in the published table)."""
        if op in self.supported:
            return "supported"
        if op in self.unsupported:
            return "unsupported"
        return "unknown"


_TABLES = {
    10: OperatorTable(
        10, 9, 24, _SUPPORTED_10, _UNSUPPORTED,
        "onnx-tensorrt docs/operators.md, TensorRT 10.15 (10.0 parses opset 9..20, 10.15 up to 24)",
    ),
    11: OperatorTable(
        11, 9, 25, {**_SUPPORTED_10, "Swish": _F}, _UNSUPPORTED,
        "onnx-tensorrt docs/operators.md + TensorRT 11.x ONNX opset guide (opset 9..25; 11.0 added Swish)",
    ),
}

# Opset above which TensorRT 10.0 (the oldest 10.x) fails to parse; newer 10.x releases accept up to 24.
TRT10_0_MAX_OPSET = 20


def operator_table(generation: int) -> OperatorTable:
    """The operator table of TensorRT `generation` (10 or 11)."""
    if generation not in _TABLES:
        raise ValueError(f"unknown TensorRT generation {generation}; expected one of {GENERATIONS}")
    return _TABLES[generation]
