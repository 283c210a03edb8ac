"""The quantize report as Markdown (`quantize.<precision>.md` in the bundle)."""

from __future__ import annotations

from typing import Any

from hrdeploy.precision.int8 import DW_RANGE_RATIO


def _fmt(value: Any, spec: str = ".4g") -> str:
    if value is None:
        return "-"
    return format(value, spec) if isinstance(value, (int, float)) else str(value)


def to_markdown(model_name: str, report: dict[str, Any]) -> str:
    """Conversion facts, parity against eager fp32, the layers that drift most, block sensitivity."""
    lines = _conversion(model_name, report)
    val = report.get("validation")
    if val is not None:
        lines += _parity(report["precision"], val) + _drift(val) + _sensitivity(val)
    return "\n".join(lines) + "\n"


def _conversion(model_name: str, report: dict[str, Any]) -> list[str]:
    p, conv = report["precision"], report["conversion"]
    cal, val_imgs = report["calibration"], report["validation_images"]
    lines = [
        f"# {model_name}: {p} ONNX ({report['backend']} backend)",
        "",
        f"- converter: {conv.get('converter', report['backend'])}",
        f"- calibration: {cal['count']} of {cal['available']} image(s) from {cal['source']}"
        + (f", method {report['method']}" if report.get("method") else ""),
        f"- validation: {val_imgs['count']} image(s) from {val_imgs['source']}, onnxruntime CPU vs eager fp32",
    ]
    if p == "int8":
        lines += [
            f"- convolutions quantized: {conv['convs_quantized']}, left in fp32: {conv['convs_unquantized']}",
            f"- Q/DQ nodes: {conv['quantize_nodes']} Q, {conv['dequantize_nodes']} DQ; per-channel weights: "
            f"{conv['per_channel_weights']}; non-zero zero points: {conv['nonzero_zero_points']}; "
            f"quantized outputs: {len(conv['outputs_quantized'])}",
        ]
        if conv.get("equalized"):
            placed = list(conv["equalized"].values())
            lines.append(f"- depthwise convs reading equalized inputs: {len(placed)} (scales folded into the "
                         f"producing conv: {placed.count('folded')}, by a Mul: {placed.count('mul')})")
        if conv.get("equalized_dense"):
            lines.append(f"- dense convs reading equalized inputs: {len(conv['equalized_dense'])} (scales folded into "
                         "the producing conv)")
        if conv.get("shifted_convs"):
            lines.append(f"- INT8 convs reading shifted non-negative inputs (all 256 codes): {conv['shifted_convs']}")
        if conv.get("auto_excluded"):
            auto = conv["auto_excluded"]
            shown = ", ".join(f"{k} {v:g}x" for k, v in list(auto.items())[:4]) + (", ..." if len(auto) > 4 else "")
            lines.append(
                f"- depthwise convs left fp32 for wide-range inputs (loudest / median channel > {DW_RANGE_RATIO:g}): "
                f"{len(auto)} ({shown})"
            )
        if conv.get("runtime_weight_convs"):
            lines.append(f"- convs with run-time weights (not quantizable): {len(conv['runtime_weight_convs'])}")
    else:
        kept = ", ".join(f"{op} x{n}" for op, n in conv["kept_fp32_by_op"].items()) or "none"
        lines += [
            f"- fp16 compute nodes: {conv['fp16_compute_nodes']}; "
            f"kept in fp32: {len(conv['kept_fp32_nodes'])} ({kept})",
            f"- overflow guard: nodes reading or writing |x| > {conv['fp16_safe_max']:g} on the images stay fp32: "
            f"{len(conv['overflow_nodes'])} (largest activation seen {conv['max_activation']:g})",
        ]
    if conv.get("excluded_nodes"):
        lines.append(f"- excluded by --exclude: {len(conv['excluded_nodes'])} node(s)")
    return lines


def _parity(p: str, val: dict[str, Any]) -> list[str]:
    lines = ["", f"## Parity vs eager fp32 ({val['mode']}): **{'PASS' if val['passed'] else 'FAIL'}**", ""]
    lines.append("Gate (hrdeploy.parity tolerance table): "
                 + ", ".join(f"{k} {v:g}" for k, v in val["tolerance"].items()) + "; measured: "
                 + ", ".join(f"{k} {_fmt(v)}" for k, v in val["gated"].items()) + ".")
    if "stats" in val:
        ref, got = val["reference_stats"], val["stats"]
        lines += ["", f"COCO keypoint AP (pycocotools) on {got['people']} annotated people:", "",
                  "| model | AP | AP50 | AP75 | AR | mean OKS |", "|---|---|---|---|---|---|"]
        for label, st in (("eager fp32", ref), (p, got)):
            lines.append(f"| {label} | {st['AP']:.4f} | {st['AP50']:.4f} | {st['AP75']:.4f} | {st['AR']:.4f} "
                         f"| {st['mean_oks']:.4f} |")
    if "agreement" in val:
        a = val["agreement"]
        lines += ["", f"Keypoint agreement with eager on {val['people']} person crop(s) ({a['keypoints']} confident "
                  f"joints): OKS {a['oks']:.4f}, PCK@0.05 {a['pck@0.05']:.1f} %, mean error "
                  f"{a['mean_err_img_px']:.2f} px, max {a['max_err_img_px']:.2f} px (image pixels)."]
    t = val.get("tensor")
    if t:
        lines += ["", f"Heatmaps (not gated): max rel {t['max_rel']:.3e}, cosine {t['cosine']:.6f}, peak agreement "
                  f"{_fmt(t.get('argmax_agreement_pct'), '.1f')} %."]
    for name, m in (val.get("outputs") or {}).items():
        lines.append(f"- `{name}`: max rel {m['max_rel']:.3e}, cosine {m['cosine']:.6f}")
    if val["failures"]:
        lines.append("")
    for failure in val["failures"]:
        lines.append(f"- FAIL {failure}")
    noise = val.get("input_noise")
    if noise:
        lines += [
            "",
            f"Noise floor: int8 rounding noise on the input alone (input rel L2 {noise['input_rel_l2']:.1e}) moves "
            f"the fp32 output to cosine {noise['cosine']:.6f} (rel L2 {noise['rel_l2']:.3e}). When this is far "
            "from 1 the network itself amplifies small perturbations (typical of untrained, seeded weights) and no "
            "Q/DQ placement can keep int8 close to fp32.",
        ]
    return lines


def _drift(val: dict[str, Any]) -> list[str]:
    lines: list[str] = []
    if val.get("drift"):
        lines += [
            "",
            "## Layers that drift most (vs the fp32 ONNX; drift accumulates downstream)",
            "",
            "| tensor | op | module | rel L2 | cosine |",
            "|---|---|---|---|---|",
        ]
        for r in val["drift"]:
            lines.append(f"| {r['tensor']} | {r['op']} | {r['scope'] or '-'} | {r['rel_l2']:.3e} | {r['cosine']:.6f} |")
    return lines


def _sensitivity(val: dict[str, Any]) -> list[str]:
    sens = val.get("sensitivity")
    if not sens:
        return []
    lines = [
        "",
        "## Block sensitivity (only this block quantized, the rest fp32)",
        "",
        f"Output `{sens['output']}`: whole model int8 rel L2 {sens['full_rel_l2']:.3e} (cosine "
        f"{sens['full_cosine']:.6f}); all Q/DQ bypassed {sens['bypass_rel_l2']:.1e}. Exclude the top blocks "
        "with `--exclude '<block>*'` to trade speed for accuracy.",
        "",
        "| rank | block | convs | rel L2 added | cosine |",
        "|---|---|---|---|---|",
    ]
    for i, r in enumerate(sens["blocks"], 1):
        lines.append(f"| {i} | {r['block']} | {r['convs']} | {r['rel_l2']:.3e} | {r['cosine']:.6f} |")
    return lines
