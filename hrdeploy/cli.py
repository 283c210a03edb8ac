"""The `hrdeploy` command line: a thin Click group.

Each command lives in hrdeploy/commands/<name>.py and is imported only when used (click's lazy-group
pattern), so `hrdeploy --help` never imports torch, onnxruntime or TensorRT. Expected failures are
`UserError`s: one line on stderr, exit status 2; `--debug` shows the traceback. Ctrl-C exits 130 (the
stages clean their temporary files on the way out).
"""

from __future__ import annotations

import importlib
import sys

import click

from hrdeploy import __version__
from hrdeploy.errors import UserError

INTERRUPTED = 130  # 128 + SIGINT, as shells report a Ctrl-C

# name -> (module, attribute, one-line help shown by `hrdeploy --help` without importing the module)
COMMANDS: dict[str, tuple[str, str, str]] = {
    "list": ("hrdeploy.commands.list_cmd", "list_cmd", "List the model zoo with parameter and MAC counts."),
    "export": ("hrdeploy.commands.export_cmd", "export_cmd", "Export a model to an ONNX bundle, checked for parity."),
    "quantize": ("hrdeploy.commands.quantize_cmd", "quantize_cmd", "Add an FP16 or INT8 (Q/DQ) ONNX to a bundle."),
    "build": ("hrdeploy.commands.build_cmd", "build_cmd", "Build a TensorRT engine from a bundle or ONNX."),
    "doctor": ("hrdeploy.commands.doctor_cmd", "doctor_cmd", "Lint an ONNX for TensorRT compatibility (no GPU)."),
    "eval": ("hrdeploy.commands.eval_cmd", "eval_cmd", "COCO keypoint AP of every artifact vs eager fp32."),
    "validate": ("hrdeploy.commands.validate_cmd", "validate_cmd", "Check every artifact of a bundle against eager."),
    "bench": ("hrdeploy.commands.bench_cmd", "bench_cmd", "Measure latency and throughput per backend and batch."),
    "infer": ("hrdeploy.commands.infer_cmd", "infer_cmd", "Run pose inference on images and draw keypoints."),
    "triton-repo": ("hrdeploy.commands.triton_repo_cmd", "triton_repo_cmd",
                    "Write a Triton model repository for a bundle artifact."),
    "serve": ("hrdeploy.commands.serve_cmd", "serve_cmd", "Serve a bundle on Triton (PyTriton) with dynamic batching."),
    "loadtest": ("hrdeploy.commands.loadtest_cmd", "loadtest_cmd", "Load-test a Triton server on this machine."),
}


class LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return [name for name, (module, _, _) in COMMANDS.items() if importlib.util.find_spec(module)]

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in COMMANDS:
            return None
        module, attr, _ = COMMANDS[cmd_name]
        if importlib.util.find_spec(module) is None:
            return None
        return getattr(importlib.import_module(module), attr)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows = [(name, COMMANDS[name][2]) for name in self.list_commands(ctx)]
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):  # noqa: ANN001, ANN201
        """Click's main, with usage errors on one line (`error: ...; see hrdeploy CMD --help`), exit 2."""
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        try:
            code = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except click.exceptions.NoArgsIsHelpError as err:
            err.show()
            sys.exit(err.exit_code)
        except click.UsageError as err:
            where = f"{err.ctx.command_path} --help" if err.ctx is not None else "hrdeploy --help"
            click.echo(f"error: {' '.join(err.format_message().split())} (see `{where}`)", err=True)
            sys.exit(err.exit_code)
        except click.ClickException as err:
            err.show()
            sys.exit(err.exit_code)
        except click.Abort:  # Ctrl-C while click itself was running (parsing, prompting)
            click.echo("interrupted", err=True)
            sys.exit(INTERRUPTED)
        sys.exit(code if isinstance(code, int) else 0)

    def invoke(self, ctx: click.Context):  # noqa: ANN201 - click's signature
        try:
            return super().invoke(ctx)
        except UserError as err:
            if ctx.meta.get("hrdeploy.debug"):
                raise
            click.echo("error: " + " ".join(str(err).split()), err=True)
            ctx.exit(err.exit_code)
        except KeyboardInterrupt:
            if ctx.meta.get("hrdeploy.debug"):
                raise
            click.echo("interrupted", err=True)
            ctx.exit(INTERRUPTED)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="hrdeploy")
@click.option("--debug", is_flag=True, help="Show tracebacks for expected errors.")
@click.pass_context
def cli(ctx: click.Context, debug: bool) -> None:
    """Export, quantize, build and validate HRNet-family pose networks."""
    ctx.meta["hrdeploy.debug"] = debug


def main() -> None:
    cli(prog_name="hrdeploy")


if __name__ == "__main__":
    sys.exit(main())
