"""Load upstream, mmpose 0.x / 1.x and safetensors checkpoints into a reference network, safely.

`.pth`/`.pt` files go through torch.load(weights_only=True): a pickle that needs arbitrary code is
refused, never executed. Loading is strict: a mismatch is one UserError listing up to 10 keys.
"""

from __future__ import annotations

import os
import pickle
import re
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from hrdeploy.errors import UserError
from hrdeploy.io import not_a_file, os_reason

MAX_LISTED = 10
# Containers that wrap the state_dict in mmcv / mmpose / plain training checkpoints, in lookup order.
_WRAPPERS = ("state_dict", "model", "module")


# torch's weights-only unpickler names the callable it blocked: "Unsupported global: GLOBAL posix.system" (older)
# or "unsupported GLOBAL posix.system whose module ..." (torch 2.13).
_GLOBAL = re.compile(r"unsupported global:?\s+(?:GLOBAL\s+)?([\w.]+)", re.IGNORECASE)


def refused_pickle(path: str | os.PathLike, name: str) -> UserError:
    """The error for a pickle that needs code execution to load (never run, never offered to run)."""
    return UserError(
        f"{path} is a pickle that would run code ({name}) while loading, so hrdeploy refused it: checkpoints "
        "may only hold tensors. If you trust its source, convert it once to plain weights, e.g. "
        "`python -c \"import torch; sd = torch.load('IN.pth', weights_only=False); "
        "torch.save(sd.get('state_dict', sd), 'OUT.pth')\"` (or save_file from safetensors.torch), "
        "and pass OUT.pth"
    )


def _first_line(err: BaseException) -> str:
    return (str(err).strip().splitlines() or [type(err).__name__])[0][:200]


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read a checkpoint file into a flat {key: tensor} dict (wrappers and `module.` prefixes removed)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint {path} {not_a_file(path)}; pass the path of a .pth or .safetensors file")
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            obj: object = load_file(str(path))
        except (SafetensorError, OSError, ValueError) as err:
            raise UserError(f"{path} is not a readable safetensors file ({_first_line(err)})") from err
    else:
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True)
        except OSError as err:  # the file itself could not be read (permissions, I/O)
            raise UserError(f"cannot read checkpoint {path} ({os_reason(err, path)}); pass a file you can read") \
                from err
        except pickle.UnpicklingError as err:
            found = _GLOBAL.search(str(err))
            if found:  # the pickle names a callable that would run while loading
                raise refused_pickle(path, found.group(1)) from err
            raise UserError(
                f"{path} is not a PyTorch checkpoint (not a weights-only pickle); pass a .pth/.pt state_dict "
                "or a .safetensors file"
            ) from err
        except Exception as err:  # a text or foreign file fails anywhere inside torch.load (KeyError, EOFError...)
            raise UserError(
                f"{path} is not a PyTorch checkpoint (torch.load failed with {type(err).__name__}); "
                "pass a .pth/.pt state_dict or a .safetensors file"
            ) from err
    for key in _WRAPPERS:
        if isinstance(obj, Mapping) and isinstance(obj.get(key), Mapping):
            obj = obj[key]
            break
    if not isinstance(obj, Mapping) or not obj:
        raise UserError(f"{path} holds no state_dict (found {type(obj).__name__}); pass a model checkpoint")
    state = {}
    for key, value in obj.items():
        if not isinstance(value, torch.Tensor):
            raise UserError(f"{path}: entry {key!r} is a {type(value).__name__}, not a tensor; pass a state_dict")
        state[key.removeprefix("module.")] = value
    return state


def adapt_keys(state: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """Map known renamings onto the model's layout: mmpose 1.x `head.` -> mmpose 0.x `keypoint_head.`."""
    expected = model.state_dict().keys()
    if any(k.startswith("keypoint_head.") for k in expected) and any(k.startswith("head.") for k in state):
        return {("keypoint_" + k if k.startswith("head.") else k): v for k, v in state.items()}
    return state


def load_checkpoint(model: nn.Module, path: str | os.PathLike, model_name: str = "the model") -> nn.Module:
    """Load `path` into `model` strictly; one UserError lists up to 10 mismatched keys."""
    state = adapt_keys(read_state_dict(path), model)
    expected = model.state_dict()
    # BN step counters are absent from checkpoints saved before PyTorch 0.4.1; they do not affect eval.
    for key, value in expected.items():
        if key.endswith("num_batches_tracked") and key not in state:
            state[key] = value
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    mismatched = [
        f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state and state[k].shape != v.shape
    ]
    if missing or unexpected or mismatched:
        parts = []
        for label, keys in (("missing", missing), ("unexpected", unexpected), ("shape mismatch", mismatched)):
            if keys:
                more = f" (+{len(keys) - MAX_LISTED} more)" if len(keys) > MAX_LISTED else ""
                shown = ", ".join(keys[:MAX_LISTED]) + more
                parts.append(f"{len(keys)} {label}: {shown}")
        raise UserError(
            f"checkpoint {path} does not fit {model_name} ({'; '.join(parts)}); "
            "check the model name and --dataset"
        )
    model.load_state_dict(state, strict=True)
    return model
