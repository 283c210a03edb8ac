"""Rewrite registry and the `apply` walker."""

from __future__ import annotations

import copy
import importlib
import pkgutil
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from torch import nn


@dataclass(frozen=True)
class Rewrite:
    """`matches(module)` selects upstream modules; `replace(module)` returns the export-friendly one."""

    name: str
    matches: Callable[[nn.Module], bool]
    replace: Callable[[nn.Module], nn.Module]
    doc: str = ""


_REWRITES: dict[str, Rewrite] = {}
_LOADED = False


def register_rewrite(name: str, matches: Callable[[nn.Module], bool]) -> Callable:
    """Decorator over a `replace(module) -> module` function."""

    def wrap(replace: Callable[[nn.Module], nn.Module]) -> Callable[[nn.Module], nn.Module]:
        if name in _REWRITES:
            raise ValueError(f"rewrite {name!r} registered twice")
        _REWRITES[name] = Rewrite(name, matches, replace, (replace.__doc__ or "").strip())
        return replace

    return wrap


def _load_all() -> None:
    global _LOADED
    if not _LOADED:
        import hrdeploy.rewrite as pkg

        for info in pkgutil.iter_modules(pkg.__path__):
            if info.name != "base":
                importlib.import_module(f"hrdeploy.rewrite.{info.name}")
        _LOADED = True


def list_rewrites() -> list[Rewrite]:
    _load_all()
    return list(_REWRITES.values())


def apply(
    model: nn.Module, names: Iterable[str] | None = None, inplace: bool = False
) -> tuple[nn.Module, list[str]]:
    """Apply the named rewrites (default: all) to a copy of `model`.

    Returns the rewritten model and the names of the rewrites that matched at least one module,
    in registry order. Modules are matched top-down; a replaced module's children are not visited.
    """
    _load_all()
    selected = [_REWRITES[n] for n in names] if names is not None else list(_REWRITES.values())
    if not inplace:
        model = copy.deepcopy(model)
    applied: list[str] = []
    for rw in selected:
        if _replace_in(model, rw):
            applied.append(rw.name)
    return model.eval(), applied


def _replace_in(parent: nn.Module, rw: Rewrite) -> bool:
    hit = False
    for child_name, child in list(parent.named_children()):
        if rw.matches(child):
            setattr(parent, child_name, rw.replace(child))
            hit = True
        else:
            hit = _replace_in(child, rw) or hit
    return hit
