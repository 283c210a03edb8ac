"""`hrdeploy build DIR|MODEL.onnx`: a TensorRT engine from a bundle (or a bare ONNX)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import click

from hrdeploy.commands.stage_presets import OPENED, bundle_argument

if TYPE_CHECKING:
    from hrdeploy.engine.plan import BuildOptions, Source


@click.command("build")
@bundle_argument("source", "build", type=click.Path(path_type=Path))
@click.option("--precision", type=click.Choice(["fp32", "fp16", "int8"]), default="fp16", show_default=True,
              help="Engine precision. INT8 always comes from a Q/DQ ONNX (hrdeploy quantize).")
@click.option("--min-batch", type=click.IntRange(min=1), help="Profile minimum batch [default: 1].")
@click.option("--opt-batch", type=click.IntRange(min=1), help="Batch TensorRT tunes for [default: max/2].")
@click.option("--max-batch", type=click.IntRange(min=1), help="Profile maximum batch [default: opt or 1].")
@click.option("--workspace", "workspace_gib", type=click.FloatRange(min=0, min_open=True), metavar="GiB",
              help="Workspace memory-pool limit in GiB [default: TensorRT's].")
@click.option("--timing-cache", type=click.Path(dir_okay=False, path_type=Path),
              help="Timing cache file: read when it exists, updated after the build.")
@click.option("--builder-opt-level", type=click.IntRange(0, 5), help="Builder optimization level 0-5 [TRT: 3].")
@click.option("--dla-core", type=click.IntRange(min=0), help="Build for this DLA core (Jetson; fp16/int8).")
@click.option("--gpu-fallback", is_flag=True, help="With --dla-core: let layers DLA cannot run fall back to GPU.")
@click.option("--version-compatible", is_flag=True, help="Engine loads in this and later TensorRT versions.")
@click.option("--hardware-compat", type=click.Choice(["ampere+", "same-cc"]),
              help="Engine runs on every Ampere+ GPU, or every GPU of the same compute capability.")
@click.option("--precision-from", type=click.Choice(["flags", "onnx"]),
              help="TRT 10: builder flags on the FP32 ONNX (default) or a strongly typed build of the "
                   "fp16/int8 ONNX. TRT 11: always onnx.")
@click.option("--trt", "trt_gen", type=click.Choice(["10", "11"]),
              help="TensorRT generation to plan for [default: the installed one; with --print-trtexec and "
                   "none installed: both].")
@click.option("--print-trtexec", is_flag=True, help="Print the equivalent trtexec command(s) and exit.")
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path),
              help="Engine file [default: DIR/model.<precision>.engine].")
@click.pass_context
def build_cmd(ctx: click.Context, source: Path, trt_gen: str | None, print_trtexec: bool,
              **options) -> None:  # noqa: ANN003
    """Build a TensorRT engine from bundle DIR (or MODEL.onnx).

    Writes model.<precision>.engine atomically, <engine>.json with the TensorRT version, GPU, profile and
    flags, and records the engine in the manifest. With --print-trtexec, prints the equivalent trtexec
    command instead; that needs neither TensorRT nor a GPU. Options not given on the command line come
    from the `build` section of the preset the bundle was exported with (`hrdeploy export --config`).
    """
    from hrdeploy.engine.plan import BuildOptions, describe_source
    from hrdeploy.engine.version import installed_tensorrt_version

    opts = BuildOptions(**options)
    src = describe_source(ctx.meta.get(OPENED) or source)  # the bundle the argument opened, recorded into later
    installed = installed_tensorrt_version()
    if print_trtexec:
        _print_trtexec(src, opts, trt_gen, installed)
    else:
        _build(src, opts, trt_gen)


def _print_trtexec(src: Source, opts: BuildOptions, trt_gen: str | None, installed: str | None) -> None:
    """Print the trtexec command of each generation asked for (both when none is asked or installed); one
    that cannot do the build is a comment, unless it is the only one."""
    from hrdeploy.engine.plan import make_plan
    from hrdeploy.engine.trtexec import trtexec_script
    from hrdeploy.engine.version import generation_of
    from hrdeploy.errors import UserError

    if trt_gen:
        gens = [int(trt_gen)]
    else:
        gens = [generation_of(installed)] if installed else [10, 11]
    scripts, errors = [], []
    for gen in gens:
        version = installed if installed and generation_of(installed) == gen else None
        try:
            scripts.append(trtexec_script(make_plan(src, opts, gen, version)))
        except UserError as err:
            if len(gens) == 1:
                raise
            errors.append(f"# TensorRT {gen}.x: not possible: {err}")
    if not scripts:
        raise UserError("; ".join(e.split(": not possible: ", 1)[1] for e in errors))
    click.echo("\n\n".join(scripts + errors))


def _build(src: Source, opts: BuildOptions, trt_gen: str | None) -> None:
    """Build the engine on this host and print what was made."""
    from hrdeploy.engine.builder import build_engine, check_build_host
    from hrdeploy.engine.plan import make_plan
    from hrdeploy.engine.version import generation_of
    from hrdeploy.io import check_writable

    # Say what is missing (TensorRT, a GPU) before anything else.
    _, version, _ = check_build_host(int(trt_gen) if trt_gen else None)
    plan = make_plan(src, opts, generation_of(version), version)
    check_writable(plan.engine, "the engine")
    for note in plan.notes:
        click.echo(f"note: {note}")
    result = build_engine(plan, src, log=click.echo)
    meta = result.metadata
    profile = ", ".join(f"{p['input']} {p['min']}..{p['max']} (opt {p['opt']})" for p in meta["profiles"])
    click.echo(
        f"{result.engine} ({meta['size_bytes'] / 1e6:.1f} MB, {meta['precision']}, TensorRT {meta['tensorrt']}, "
        f"{meta['gpu']} sm_{meta['compute_capability'].replace('.', '')}, {result.seconds:.1f} s); profile {profile}"
    )
