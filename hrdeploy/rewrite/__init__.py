"""Export-friendly rewrites: module-level transforms applied to an eager model after loading.

Each rewrite lives in its own file in this package and registers itself with `@register_rewrite`.
A rewrite replaces every module it matches with an export-friendly module holding the *same*
parameter tensors, so the rewritten model computes the same function (its docstring says the
identity used and when it is exact) and checkpoints keep loading into the upstream form.
"""

from hrdeploy.rewrite.base import Rewrite, apply, list_rewrites, register_rewrite

__all__ = ["Rewrite", "apply", "list_rewrites", "register_rewrite"]
