"""Which TensorRT is installed, and which generation (10.x or 11.x) its API belongs to.

`tensorrt` is imported lazily and only here or in the functions that need it: `import hrdeploy` never
imports it, and a host without it still gets plans, trtexec lines and the doctor lint.
"""

from __future__ import annotations

import importlib
import importlib.util
from types import ModuleType

from hrdeploy.errors import UserError

INSTALL_HINT = "pip install 'hrdeploy[tensorrt]' on a CUDA host (NVIDIA GPU or Jetson)"


def parse_version(version: str) -> tuple[int, ...]:
    """'10.3.0.26' -> (10, 3, 0, 26); non-numeric tails ('11.0.0rc1') are cut at the first non-digit."""
    parts: list[int] = []
    for piece in version.split("."):
        digits = ""
        for ch in piece:
            if not ch.isdigit():
                break
            digits += ch
        if not digits:
            break
        parts.append(int(digits))
    return tuple(parts)


def generation_of(version: str) -> int:
    """10 for TensorRT 10.x, 11 for 11.x (and later majors, which keep the strongly typed API)."""
    parsed = parse_version(version)
    major = parsed[0] if parsed else 0
    if major < 10:
        raise UserError(f"TensorRT {version} is too old: hrdeploy supports TensorRT 10.x and 11.x; {INSTALL_HINT}")
    return 10 if major == 10 else 11


def version_at_least(version: str, minimum: str) -> bool:
    return parse_version(version) >= parse_version(minimum)


def installed_tensorrt_version() -> str | None:
    """The installed TensorRT Python package's version, or None when it is absent or broken."""
    if importlib.util.find_spec("tensorrt") is None:
        return None
    try:
        trt = importlib.import_module("tensorrt")
    except Exception:  # a broken install (missing libnvinfer, ...) counts as absent here
        return None
    return str(getattr(trt, "__version__", "")) or None


def require_tensorrt(purpose: str = "building and running TensorRT engines") -> ModuleType:
    """Import tensorrt or raise the one-line UserError that says how to get it."""
    if importlib.util.find_spec("tensorrt") is None:
        raise UserError(f"tensorrt is not installed (needed for {purpose}); {INSTALL_HINT}")
    try:
        return importlib.import_module("tensorrt")
    except Exception as err:  # e.g. libnvinfer.so missing: say so in one line
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise UserError(
            f"tensorrt is installed but cannot be imported ({first}); reinstall it: {INSTALL_HINT}"
        ) from err
