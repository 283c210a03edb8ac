"""Export under stress: killed, interrupted, raced by a second export, or aimed at a folder that is not a
bundle. Nothing half-written may stay, nothing of the user's may go."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from tiny_bundles import tiny_bundle

from hrdeploy.cli import cli

EXPORT = [sys.executable, "-m", "hrdeploy.cli", "export", "lite_hrnet_18", "--input-size", "64x64"]


def _start(out: Path) -> subprocess.Popen:
    return subprocess.Popen([*EXPORT, "-o", str(out)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _work_dirs(out: Path) -> list[str]:
    return sorted(p.name for p in out.parent.iterdir() if p.name.startswith(f".{out.name}.") and p.is_dir())


def _wait_for_work_dir(proc: subprocess.Popen, out: Path, old: tuple[str, ...] = (), timeout: float = 120.0) -> None:
    """Until the export has made its own temporary folder (so it holds the lock and builds the model)."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if set(_work_dirs(out)) - set(old):
            return
        if proc.poll() is not None:
            raise AssertionError(f"export ended early ({proc.returncode}): {proc.communicate()}")
        time.sleep(0.05)
    proc.kill()
    raise AssertionError("export never started writing")


@pytest.mark.slow
def test_kill_then_interrupt_leave_nothing_behind(tmp_path: Path) -> None:
    out = tmp_path / "b"
    proc = _start(out)
    _wait_for_work_dir(proc, out)
    proc.send_signal(signal.SIGKILL)  # no chance to clean up
    proc.wait()
    stale = _work_dirs(out)
    assert not out.exists() and len(stale) == 1 and stale[0].endswith(".tmp")

    proc = _start(out)  # the next run removes the killed run's folder, then is interrupted itself
    _wait_for_work_dir(proc, out, old=tuple(stale))
    assert stale[0] not in _work_dirs(out)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert err.strip().splitlines()[-1] == "interrupted" and "Traceback" not in err
    assert sorted(os.listdir(tmp_path)) == []  # no bundle, no temporary folder, no lock file


@pytest.mark.slow
def test_second_export_into_the_same_folder_is_refused(tmp_path: Path, cli_runner) -> None:
    out = tmp_path / "b"
    first = _start(out)
    try:
        _wait_for_work_dir(first, out)
        result = cli_runner.invoke(cli, ["export", "lite_hrnet_18", "--input-size", "64x64", "-o", str(out)])
        assert result.exit_code == 2, result.output
        assert "is being written by another hrdeploy process" in result.stderr
        assert (out.parent / f".{out.name}.lock").exists() and len(_work_dirs(out)) == 1  # the first one's
    finally:
        first.send_signal(signal.SIGINT)
        first.communicate(timeout=120)
    assert first.returncode == 130
    assert sorted(os.listdir(tmp_path)) == []


@pytest.mark.parametrize("force", [False, True])
def test_force_never_replaces_a_folder_that_is_not_a_bundle(tmp_path: Path, cli_runner, force: bool) -> None:
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "todo.txt").write_text("mine\n")
    result = cli_runner.invoke(cli, ["export", "lite_hrnet_18", "-o", str(notes)] + (["--force"] if force else []))
    assert result.exit_code == 2 and "not an hrdeploy bundle" in result.stderr
    assert sorted(os.listdir(notes)) == ["todo.txt"] and (notes / "todo.txt").read_text() == "mine\n"
    assert sorted(os.listdir(tmp_path)) == ["notes"]


# Every command that reads a bundle, with {b} for the bundle folder.
BUNDLE_COMMANDS = [
    "doctor {b}", "build {b} --print-trtexec", "validate {b}", "bench {b}", "quantize {b} --precision fp16",
    "infer {img} {b} --out {out}", "eval {b} --ann {ann} --images {imgdir}",
]


@pytest.mark.parametrize("file", ["/etc/passwd", "../outside.onnx", "link.onnx"])
@pytest.mark.parametrize("command", BUNDLE_COMMANDS)
def test_manifest_paths_outside_the_bundle_are_refused(tmp_path: Path, cli_runner, command: str, file: str) -> None:
    import json

    import numpy as np
    from PIL import Image

    from hrdeploy.cli import COMMANDS

    if command.split()[0] not in COMMANDS:
        pytest.skip(f"no `{command.split()[0]}` command in this tree")
    b = tiny_bundle(tmp_path / "b", name="lite_hrnet_18", height=64, width=64)
    (tmp_path / "outside.onnx").write_bytes((b / "model.onnx").read_bytes())
    os.symlink(tmp_path / "outside.onnx", b / "link.onnx")
    m = json.loads((b / "manifest.json").read_text())
    m["artifacts"]["onnx"]["file"] = file
    (b / "manifest.json").write_text(json.dumps(m))
    (tmp_path / "imgs").mkdir()
    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(tmp_path / "imgs" / "a.png")
    (tmp_path / "ann.json").write_text(json.dumps({"images": [], "annotations": [], "categories": []}))
    line = command.format(b=b, img=tmp_path / "imgs" / "a.png", out=tmp_path / "pred", ann=tmp_path / "ann.json",
                          imgdir=tmp_path / "imgs")
    before = sorted(p.name for p in tmp_path.iterdir())
    result = cli_runner.invoke(cli, line.split())
    assert result.exit_code == 2, result.output
    assert "outside the bundle" in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == before


@pytest.mark.parametrize("case", ["parent_is_file", "not_writable", "checkpoint_missing", "huge_batch"])
def test_output_and_inputs_are_checked_before_the_model_is_built(tmp_path: Path, cli_runner, monkeypatch,
                                                                 case: str) -> None:
    import hrdeploy.export.bundle_export as bundle_export

    def never(*a, **k):
        raise AssertionError("the model was built before the inputs were checked")

    monkeypatch.setattr(bundle_export, "build_model", never)
    (tmp_path / "afile").write_text("x")
    args = ["export", "lite_hrnet_18", "-o", str(tmp_path / "out")]
    if case == "parent_is_file":
        args[3], expected = str(tmp_path / "afile" / "out"), "is a file, not a folder"
    elif case == "not_writable":  # root ignores permission bits, so the check itself is what is exercised
        real_access = os.access
        monkeypatch.setattr(os, "access", lambda p, mode: False if Path(p) == tmp_path else real_access(p, mode))
        expected = "is not writable"
    elif case == "checkpoint_missing":
        args += ["--checkpoint", str(tmp_path / "nope.pth")]
        expected = "nope.pth does not exist"
    else:
        args += ["--batch", "100000"]
        expected = r"batch must be 1\.\.1024"
    result = cli_runner.invoke(cli, args)
    assert result.exit_code == 2, result.output
    assert re.search(expected, result.stderr), result.stderr
    assert sorted(os.listdir(tmp_path)) == ["afile"]


def test_failed_export_removes_the_folders_it_created(tmp_path: Path, cli_runner, monkeypatch) -> None:
    import hrdeploy.export.bundle_export as bundle_export
    from hrdeploy.errors import UserError

    def fails(*a, **k):
        raise UserError("the network cannot be built here")

    monkeypatch.setattr(bundle_export, "build_model", fails)
    result = cli_runner.invoke(cli, ["export", "lite_hrnet_18", "-o", str(tmp_path / "new" / "deeper" / "b")])
    assert result.exit_code == 2 and "cannot be built here" in result.stderr
    assert os.listdir(tmp_path) == []
