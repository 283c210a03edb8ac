"""The typed bundle layer: schema validation, path confinement, atomic locked updates."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from tiny_bundles import tiny_bundle, tiny_manifest

from hrdeploy.bundle import LOCK, MANIFEST, Bundle, hold_lock, is_bundle
from hrdeploy.errors import UserError
from hrdeploy.runtime.factory import open_runner


def _with(root: Path, change) -> Path:
    m = json.loads((root / MANIFEST).read_text())
    change(m)
    (root / MANIFEST).write_text(json.dumps(m))
    return root


def test_typed_sections(tmp_path: Path) -> None:
    b = Bundle.open(tiny_bundle(tmp_path / "b", with_fp16=True))
    assert b.model.name == "tiny" and b.model.seed == 0 and b.model.checkpoint is None
    assert b.input.size == (64, 48) and b.input.std == (0.229, 0.224, 0.225) and b.input.batch_range == (1, 1024)
    assert b.output_names == ("heatmaps",) and b.outputs[0].channels == 17 and b.is_pose
    assert len(b.keypoints.names) == 17 and (1, 2) in b.keypoints.flip_pairs
    onnx_art, fp16 = b.artifact("onnx"), b.artifact("fp16")
    assert (onnx_art.kind, onnx_art.precision, onnx_art.batch_range) == ("onnx", "fp32", (1, 1024))
    assert fp16.precision == "fp16" and fp16.path == b.root / "model.fp16.onnx"
    assert len(onnx_art.info.sha256) == 64
    static = Bundle.open(tiny_bundle(tmp_path / "s", dynamic_batch=False))
    assert static.artifact("onnx").batch_range == (1, 1) and static.input.batch_range == (1, 1)


@pytest.mark.parametrize(("change", "needle"), [
    (lambda m: m.pop("input"), "input section is missing"),
    (lambda m: m["input"].update(height="abc"), "input.height must be an integer"),
    (lambda m: m["input"].update(std=[0, 1, 1]), "input.std must be a list of 3 finite positive"),
    # numbers are bounded: past the bound a value is a typo and would allocate or overflow before any error
    (lambda m: m["input"].update(height=10**30), r"input.height must be an integer in 1..4096"),
    (lambda m: m["input"].update(width=10**5), r"input.width must be an integer in 1..4096"),
    (lambda m: m["input"].update(shape=["batch", 3, 10**5, 48]), "input.shape must be 4 dims"),
    (lambda m: m["input"].update(shape=[10**9, 3, 64, 48]), "input.shape must be 4 dims"),
    (lambda m: m["input"].update(mean=[float("nan"), 0.5, 0.5]), "input.mean must be a list of 3 finite"),
    (lambda m: m["input"].update(scale=255.0), "unknown key 'scale' in 'input'"),
    (lambda m: m["input"].update(stride=10**30), "input.stride must be an integer in 1..4096"),
    (lambda m: m["outputs"][0].update(channels=10**12), r"outputs\[0\].channels must be an integer in 1..65536"),
    (lambda m: m["model"].update(seed=10**30), "model.seed must be an integer in 0..4294967295"),
    # the preset sections stored for later stages are typed and bounded like the preset itself
    (lambda m: m.update(stages={"quantize": {"calib_samples": "abc"}}), "quantize.calib_samples must be an integer"),
    (lambda m: m.update(stages={"quantize": {"calib_samples": 10**30}}),
     r"quantize.calib_samples must be an integer in 1..100000"),
    (lambda m: m.update(stages={"build": {"max_batch": 10**30}}), r"build.max_batch must be an integer in 1..1024"),
    (lambda m: m.update(stages={"build": {"workspace": 1e300}}),
     "build.workspace must be a number above 0 and at most 1024"),
    (lambda m: m.update(stages={"deploy": {}}), "unknown section 'deploy'"),
    (lambda m: m.update(stages=[]), "stages .* must be a mapping"),
    (lambda m: m["input"].update(dynamic_batch="false"), "input.dynamic_batch must be true or false"),
    (lambda m: m["model"].pop("name"), "model.name is missing"),
    (lambda m: m.update(outputs=[]), "outputs must be a non-empty list"),
    (lambda m: m.update(format="hrdeploy-bundle/9"), "not an hrdeploy manifest"),
    (lambda m: m["artifacts"]["onnx"].update(precision="int4"), "precision must be one of fp32, fp16, int8"),
    (lambda m: m["artifacts"]["onnx"].update(file="model.txt"), "neither .onnx nor a TensorRT engine"),
    (lambda m: m["keypoints"].update(flip_pairs=[[1, 99]]), "keypoints.flip_pairs"),
])
def test_schema_errors_are_user_errors(tmp_path: Path, change, needle: str) -> None:
    root = _with(tiny_bundle(tmp_path / "b"), change)
    with pytest.raises(UserError, match=needle):
        Bundle.open(root)


def test_manifest_not_an_object(tmp_path: Path) -> None:
    root = tiny_bundle(tmp_path / "b")
    (root / MANIFEST).write_text("[]")
    with pytest.raises(UserError, match="must hold a JSON object, not list"):
        Bundle.open(root)


@pytest.mark.parametrize("file", ["/etc/passwd", "../outside.onnx", "sub/../../x.onnx", "link.onnx"])
def test_artifact_paths_are_confined(tmp_path: Path, file: str) -> None:
    root = tiny_bundle(tmp_path / "b")
    (tmp_path / "outside.onnx").write_bytes((root / "model.onnx").read_bytes())
    os.symlink(tmp_path / "outside.onnx", root / "link.onnx")
    _with(root, lambda m: m["artifacts"].update(evil={"file": file}))
    with pytest.raises(UserError, match="outside the bundle"):
        Bundle.open(root)


def test_symlink_inside_bundle_is_fine(tmp_path: Path) -> None:
    root = tiny_bundle(tmp_path / "b")
    os.symlink("model.onnx", root / "alias.onnx")
    assert Bundle.open(root).path("alias.onnx") == root / "alias.onnx"


def test_missing_artifact_names_the_stage(tmp_path: Path) -> None:
    b = Bundle.open(tiny_bundle(tmp_path / "b"))
    with pytest.raises(UserError, match="hrdeploy quantize .* --precision int8"):
        b.artifact("int8")
    (b.root / "model.onnx").unlink()
    with pytest.raises(UserError, match="recorded but its file model.onnx is missing"):
        b.artifact("onnx")


@pytest.mark.parametrize("content", [b"", b"\x00garbage" * 10, None])
def test_corrupt_onnx_is_a_user_error(tmp_path: Path, content: bytes | None) -> None:
    root = tiny_bundle(tmp_path / "b")
    data = (root / "model.onnx").read_bytes()
    (root / "model.onnx").write_bytes(content if content is not None else data[: len(data) // 2])
    b = Bundle.open(root)
    with pytest.raises(UserError, match="damaged or was replaced"):
        b.artifact("onnx")
    with pytest.raises(UserError, match="not a (readable|usable) ONNX model"):
        open_runner(b.artifacts["onnx"])  # the file itself, without the recorded hash


def test_record_artifact_and_section_are_atomic_and_merge(tmp_path: Path) -> None:
    root = tiny_bundle(tmp_path / "b")
    a, b = Bundle.open(root), Bundle.open(root)
    a.record_section("parity", {"passed": True}, key="validate")
    b.record_section("parity", {"passed": False}, key="int8")  # b re-reads: a's section survives
    (root / "model.int8.onnx").write_bytes((root / "model.onnx").read_bytes())
    b.record_artifact("int8", "model.int8.onnx", precision="int8", backend="ort")
    fresh = Bundle.open(root)
    assert fresh.section("parity") == {"validate": {"passed": True}, "int8": {"passed": False}}
    assert fresh.artifact("int8").info.backend == "ort" and set(fresh.artifacts) == {"onnx", "int8"}
    assert sorted(p.name for p in root.iterdir() if p.name.endswith(".tmp")) == []
    with pytest.raises(UserError, match="outside the bundle"):
        fresh.record_artifact("x", "../x.onnx")
    with pytest.raises(ValueError):
        fresh.record_section("input", {})


def test_lock_refuses_a_second_writer(tmp_path: Path) -> None:
    b = Bundle.open(tiny_bundle(tmp_path / "b"))
    with b.lock(), pytest.raises(UserError, match="being written by another hrdeploy process"):
        with hold_lock(b.root / LOCK, "bundle", timeout=0):
            pass


def test_lock_file_is_gone_after_a_write_and_a_killed_writers_lock_is_taken_over(tmp_path: Path) -> None:
    """Every writer (quantize, eval, validate, build) records through the bundle: no `.hrdeploy.lock` stays
    behind, and a writer killed while holding it does not block the next one."""
    import subprocess
    import sys

    b = Bundle.open(tiny_bundle(tmp_path / "b"))
    b.record_section("eval", {"passed": True})
    assert not (b.root / LOCK).exists()
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from hrdeploy.bundle import hold_lock; from pathlib import Path\n"
         "with hold_lock(Path(sys.argv[1]), 'bundle', 0):\n    print('held', flush=True); time.sleep(60)",
         str(b.root / LOCK)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(UserError, match="being written by another hrdeploy process"), \
                hold_lock(b.root / LOCK, "bundle", timeout=0):
            pass
    finally:
        holder.kill()
        holder.wait()
    assert (b.root / LOCK).exists()  # what a killed writer leaves
    b.record_section("eval", {"passed": False})
    assert b.section("eval") == {"passed": False} and not (b.root / LOCK).exists()


def test_is_bundle(tmp_path: Path) -> None:
    assert is_bundle(tiny_bundle(tmp_path / "b"))
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / MANIFEST).write_text(json.dumps({"format": "other"}))
    assert not is_bundle(tmp_path / "notes") and not is_bundle(tmp_path / "absent")
    assert tiny_manifest()["format"] == "hrdeploy-bundle/2"


def test_damaged_artifact_is_caught_by_its_sha256(tmp_path: Path) -> None:
    root = tiny_bundle(tmp_path / "b")
    data = (root / "model.onnx").read_bytes()
    (root / "model.onnx").write_bytes(data[:-1] + bytes([data[-1] ^ 1]))  # still parses; one byte differs
    with pytest.raises(UserError, match="damaged or was replaced.*hrdeploy export"):
        Bundle.open(root).artifact("onnx")


def test_minimal_manifest_opens_with_defaults(tmp_path: Path) -> None:
    root = tmp_path / "m"
    root.mkdir()
    (root / MANIFEST).write_text(json.dumps({
        "format": "hrdeploy-bundle/1",
        "model": {"name": "hrnetv2_w48", "task": "segmentation", "dataset": "cityscapes"},
        "input": {"height": 512, "width": 1024, "mean": [0.5] * 3, "std": [0.5] * 3},
        "outputs": [{"name": "logits", "stride": 4, "channels": 19}], "keypoints": None, "artifacts": {},
    }))
    b = Bundle.open(root)
    m, i = b.model, b.input
    assert (m.family, m.seed, m.checkpoint, i.name) == ("", 0, None, "input")
    assert b.input.shape == (1, 3, 512, 1024) and not b.is_pose and b.keypoints is None and b.artifacts == {}


def test_engine_profile_batch_range_is_bounded() -> None:
    from hrdeploy.bundle import profile_batch_range

    def profile(lo, hi) -> list:  # noqa: ANN001
        return [{"input": "input", "min": [lo, 3, 64, 48], "opt": [lo, 3, 64, 48], "max": [hi, 3, 64, 48]}]

    assert profile_batch_range(profile(1, 8)) == (1, 8)
    for lo, hi in ((10**30, 10**30), (1, 10**30), (0, 4), (8, 2), ("1", 8), (True, 8)):
        assert profile_batch_range(profile(lo, hi)) == (1, 1024)
    assert profile_batch_range(None) == profile_batch_range([]) == (1, 1024)


def test_an_empty_flock_lock_file_is_cleared_unless_it_is_held(tmp_path: Path) -> None:
    """A flock-based lock leaves an empty `.hrdeploy.lock` behind: the next write removes it (a soft lock would
    wait for an empty marker forever), but not while a process holds a flock on it."""
    import fcntl
    import time

    b = Bundle.open(tiny_bundle(tmp_path / "b"))
    leftover = b.root / LOCK
    leftover.write_bytes(b"")
    old = time.time() - 3600
    os.utime(leftover, (old, old))
    t0 = time.monotonic()
    b.record_section("eval", {"passed": True})
    assert time.monotonic() - t0 < 5 and not leftover.exists()

    leftover.write_bytes(b"")
    os.utime(leftover, (old, old))
    with open(leftover, "rb") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        with pytest.raises(UserError, match="being written by another hrdeploy process"), \
                hold_lock(leftover, "bundle", timeout=0):
            pass
    assert leftover.exists()


def test_reports_merge_under_the_lock_and_a_corrupt_one_is_an_error(tmp_path) -> None:
    b = Bundle.open(tiny_bundle(tmp_path / "b"))
    (b.root / "parity.json").write_text(json.dumps({"export": {"passed": True}}))
    merged = b.update_report("parity.json", "int8", {"passed": False})
    assert merged == {"export": {"passed": True}, "int8": {"passed": False}}
    assert json.loads((b.root / "parity.json").read_text()) == merged
    assert not (b.root / ".hrdeploy.lock").exists()
    for corrupt in ("{not json", "[1, 2]"):
        (b.root / "parity.json").write_text(corrupt)
        with pytest.raises(UserError, match="parity.json in bundle .* is not a JSON object"):
            b.update_report("parity.json", "int8", {"passed": True})
        assert (b.root / "parity.json").read_text() == corrupt
