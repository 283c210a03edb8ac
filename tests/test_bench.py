"""`hrdeploy bench`: the statistics, the harness, the reports and the command (tiny inputs, few calls)."""

from __future__ import annotations

import importlib.util
import json
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from hrdeploy.bench.harness import STAT_KEYS, latency_stats, time_calls
from hrdeploy.bench.report import to_markdown
from hrdeploy.bench.targets import parse_batches
from hrdeploy.cli import cli
from hrdeploy.errors import UserError

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _one_line_error(result, *needles: str) -> None:
    assert result.exit_code == 2, result.output
    err = result.stderr.strip()
    assert err.startswith("error: ") and "\n" not in err, err
    for needle in needles:
        assert needle in err, err


def test_latency_stats_percentiles_match_their_definition() -> None:
    seconds = [i / 1000 for i in range(1, 101)]  # 1..100 ms
    s = latency_stats(seconds, batch=4)
    # numpy's linear interpolation over 100 sorted samples: p = 1 + 0.99 * q
    assert s["p50_ms"] == pytest.approx(1 + 99 * 0.50)
    assert s["p90_ms"] == pytest.approx(1 + 99 * 0.90)
    assert s["p99_ms"] == pytest.approx(1 + 99 * 0.99)
    assert s["mean_ms"] == pytest.approx(50.5) and s["min_ms"] == pytest.approx(1.0)
    assert s["max_ms"] == pytest.approx(100.0)
    assert s["throughput_ips"] == pytest.approx(4 * 1000 / 50.5)
    assert s["per_image_ms"] == pytest.approx(s["p50_ms"] / 4)
    assert s["iterations"] == 100
    with pytest.raises(ValueError):
        latency_stats([], batch=1)


def test_time_calls_skips_warmup_and_times_each_call() -> None:
    ticks = iter(np.cumsum([0.0] + [0.001, 0.0, 0.002, 0.0, 0.003] + [0.0] * 4))  # clock readings
    calls = []
    steps = []
    times = time_calls(lambda: calls.append(1), iterations=3, warmup=2, on_step=lambda: steps.append(1),
                       clock=lambda: float(next(ticks)))
    assert len(calls) == 5 and len(steps) == 5  # 2 warm-up + 3 timed, progress after each
    assert times == pytest.approx([0.001, 0.002, 0.003])


@pytest.mark.parametrize("text", ["1,x", "0", "1,-2", "", "4.5", ","])
def test_parse_batches_rejects_non_positive_integers(text: str) -> None:
    with pytest.raises(UserError, match="positive integers"):
        parse_batches(text)


def test_parse_batches_keeps_order_and_drops_repeats() -> None:
    assert parse_batches("8,1, 4,8") == [8, 1, 4]


def test_markdown_has_speedup_against_eager() -> None:
    base = {"file": None, "precision": "fp32", "p90_ms": 1.0, "p99_ms": 1.0, "mean_ms": 1.0, "min_ms": 1.0,
            "throughput_ips": 1.0, "per_image_ms": 1.0}
    report = {
        "date": "d", "machine": {"cpu": "cpu", "cores": 2, "platform": "p"}, "versions": {"torch": "x"},
        "settings": {"iterations": 1, "warmup": 0, "threads": None, "batches": [1]},
        "target": {"name": "m", "input_size": [64, 48]},
        "results": [{**base, "label": "eager fp32", "backend": "eager", "batch": 1, "p50_ms": 30.0},
                    {**base, "label": "ort fp32", "backend": "ort", "batch": 1, "p50_ms": 10.0}],
        "skipped": [{"backend": "trt", "target": "engine_fp16", "reason": "tensorrt is not installed"}],
    }
    md = to_markdown(report)
    ort_line = next(line for line in md.splitlines() if line.startswith("| ort fp32"))
    assert ort_line.rstrip(" |").endswith("3.00")  # eager 30 ms / ort 10 ms
    assert "skipped: tensorrt is not installed" in md


@pytest.fixture
def l18(lite18_bundle, tmp_path) -> Path:
    dst = tmp_path / "l18"
    shutil.copytree(lite18_bundle, dst)
    return dst


def _check_rows(rows: list[dict], labels: set[str], batches: list[int]) -> None:
    assert {r["label"] for r in rows} == labels
    assert sorted({r["batch"] for r in rows}) == sorted(batches)
    for r in rows:
        assert all(isinstance(r[k], float) and r[k] > 0 for k in STAT_KEYS if k != "std_ms")
        assert r["min_ms"] <= r["p50_ms"] <= r["p90_ms"] <= r["p99_ms"] <= r["max_ms"]
        assert r["throughput_ips"] == pytest.approx(r["batch"] * 1000 / r["mean_ms"])


def test_bench_bundle_side_by_side_writes_json_md_png(cli_runner, l18, tmp_path) -> None:
    out = tmp_path / "b.json"
    result = cli_runner.invoke(cli, ["bench", str(l18), "--batch", "1,2", "--iterations", "2", "--warmup", "1",
                                     "--threads", "1", "--json", str(out)])
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())
    _check_rows(report["results"], {"eager fp32", "ort fp32"}, [1, 2])
    assert all(r["iterations"] == 2 for r in report["results"])
    assert report["settings"] == {"iterations": 2, "warmup": 1, "threads": 1, "batches": [1, 2]}
    assert report["target"]["input_size"] == [128, 96] and report["machine"]["cores"] >= 1
    assert "onnxruntime" in report["versions"]
    md = out.with_suffix(".md").read_text()
    assert md.count("| ort fp32 |") == 2 and md.count("| eager fp32 |") == 2
    assert out.with_suffix(".png").read_bytes()[:8] == PNG_MAGIC
    assert "p50 ms" in result.output


def test_bench_bundle_default_writes_into_the_bundle(cli_runner, l18) -> None:
    result = cli_runner.invoke(cli, ["bench", str(l18), "--backend", "ort", "--iterations", "2", "--warmup", "0"])
    assert result.exit_code == 0, result.output
    report = json.loads((l18 / "bench.json").read_text())
    _check_rows(report["results"], {"ort fp32"}, [1])
    assert (l18 / "bench.md").is_file() and (l18 / "bench.png").is_file()


def test_bench_eager_model(cli_runner, tmp_path) -> None:
    out = tmp_path / "e.json"
    threads = torch.get_num_threads()
    result = cli_runner.invoke(cli, ["bench", "--model", "lite_hrnet_18", "--input-size", "64x64", "--batch", "1",
                                     "--iterations", "2", "--warmup", "1", "--threads", str(1 if threads != 1 else 2),
                                     "--json", str(out)])
    assert result.exit_code == 0, result.output
    assert torch.get_num_threads() == threads  # --threads does not leak into the rest of the process
    report = json.loads(out.read_text())
    _check_rows(report["results"], {"eager fp32"}, [1])
    assert report["target"] == {"name": "lite_hrnet_18", "kind": "model", "input_size": [64, 64]}


@pytest.fixture
def static_onnx(tmp_path) -> Path:
    """A static batch-1 ONNX (TorchScript exporter: fast) of a two-layer net."""
    path = tmp_path / "static.onnx"
    model = nn.Sequential(nn.Conv2d(3, 4, 3, 2, 1), nn.ReLU(), nn.Conv2d(4, 2, 1)).eval()
    with warnings.catch_warnings():  # the TorchScript exporter's deprecation notice
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(model, (torch.randn(1, 3, 32, 32),), path, dynamo=False, input_names=["input"],
                          output_names=["heatmaps"], opset_version=17)
    return path


def test_bench_onnx_file_and_its_static_batch(cli_runner, static_onnx, tmp_path) -> None:
    out = tmp_path / "o.json"
    ok = cli_runner.invoke(cli, ["bench", "--onnx", str(static_onnx), "--iterations", "3", "--warmup", "0",
                                 "--json", str(out)])
    assert ok.exit_code == 0, ok.output
    report = json.loads(out.read_text())
    _check_rows(report["results"], {"ort fp32"}, [1])
    assert report["target"]["input_size"] == [32, 32]  # read from the ONNX's static input
    _one_line_error(cli_runner.invoke(cli, ["bench", "--onnx", str(static_onnx), "--batch", "1,4"]),
                    "static batch of 1", "--batch 4")

    import onnx
    from onnxconverter_common import float16

    half = tmp_path / "static.fp16.onnx"
    onnx.save(float16.convert_float_to_float16(onnx.load(static_onnx), keep_io_types=True), half)
    ok = cli_runner.invoke(cli, ["bench", "--onnx", str(half), "--iterations", "1", "--warmup", "0",
                                 "--json", str(out)])
    assert ok.exit_code == 0, ok.output
    _check_rows(json.loads(out.read_text())["results"], {"ort fp16"}, [1])  # precision read from the graph


def test_bench_bad_inputs_are_one_line_errors(cli_runner, l18, tmp_path) -> None:
    _one_line_error(cli_runner.invoke(cli, ["bench", str(l18), "--batch", "1,x"]), "positive integers")
    _one_line_error(cli_runner.invoke(cli, ["bench"]), "exactly one of")
    _one_line_error(cli_runner.invoke(cli, ["bench", str(l18), "--model", "lite_hrnet_18"]), "exactly one of")
    _one_line_error(cli_runner.invoke(cli, ["bench", str(l18), "--backend", "cuda"]), "unknown backend")
    _one_line_error(cli_runner.invoke(cli, ["bench", str(l18), "--backend", "trt"]), "no TensorRT engine")
    _one_line_error(cli_runner.invoke(cli, ["bench", "--engine", str(tmp_path / "m.engine")]), "does not exist")
    engine = tmp_path / "model.fp16.engine"
    engine.write_bytes(b"not an engine")
    if importlib.util.find_spec("tensorrt") is None:
        _one_line_error(cli_runner.invoke(cli, ["bench", "--engine", str(engine)]), "tensorrt is not installed")
    _one_line_error(cli_runner.invoke(cli, ["bench", "--model", "lite_hrnet_18", "--backend", "ort"]), "--model")
    _one_line_error(cli_runner.invoke(cli, ["bench", "--model", "lite_hrnt_18"]), "lite_hrnet_18")

    manifest_path = l18 / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["artifacts"] = {}
    manifest_path.write_text(json.dumps(manifest))
    _one_line_error(cli_runner.invoke(cli, ["bench", str(l18)]), "has no artifacts")


def test_batches_outside_an_engine_profile_are_rejected() -> None:
    from hrdeploy.bench.run import check_batches
    from hrdeploy.bench.targets import BenchTarget

    engine = BenchTarget("trt fp16", "trt", "fp16", open=lambda: None, batch_range=(1, 4), file="model.fp16.engine")
    check_batches([engine], [1, 4])
    with pytest.raises(UserError, match=r"--batch 8 is outside model.fp16.engine's profile \(batch 1..4\)"):
        check_batches([engine], [1, 8])


@pytest.mark.skipif(importlib.util.find_spec("tensorrt") is not None, reason="checks the no-TensorRT path")
def test_engine_in_bundle_is_skipped_by_default_and_an_error_when_asked_for(cli_runner, l18) -> None:
    from hrdeploy.bundle import Bundle

    (l18 / "model.fp16.engine").write_bytes(b"engine bytes")
    Bundle.open(l18).record_artifact("engine_fp16", "model.fp16.engine", precision="fp16",
                    profiles=[{"input": "input", "min": [1, 3, 128, 96], "opt": [2, 3, 128, 96],
                               "max": [4, 3, 128, 96]}])
    result = cli_runner.invoke(cli, ["bench", str(l18), "--backend", "ort,trt", "--iterations", "1", "--warmup", "0"])
    _one_line_error(result, "tensorrt is not installed")
    result = cli_runner.invoke(cli, ["bench", str(l18), "--iterations", "1", "--warmup", "0", "--threads", "1"])
    assert result.exit_code == 0, result.output
    report = json.loads((l18 / "bench.json").read_text())
    assert {r["label"] for r in report["results"]} == {"eager fp32", "ort fp32"}
    (skip,) = report["skipped"]
    assert skip["backend"] == "trt" and "tensorrt is not installed" in skip["reason"]
    assert "skipped trt" in result.output


def test_profile_summary_skips_the_warmup_run_and_averages_per_run() -> None:
    from hrdeploy.bench.profile import summarize_profile

    def node(name: str, op: str, ts: int, dur: int) -> dict:
        return {"cat": "Node", "name": f"{name}_kernel_time", "ts": ts, "dur": dur, "args": {"op_name": op}}

    events = [{"cat": "Session", "name": "model_run", "ts": t, "dur": 90} for t in (0, 100, 200)]
    events += [node("conv_a", "Conv", 1, 5000)]  # warm-up run: ignored
    for start in (100, 200):  # two timed runs
        events += [node("conv_a", "Conv", start + 1, 3000), node("conv_b", "Conv", start + 2, 1000),
                   node("add", "Add", start + 3, 1000),
                   {"cat": "Node", "name": "conv_a_fence_before", "ts": start + 4, "dur": 7}]
    s = summarize_profile(events, runs=2)
    assert s["kernel_ms_per_run"] == pytest.approx(5.0)
    assert [(o["op"], o["ms"], o["kernels"]) for o in s["ops"]] == [("Conv", 4.0, 2), ("Add", 1.0, 1)]
    assert s["ops"][0]["share"] == pytest.approx(0.8)
    assert s["top_nodes"][0] == {"node": "conv_a", "op": "Conv", "ms": 3.0}
