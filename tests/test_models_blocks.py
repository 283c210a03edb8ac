"""SKConv, StripPooling, SPBlock (hrdeploy.models.blocks) and the strip_pool rewrite.

Export parity: torch.onnx.export(dynamo=True) with a dynamic batch, run in onnxruntime at batch 1 and 3
and two input sizes, against the *upstream* eager form.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.export import Dim

from hrdeploy.models.blocks import SKConv, SPBlock, StripPooling, apply_gate
from hrdeploy.rewrite import apply
from hrdeploy.rewrite.strip_pool import StripMean

SP_SIZES = [(60, 60), (120, 60)]  # divisible by 20 and 12, so StripPooling's square pools are exact
ANY_SIZES = [(40, 40), (56, 36)]


def randomized(module: nn.Module, seed: int = 0) -> nn.Module:
    """Seeded weights and BN statistics far from identity, in eval mode."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(0.3 * torch.randn(m.num_features, generator=gen))
                m.running_var.copy_(0.5 + torch.rand(m.num_features, generator=gen))
                m.weight.copy_(0.5 + torch.rand(m.num_features, generator=gen))
                m.bias.copy_(0.3 * torch.randn(m.num_features, generator=gen))
            elif isinstance(m, nn.Conv2d | nn.Linear):
                fan_in = m.weight[0].numel()
                m.weight.copy_(torch.randn(m.weight.shape, generator=gen) * (2.0 / fan_in) ** 0.5)
                if m.bias is not None:
                    m.bias.copy_(0.3 * torch.randn(m.bias.shape, generator=gen))
    return module.eval()


def rand(*shape: int, seed: int = 1) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


def export_onnx(model: nn.Module, sample: torch.Tensor, path: Path, dynamic_hw: bool) -> ort.InferenceSession:
    dims = {0: Dim("batch", min=1, max=16)}
    if dynamic_hw:
        dims.update({2: Dim("h", min=8, max=512), 3: Dim("w", min=8, max=512)})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            model, (sample,), input_names=["x"], output_names=["y"], dynamic_shapes={"x": dims},
            dynamo=True, verbose=False,
        )
    program.save(str(path))
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def rel_err(session: ort.InferenceSession, reference: nn.Module, x: torch.Tensor) -> float:
    with torch.no_grad():
        ref = reference(x).numpy()
    out = session.run(None, {"x": x.numpy()})[0]
    assert out.shape == ref.shape
    return float(np.abs(out - ref).max() / np.abs(ref).max())


# --------------------------------------------------------------------------------------------- SKConv


@pytest.mark.parametrize("features, M, G, r, d", [(64, 2, 32, 16, 32), (256, 3, 8, 4, 64)])
def test_skconv_parameters_follow_sknet(features: int, M: int, G: int, r: int, d: int) -> None:
    sd = SKConv(features, M=M, G=G, r=r).state_dict()
    for i in range(M):
        k = 3 + 2 * i
        assert sd[f"convs.{i}.0.weight"].shape == (features, features // G, k, k)
        assert sd[f"convs.{i}.0.bias"].shape == (features,)
        assert sd[f"convs.{i}.1.running_var"].shape == (features,)
        assert sd[f"fcs.{i}.weight"].shape == (features, d)
    assert sd["fc.weight"].shape == (d, features)  # d = max(C / r, L = 32)
    assert f"convs.{M}.0.weight" not in sd and f"fcs.{M}.weight" not in sd


def test_skconv_selects_between_branches() -> None:
    sk = randomized(SKConv(32, M=2, G=8, r=4))
    x = rand(2, 32, 12, 10)
    with torch.no_grad():
        b0, b1 = sk.convs[0](x), sk.convs[1](x)
        for head in sk.fcs:  # equal attention logits -> softmax 1/2 each
            head.weight.zero_()
            head.bias.zero_()
        torch.testing.assert_close(sk(x), 0.5 * (b0 + b1), rtol=1e-5, atol=1e-5)
        sk.fcs[1].bias.fill_(30.0)  # branch 1 wins the softmax everywhere
        torch.testing.assert_close(sk(x), b1, rtol=1e-5, atol=1e-5)
    # the global pool is a mean over H, W of each sample: sample 0's output ignores sample 1's input
    sk = randomized(SKConv(32, M=2, G=8, r=4))
    with torch.no_grad():
        y = sk(x)
        y_mixed = sk(torch.cat([x[:1], 3.0 * x[1:]]))
    torch.testing.assert_close(y[0], y_mixed[0])
    assert not torch.allclose(y[1], y_mixed[1])


# --------------------------------------------------------------------------------- StripPooling, SPBlock


def test_strip_pooling_parameters_follow_spnet() -> None:
    sp = StripPooling(32)
    sd = sp.state_dict()
    c = 8  # in_channels / 4
    assert sd["conv1_1.0.weight"].shape == (c, 32, 1, 1)
    assert sd["conv1_2.1.weight"].shape == (c,)
    assert sd["conv2_0.0.weight"].shape == (c, c, 3, 3)
    assert sd["conv2_3.0.weight"].shape == (c, c, 1, 3)
    assert sd["conv2_4.0.weight"].shape == (c, c, 3, 1)
    assert sd["conv3.0.weight"].shape == (32, 2 * c, 1, 1)
    assert sd["conv3.1.running_mean"].shape == (32,)
    assert not any(k.endswith(".bias") and k.split(".")[1] == "0" for k in sd)  # convs have no bias
    assert [p.output_size for p in (sp.pool1, sp.pool2, sp.pool3, sp.pool4)] == [20, 12, (1, None), (None, 1)]
    assert sp._up_kwargs == {"mode": "bilinear", "align_corners": True}
    assert isinstance(sp.conv2_5[2], nn.ReLU) and len(sp.conv2_0) == 2


def _strip_pooling_reference(sp: StripPooling, x: torch.Tensor, align_corners: bool) -> torch.Tensor:
    """SPNet's forward from the spec, with fixed-kernel avg_pool2d and means instead of adaptive pools."""
    h, w = x.shape[-2:]

    def up(t: torch.Tensor) -> torch.Tensor:
        return F.interpolate(t, (h, w), mode="bilinear", align_corners=align_corners)

    x1, x2 = sp.conv1_1(x), sp.conv1_2(x)
    p20 = up(sp.conv2_1(F.avg_pool2d(x1, (h // 20, w // 20))))
    p12 = up(sp.conv2_2(F.avg_pool2d(x1, (h // 12, w // 12))))
    pyramid = sp.conv2_5(torch.relu(sp.conv2_0(x1) + p20 + p12))
    row = up(sp.conv2_3(x2.mean(2, keepdim=True)))  # (1, W) strip
    col = up(sp.conv2_4(x2.mean(3, keepdim=True)))  # (H, 1) strip
    strips = sp.conv2_6(torch.relu(row + col))
    return torch.relu(x + sp.conv3(torch.cat([pyramid, strips], 1)))


def test_strip_pooling_matches_spnet_formula() -> None:
    sp = randomized(StripPooling(16))
    x = rand(2, 16, 120, 60)
    with torch.no_grad():
        y = sp(x)
        ref = _strip_pooling_reference(sp, x, align_corners=True)
        ref_false = _strip_pooling_reference(sp, x, align_corners=False)
    assert y.shape == x.shape
    torch.testing.assert_close(y, ref, rtol=1e-5, atol=1e-5)
    assert (y - ref_false).abs().max() > 1e-3  # align_corners=True is upstream's choice and it matters


def test_spblock_parameters_and_gate() -> None:
    spb = randomized(SPBlock(16, 16))
    sd = spb.state_dict()
    assert sd["conv1.weight"].shape == (16, 16, 3, 1)
    assert sd["conv2.weight"].shape == (16, 16, 1, 3)
    assert sd["conv3.weight"].shape == (16, 16, 1, 1) and sd["conv3.bias"].shape == (16,)
    assert "conv1.bias" not in sd and "conv2.bias" not in sd
    x = rand(2, 16, 20, 14)
    with torch.no_grad():
        gate = spb(x)
        # independent: row means -> (3,1) conv, column means -> (1,3) conv, broadcast sum
        rows = spb.bn1(spb.conv1(x.mean(dim=3, keepdim=True)))
        cols = spb.bn2(spb.conv2(x.mean(dim=2, keepdim=True)))
        ref = torch.sigmoid(spb.conv3(torch.relu(rows + cols)))
        gated = apply_gate(x, spb)
    torch.testing.assert_close(gate, ref, rtol=1e-5, atol=1e-6)
    assert gate.shape == x.shape and (gate > 0).all() and (gate < 1).all()
    torch.testing.assert_close(gated, x * ref, rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------------------------------ strip_pool rewrite


@pytest.mark.parametrize(
    "make, channels, sizes", [(lambda: StripPooling(16), 16, SP_SIZES), (lambda: SPBlock(8, 8), 8, ANY_SIZES)]
)
def test_strip_pool_rewrite_is_exact_and_keeps_parameters(make, channels: int, sizes) -> None:
    model = randomized(make())
    rewritten, applied = apply(model, ["strip_pool"])
    assert applied == ["strip_pool"]
    means = {name: m.dim for name, m in rewritten.named_modules() if isinstance(m, StripMean)}
    pools = {name: m.output_size for name, m in model.named_modules() if isinstance(m, nn.AdaptiveAvgPool2d)}
    dims = {(1, None): 2, (None, 1): 3}
    assert means == {n: dims[size] for n, size in pools.items() if size in dims} and len(means) == 2
    for name in pools:  # square pools are left alone
        if name not in means:
            assert isinstance(rewritten.get_submodule(name), nn.AdaptiveAvgPool2d)
    sd, sd_new = model.state_dict(), rewritten.state_dict()
    assert sd.keys() == sd_new.keys()
    assert all(torch.equal(sd[k], sd_new[k]) for k in sd)
    for h, w in [*sizes, (50, 70)]:  # 50x70: strip means stay exact at any size
        for batch in (1, 3):
            x = rand(batch, channels, h, w)
            with torch.no_grad():
                torch.testing.assert_close(rewritten(x), model(x), rtol=1e-5, atol=1e-5)


def test_strip_pool_rewrite_ignores_other_modules() -> None:
    _, applied = apply(SKConv(32, M=2, G=8, r=4), ["strip_pool"])
    assert applied == []


# --------------------------------------------------------------------------------- export to onnxruntime


def _parity(
    session: ort.InferenceSession, reference: nn.Module, channels: int, size: tuple[int, int]
) -> None:
    """ORT at batch 1 and 3 vs the upstream eager module: max abs error <= 1e-4 x max |out|."""
    for batch in (1, 3):
        err = rel_err(session, reference, rand(batch, channels, *size, seed=batch))
        assert err <= 1e-4, (batch, size, err)


def test_skconv_exports_with_dynamic_batch_and_size(tmp_path: Path) -> None:
    sk = randomized(SKConv(32, M=2, G=8, r=4))
    session = export_onnx(sk, rand(2, 32, 16, 16), tmp_path / "sk.onnx", dynamic_hw=True)
    for size in [(16, 16), (24, 20)]:
        _parity(session, sk, 32, size)


def test_rewritten_spblock_exports_with_dynamic_batch_and_size(tmp_path: Path) -> None:
    spb = randomized(SPBlock(8, 8))
    rewritten, _ = apply(spb, ["strip_pool"])
    session = export_onnx(rewritten, rand(2, 8, 40, 40), tmp_path / "spb.onnx", dynamic_hw=True)
    for size in ANY_SIZES:
        _parity(session, spb, 8, size)


@pytest.mark.parametrize("size", SP_SIZES)
def test_rewritten_strip_pooling_exports_with_dynamic_batch(tmp_path: Path, size: tuple[int, int]) -> None:
    sp = randomized(StripPooling(16))
    rewritten, _ = apply(sp, ["strip_pool"])
    # static H, W: the square AdaptiveAvgPool2d(20) / (12) become AveragePools with a baked kernel
    session = export_onnx(rewritten, rand(2, 16, *size), tmp_path / "sp.onnx", dynamic_hw=False)
    _parity(session, sp, 16, size)


def test_upstream_strip_pools_exported_at_one_size_are_wrong_at_another(tmp_path: Path) -> None:
    """What torch 2.13's dynamo exporter does with the upstream forms and H, W declared dynamic: it
    exports, with the pool kernels baked from the sample. At the sample size the graph is right; at
    another size StripPooling is silently wrong, and SPBlock's Expand fails in onnxruntime."""
    sp = randomized(StripPooling(16))
    session = export_onnx(sp, rand(2, 16, 60, 60), tmp_path / "sp_upstream.onnx", dynamic_hw=True)
    assert rel_err(session, sp, rand(1, 16, 60, 60)) <= 1e-4
    assert rel_err(session, sp, rand(3, 16, 120, 60)) > 1e-2  # >= 100x the parity tolerance

    spb = randomized(SPBlock(8, 8))
    session = export_onnx(spb, rand(2, 8, 40, 40), tmp_path / "spb_upstream.onnx", dynamic_hw=True)
    assert rel_err(session, spb, rand(3, 8, 40, 40)) <= 1e-4
    with pytest.raises(Exception, match="(?i)expand"):
        session.run(None, {"x": rand(3, 8, 80, 60).numpy()})
