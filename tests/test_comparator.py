"""The comparator (hrdeploy.parity.comparator), its loaders, the runner factory and lifecycle, and the import circle."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from tiny_bundles import tiny_bundle, tiny_onnx

from hrdeploy.bundle import Bundle
from hrdeploy.errors import UserError
from hrdeploy.parity.comparator import Comparator, TensorCompare, compare_ap, judge_tensors
from hrdeploy.parity.loaders import Batches, GroupedInputs, SeededInputs, seeded_batch
from hrdeploy.parity.tolerances import TOLERANCES
from hrdeploy.runtime.base import RunnerBase
from hrdeploy.runtime.factory import eager_runner, open_runner
from hrdeploy.runtime.onnxruntime import OrtRunner, ort_session

FP32 = TOLERANCES["fp32"]


def test_importing_the_bundle_imports_no_runner_or_engine() -> None:
    """The data layer sits below the runners: hrdeploy.bundle -> runtime -> engine -> bundle is no circle."""
    code = ("import sys, hrdeploy.bundle; "
            "print(sorted(m for m in sys.modules if m.startswith(('hrdeploy.runtime', 'hrdeploy.engine'))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


class _Offset(RunnerBase):
    """A runner returning its input plus `offset`; counts activations and runs."""

    def __init__(self, name: str, offset: float = 0.0) -> None:
        self.name, self.offset, self.output_names = name, offset, ["y"]
        self.activations = self.runs = 0

    def _activate(self) -> None:
        self.activations += 1

    def run(self, x: np.ndarray) -> dict[str, np.ndarray]:
        self.activate()
        self.runs += 1
        return {"y": (x.astype(np.float64) + self.offset).astype(np.float32)}


def test_seeded_inputs_are_the_same_for_a_seed_and_differ_between_seeds() -> None:
    loader = SeededInputs([(1, (8, 6), 0), (2, (8, 6), 1)])
    first, again = list(loader), list(loader)
    assert [x.shape for x in first] == [(1, 3, 8, 6), (2, 3, 8, 6)] and first[0].dtype == np.float32
    assert all(np.array_equal(a, b) for a, b in zip(first, again, strict=True))
    np.testing.assert_array_equal(seeded_batch(1, (8, 6), 0), first[0])
    assert not np.array_equal(seeded_batch(1, (8, 6), 1), first[0])


def test_batches_pad_the_last_one_only_when_asked() -> None:
    data = np.arange(5, dtype=np.float32)[:, None]
    assert [len(b) for b in Batches(data, 2)] == [2, 2, 1] and len(Batches(data, 2)) == 3
    last = list(Batches(data, 2, pad=True))[-1]
    np.testing.assert_array_equal(last[:, 0], [4, 4])


def test_grouped_inputs_batch_each_size_and_give_back_each_input() -> None:
    sizes = [(4, 4), (4, 4), (6, 2), (4, 4)]
    arrays = [np.full((3, *hw), i, np.float32) for i, hw in enumerate(sizes)]
    loader = GroupedInputs(arrays, 2)
    assert loader.groups == {(4, 4): [0, 1, 3], (6, 2): [2]}
    batches = list(loader)
    assert [b.shape for b in batches] == [(2, 3, 4, 4), (2, 3, 4, 4), (2, 3, 6, 2)] and len(loader) == 3
    assert batches[1][:, 0, 0, 0].tolist() == [3, 3]  # the last batch of a size is padded with its last input
    by_size = loader.by_size(Comparator.run([_Offset("eager", 0.5)], loader).outputs["eager"])
    assert by_size[(4, 4)]["y"][:, 0, 0, 0].tolist() == [0.5, 1.5, 3.5]
    assert by_size[(6, 2)]["y"].shape == (1, 3, 6, 2)


def test_comparator_runs_every_runner_on_every_batch_and_closes_what_it_activated() -> None:
    ref, cand = _Offset("eager"), _Offset("ort", 1e-6)
    cand.activate()  # opened by the caller: stays open
    results = Comparator.run([ref, cand], SeededInputs([(1, (4, 4), 0), (2, (4, 4), 1)]))
    assert list(results.outputs) == ["eager", "ort"] and (ref.runs, cand.runs) == (2, 2)
    assert not ref.active and cand.active
    assert results.joined("ort", 2)["y"].shape == (2, 3, 4, 4)
    rows = Comparator.compare(results, TensorCompare(FP32))
    assert [(r["backend"], r["iteration"], r["output"]) for r in rows] == [("ort", 0, "y"), ("ort", 1, "y")]
    assert all(r["passed"] and r["cosine"] > 0.99999 for r in rows)
    with pytest.raises(ValueError, match="two runners named"):
        Comparator.run([ref, _Offset("eager")], [np.zeros((1, 3, 2, 2), np.float32)])


@pytest.mark.parametrize(("error", "floor", "passed", "exact_runs"), [
    (5e-5, 1e-4, True, 0),  # within max_rel: the float64 reference never runs
    (3e-4, 1e-4, True, 1),  # over max_rel, within 4 x the floor
    (6e-4, 1e-4, False, 1),  # over both
])
def test_the_fp32_floor_is_measured_only_for_a_row_over_max_rel(error, floor, passed, exact_runs) -> None:
    x = np.linspace(-1, 1, 48, dtype=np.float32).reshape(1, 3, 4, 4)
    exact = _Offset("exact")
    results = Comparator.run([_Offset("eager", floor), _Offset("ort", floor + error)], [x])
    (row,) = Comparator.compare(results, TensorCompare(FP32, exact=exact))
    assert row["passed"] is passed and exact.runs == exact_runs
    assert ("fp32_floor_rel" in row) is bool(exact_runs)


def test_judge_tensors_keeps_a_failing_cosine_failed_without_the_floor() -> None:
    calls = []
    gated = {"max_rel": 1e-3, "cosine": 0.9, "non_finite": 0}
    failures = judge_tensors(gated, FP32, np.ones(4), lambda: calls.append(1) or np.ones(4))
    assert failures and not calls and "fp32_floor_rel" not in gated


def test_compare_ap_judges_the_drop_and_gives_the_paired_interval() -> None:
    ok = compare_ap({"AP": 0.700}, {"AP": 0.698}, TOLERANCES["fp16"])
    assert ok["passed"] and ok["gated"]["ap_drop"] == pytest.approx(0.2) and "interval" not in ok
    bad = compare_ap({"AP": 0.70}, {"AP": 0.66}, TOLERANCES["int8"])
    assert not bad["passed"] and bad["failures"] == ["AP drop 4.00 (needs <= 2)"]
    assert bad["tolerance"] == {"max_ap_drop": 2.0}


def test_runners_load_on_activate_and_release_on_close(tmp_path: Path) -> None:
    runner = OrtRunner(tiny_onnx(tmp_path / "m.onnx"))
    assert runner.session is None and not runner.active  # nothing loaded yet
    with runner as r:
        assert r.session is not None and r.output_names == ["heatmaps"]
        assert r.run(np.zeros((2, 3, 64, 48), np.float32))["heatmaps"].shape == (2, 17, 16, 12)
    assert runner.session is None and not runner.active
    assert runner.run(np.zeros((1, 3, 64, 48), np.float32))["heatmaps"].shape == (1, 17, 16, 12)  # run() activates

    built = []

    def build() -> torch.nn.Module:
        built.append(1)
        return torch.nn.Conv2d(3, 2, 1)

    eager = eager_runner(build, ["y"])
    assert not built
    with eager:
        assert eager.run(np.ones((1, 3, 4, 4), np.float32))["y"].shape == (1, 2, 4, 4)
    assert built == [1] and eager.model is None
    exact = eager_runner(torch.nn.Conv2d(3, 2, 1), ["y"], exact=True).activate()
    assert next(exact.model.parameters()).dtype == torch.float64


def test_one_factory_opens_paths_and_artifacts(tmp_path: Path) -> None:
    root = tiny_bundle(tmp_path / "b")
    b = Bundle.open(root)
    with open_runner(b.artifact("onnx"), threads=1) as by_artifact, open_runner(root / "model.onnx") as by_path:
        x = seeded_batch(1, (64, 48), 0)
        np.testing.assert_array_equal(by_artifact.run(x)["heatmaps"], by_path.run(x)["heatmaps"])
        assert by_artifact.settings.threads == 1
    (tmp_path / "m.bin").write_bytes(b"x")
    with pytest.raises(UserError, match="unknown artifact type"):
        open_runner(tmp_path / "m.bin")
    with pytest.raises(UserError, match="does not exist"):
        open_runner(tmp_path / "missing.onnx")


def test_one_session_builder_for_files_and_graphs(tmp_path: Path) -> None:
    path = tiny_onnx(tmp_path / "m.onnx")
    x = np.ones((1, 3, 64, 48), np.float32)
    a = ort_session(path, threads=1).run(None, {"input": x})[0]
    b = ort_session(onnx.load(path)).run(None, {"input": x})[0]
    np.testing.assert_array_equal(a, b)
    (tmp_path / "bad.onnx").write_bytes(b"not onnx")
    with pytest.raises(UserError, match="onnxruntime cannot load"):
        ort_session(tmp_path / "bad.onnx")
