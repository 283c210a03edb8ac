"""Deterministic seeded initialisation that keeps activations at unit order through a network.

Upstream's training init (std 0.001 convs, BN at identity) makes outputs nearly constant, which would
hide numerical problems in parity and quantization tests. Here: Kaiming-normal convs and linears,
random BN affine parameters, then BN running statistics measured on a seeded forward pass over
white noise and photo-like noise (smooth low-frequency fields plus fine grain), so every BN normalises to
unit order on both; the output heads are then scaled to unit output std. White noise alone
under-estimates the low-frequency energy of photos, which grows through deep networks (HRNet outputs ~30x
louder on a photo than on white noise); photo-like noise alone leaves white-noise inputs badly conditioned
in fp32.
"""

from __future__ import annotations

import torch
from torch import nn


@torch.no_grad()
def init_weights(model: nn.Module, seed: int = 0, calib_size: tuple[int, int] = (128, 128)) -> nn.Module:
    """Initialise `model` in place from `seed` and return it in eval mode (outputs of unit order)."""
    gen = torch.Generator().manual_seed(seed)
    for module in model.modules():
        for name, p in module.named_parameters(recurse=False):
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                if name == "weight":
                    p.copy_(0.75 + 0.5 * torch.rand(p.shape, generator=gen))
                else:
                    p.copy_(0.1 * torch.randn(p.shape, generator=gen))
            elif p.dim() >= 2:
                # Kaiming normal (fan_in, ReLU gain) for every weight of rank >= 2, dynamic kernels too.
                # Dynamic kernels are stacked [K, out, in/groups, k, k]: fan_in is per kernel.
                fan_in = p[0, 0].numel() if p.dim() == 5 else p[0].numel()
                p.copy_(torch.randn(p.shape, generator=gen) * (2.0 / fan_in) ** 0.5)
            else:
                p.copy_(0.1 * torch.randn(p.shape, generator=gen))
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if bns:
        momenta = [m.momentum for m in bns]
        for m in bns:
            m.reset_running_stats()
            m.momentum = None  # cumulative average over the calibration batches
        model.train()
        for _ in range(2):
            model(photo_like_noise(calib_size, gen))
        for m, momentum in zip(bns, momenta, strict=True):
            m.momentum = momentum
    # Families whose random init needs more (e.g. Dite-HRNet's gates) define refine_seeded_init on a module.
    for module in list(model.modules()):
        refine = getattr(module, "refine_seeded_init", None)
        if callable(refine):
            refine(model, gen, calib_size)
    model.eval()
    _normalise_heads(model, photo_like_noise(calib_size, gen))
    return model


def photo_like_noise(size: tuple[int, int], gen: torch.Generator) -> torch.Tensor:
    """A unit-variance batch of two: white noise, and smooth low-frequency fields with a little grain.

    BN statistics measured on both keep activations at unit order for seeded test inputs (white noise)
    and for normalised photos (mostly low frequencies) alike.
    """
    h, w = size
    white = torch.randn((1, 3, h, w), generator=gen)
    coarse = torch.randn((1, 3, max(h // 16, 2), max(w // 16, 2)), generator=gen)
    smooth = torch.nn.functional.interpolate(coarse, size=size, mode="bilinear", align_corners=False)
    smooth = smooth + 0.3 * torch.randn((1, 3, h, w), generator=gen)
    return torch.cat([white, smooth / smooth.std()])


@torch.no_grad()
def _normalise_heads(model: nn.Module, x: torch.Tensor) -> None:
    """Scale each conv whose output is a model output so that output has unit std on `x`.

    Residual streams and multi-branch fuse sums grow through deep HRNets even with calibrated BNs;
    the heads have no BN after them, so their outputs would carry that growth (std ~30 on a photo).
    """
    produced: dict[int, nn.Module] = {}
    hooks = [
        m.register_forward_hook(lambda mod, _inp, out: produced.__setitem__(id(out), mod))
        for m in model.modules()
        if isinstance(m, nn.Conv2d)
    ]
    try:
        out = model(x)
    finally:
        for h in hooks:
            h.remove()
    for tensor in out if isinstance(out, (tuple, list)) else (out,):
        head = produced.get(id(tensor))
        if head is not None and float(tensor.std()) > 0:
            scale = 1.0 / float(tensor.std())
            head.weight.mul_(scale)
            if head.bias is not None:
                head.bias.mul_(scale)
