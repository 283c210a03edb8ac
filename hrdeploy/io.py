"""Atomic file output: write to a temporary name in the same folder, then rename.

An interrupted run never leaves a half-written file that a later stage would trust.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path`; rename it onto `path` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.chmod(tmp_path, 0o644)  # mkstemp makes 0600 files; outputs are ordinary files
        os.replace(tmp_path, path)
    finally:
        tmp_path.unlink(missing_ok=True)


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json(path: str | os.PathLike, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def sha256(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def not_a_file(path: str | os.PathLike) -> str:
    """Why `path` is not a readable file, for an error message: "does not exist", "is a folder, not a file"."""
    path = Path(path)
    try:
        if path.is_dir():
            return "is a folder, not a file"
        if path.exists():
            return "is not a regular file"
    except OSError as err:
        return f"cannot be read ({err.strerror})"
    return "does not exist"


def os_reason(err: OSError, path: str | os.PathLike) -> str:
    """An OSError in a few words: "Permission denied", with the path it happened at when that is another one."""
    where = err.filename if err.filename is not None and os.path.abspath(err.filename) != os.path.abspath(path) else ""
    return f"{err.strerror or type(err).__name__}{f' at {where}' if where else ''}"


def console():  # noqa: ANN201 - rich.console.Console, imported lazily
    """A rich Console for command output; 120 columns wide when output is not a terminal (logs, CI)."""
    import sys

    from rich.console import Console

    return Console(width=None if sys.stdout.isatty() else 120)


def check_writable(path: str | os.PathLike, flag: str) -> Path:
    """UserError unless `path` (a file or folder to create or replace) can be written: its first existing
    ancestor must be a writable folder. Called before any expensive work."""
    from hrdeploy.errors import UserError

    path = Path(os.path.abspath(path))
    parent = path.parent
    try:
        while not parent.exists():
            parent = parent.parent
        if not parent.is_dir():
            raise UserError(f"cannot create {flag} {path}: {parent} is a file, not a folder; choose another path")
        writable = os.access(parent, os.W_OK | os.X_OK) and (not path.exists() or os.access(path, os.W_OK))
    except OSError as err:  # a folder on the way that this user may not enter
        raise UserError(f"cannot write {flag} {path} ({os_reason(err, path)}); choose another path") from err
    if not writable:
        raise UserError(f"cannot write {flag} {path}: {parent} is not writable; choose another path")
    return path
