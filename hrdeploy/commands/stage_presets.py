"""Stage presets as Click defaults.

A bundle exported with `hrdeploy export --config PRESET.yaml` keeps the preset's sections for later stages
(manifest `stages`, checked against hrdeploy.presets). `quantize` and `build` read their section through their
BUNDLE argument: processed before every option (eager), it puts the section into the context's `default_map`,
so each option not given on the command line takes the preset's value, converted and range-checked by the
option's own type exactly as if it had been typed.
"""

from __future__ import annotations

from typing import Any

import click

OPENED = "hrdeploy.bundle"  # ctx.meta key of the Bundle the argument opened, for the command to reuse
# Preset keys whose option stores under another name.
PARAM_OF = {"build": {"workspace": "workspace_gib"}}


def bundle_argument(name: str, stage: str, **kwargs: Any) -> Any:
    """A Click argument naming the bundle (or a file, for which there is no preset) of `stage`'s command."""

    def load_preset(ctx: click.Context, _param: click.Parameter, value: Any) -> Any:
        from hrdeploy.bundle import Bundle, is_bundle

        if value is None or ctx.resilient_parsing or not is_bundle(value):
            return value
        bundle = ctx.meta[OPENED] = Bundle.open(value)
        preset = getattr(bundle.manifest.stages, stage).given()
        rename = PARAM_OF.get(stage, {})
        ctx.default_map = {**(ctx.default_map or {}), **{rename.get(k, k): v for k, v in preset.items()}}
        return value

    return click.argument(name, is_eager=True, callback=load_preset, **kwargs)
