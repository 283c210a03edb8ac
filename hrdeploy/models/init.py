"""Deterministic seeded initialisation that keeps activations at unit order through a network.

Upstream's training init (std 0.001 convs, BN at identity) makes outputs nearly constant, which would
hide numerical problems in parity and quantization tests. Here: Kaiming-normal convs and linears,
random BN affine parameters, then BN running statistics measured on a seeded forward pass, so every
BN normalises to unit variance at the default statistics of a normalised image.
"""

from __future__ import annotations

import torch
from torch import nn


@torch.no_grad()
def init_weights(model: nn.Module, seed: int = 0, calib_size: tuple[int, int] = (128, 128)) -> nn.Module:
    """Initialise `model` in place from `seed` and return it in eval mode."""
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
        saved = [(m.momentum, m.training) for m in bns]
        for m in bns:
            m.reset_running_stats()
            m.momentum = None  # cumulative average over the calibration batches
        model.train()
        for _ in range(2):
            model(torch.randn((2, 3, *calib_size), generator=gen))
        for m, (momentum, _) in zip(bns, saved):
            m.momentum = momentum
    return model.eval()
