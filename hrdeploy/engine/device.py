"""CUDA device discovery for TensorRT builds and runs: torch.cuda when it has CUDA, else cuda-python.

pycuda is never needed. Both back-ends are optional: with neither (or no GPU), `cuda_devices()` is empty
and `require_gpu()` raises the one-line UserError that says a CUDA host is needed.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass

from hrdeploy.errors import UserError

NO_GPU_HINT = (
    "run it on a CUDA host (NVIDIA GPU with its driver, or a Jetson), or use --print-trtexec to get the "
    "trtexec command for one"
)


@dataclass(frozen=True)
class DeviceInfo:
    index: int
    name: str
    compute_capability: str  # "8.6"
    total_memory: int = 0  # bytes

    @property
    def sm(self) -> str:
        return "sm_" + self.compute_capability.replace(".", "")


def cudart():  # noqa: ANN201 - the cuda-python runtime module, either layout
    """cuda-python's runtime API module (`cuda.bindings.runtime` or the older `cuda.cudart`), or None."""
    for name in ("cuda.bindings.runtime", "cuda.cudart"):
        try:
            return importlib.import_module(name)
        except ImportError:
            continue
    return None


def _torch_devices() -> list[DeviceInfo] | None:
    try:
        import torch
    except ImportError:
        return None
    if not torch.cuda.is_available():
        return None
    out = []
    for i in range(torch.cuda.device_count()):
        p = torch.cuda.get_device_properties(i)
        out.append(DeviceInfo(i, p.name, f"{p.major}.{p.minor}", int(p.total_memory)))
    return out


def _cuda_python_devices() -> list[DeviceInfo] | None:
    rt = cudart()
    if rt is None:
        return None
    err, count = rt.cudaGetDeviceCount()
    if int(err) != 0:
        return None
    out = []
    for i in range(count):
        err, props = rt.cudaGetDeviceProperties(i)
        if int(err) != 0:
            continue
        name = props.name.decode(errors="replace") if isinstance(props.name, bytes) else str(props.name)
        out.append(DeviceInfo(i, name.rstrip("\x00"), f"{props.major}.{props.minor}", int(props.totalGlobalMem)))
    return out


def cuda_devices() -> list[DeviceInfo]:
    """The visible CUDA devices ([] without a GPU, a driver, or a CUDA-capable torch / cuda-python)."""
    for probe in (_torch_devices, _cuda_python_devices):
        try:
            found = probe()
        except Exception:  # a broken driver / library counts as "no device" here; require_gpu says so
            found = None
        if found:
            return found
    return []


def require_gpu(index: int = 0, purpose: str = "building a TensorRT engine") -> DeviceInfo:
    devices = cuda_devices()
    if not devices:
        raise UserError(f"no CUDA GPU found ({purpose} needs one); {NO_GPU_HINT}")
    if index >= len(devices):
        raise UserError(f"CUDA device {index} does not exist ({len(devices)} visible); pick 0..{len(devices) - 1}")
    return devices[index]
