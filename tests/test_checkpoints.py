"""Checkpoint formats round-trip into the reference networks; bad files are one-line UserErrors."""

from __future__ import annotations

import pickle

import pytest
import torch
from safetensors.torch import save_file

import hrdeploy
from hrdeploy.checkpoints import load_checkpoint
from hrdeploy.errors import UserError

NAME = "naive_lite_hrnet_18"  # the smallest zoo model


@pytest.fixture(scope="module")
def source():
    return hrdeploy.build_model(NAME, seed=7)


def _outputs_equal(a, b) -> bool:
    x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        return torch.equal(a(x), b(x))


@pytest.mark.parametrize("fmt", ["plain", "mmcv", "module_prefix", "mmpose1_head", "safetensors"])
def test_formats_round_trip(tmp_path, source, fmt):
    sd = source.state_dict()
    path = tmp_path / ("ckpt.safetensors" if fmt == "safetensors" else "ckpt.pth")
    if fmt == "plain":
        torch.save(sd, path)
    elif fmt == "mmcv":
        torch.save({"meta": {"epoch": 210}, "state_dict": sd}, path)
    elif fmt == "module_prefix":
        torch.save({f"module.{k}": v for k, v in sd.items()}, path)
    elif fmt == "mmpose1_head":
        renamed = {k.replace("keypoint_head.", "head.", 1): v for k, v in sd.items()}
        assert any(k.startswith("head.") for k in renamed)
        torch.save({"state_dict": renamed}, path)
    else:
        save_file({k: v.contiguous() for k, v in sd.items()}, str(path))
    loaded = hrdeploy.build_model(NAME, checkpoint=path)
    assert _outputs_equal(source, loaded)
    fresh = hrdeploy.build_model(NAME, seed=1)
    assert not _outputs_equal(source, fresh)


def test_missing_bn_counters_are_tolerated(tmp_path, source):
    sd = {k: v for k, v in source.state_dict().items() if not k.endswith("num_batches_tracked")}
    torch.save(sd, tmp_path / "old.pth")
    assert _outputs_equal(source, hrdeploy.build_model(NAME, checkpoint=tmp_path / "old.pth"))


def test_checkpoint_of_another_model_lists_keys(tmp_path):
    torch.save(hrdeploy.build_model("lite_hrnet_18").state_dict(), tmp_path / "l18.pth")
    with pytest.raises(UserError) as err:
        load_checkpoint(hrdeploy.get_spec(NAME).builder(17), tmp_path / "l18.pth", NAME)
    msg = str(err.value)
    assert "does not fit naive_lite_hrnet_18" in msg and "unexpected" in msg and "(+" in msg
    assert "\n" not in msg


class Evil:
    def __reduce__(self):
        return (print, ("pwned",))


@pytest.mark.parametrize(
    "content, expected",
    [
        (b"not a checkpoint at all", "is not a PyTorch checkpoint"),
        (b"hello world, these are my notes\n", "is not a PyTorch checkpoint"),
        (pickle.dumps({"weights": Evil()}, protocol=2), r"would run code \((builtins\.)?print\) .* refused it"),
    ],
)
def test_bad_files(tmp_path, content, expected, capfd):
    path = tmp_path / "bad.pth"
    path.write_bytes(content)
    with pytest.raises(UserError, match=expected) as err:
        hrdeploy.build_model(NAME, checkpoint=path)
    msg = str(err.value)
    assert "\n" not in msg and "Re-running" not in msg  # our words, not torch's advice to drop weights_only
    assert "pwned" not in capfd.readouterr().out


def test_non_tensor_and_missing(tmp_path):
    torch.save({"state_dict": {"a": 1}}, tmp_path / "x.pth")
    with pytest.raises(UserError, match="is a int, not a tensor"):
        hrdeploy.build_model(NAME, checkpoint=tmp_path / "x.pth")
    with pytest.raises(UserError, match="does not exist"):
        hrdeploy.build_model(NAME, checkpoint=tmp_path / "nope.pth")
