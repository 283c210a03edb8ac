"""`hrdeploy triton-repo BUNDLE -o REPO`: a Triton Inference Server model repository for one artifact."""

from __future__ import annotations

from pathlib import Path

import click


@click.command("triton-repo")
@click.argument("bundle", type=click.Path(path_type=Path))
@click.option("-o", "--output", "repo", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Model repository directory (created if missing).")
@click.option("--artifact", default="onnx", show_default=True,
              help="Bundle artifact to serve: onnx, fp16, int8, engine_fp16, ...")
@click.option("--name", help="Triton model name [default: the bundle's model, suffixed with the artifact key].")
@click.option("--max-batch", type=int, help="max_batch_size [default: the artifact's max batch, else 8].")
@click.option("--instances", type=int, default=1, show_default=True, help="Model instances (instance_group count).")
@click.option("--max-queue-delay-us", type=int, default=100, show_default=True,
              help="Dynamic batcher: longest wait for more requests, in microseconds.")
@click.option("--device", type=click.Choice(["gpu", "cpu"]), default="gpu", show_default=True,
              help="instance_group kind (engines run on the GPU only).")
@click.option("--force", is_flag=True, help="Replace the config and model file of an existing REPO/NAME.")
def triton_repo_cmd(bundle: Path, repo: Path, artifact: str, name: str | None, max_batch: int | None, instances: int,
                    max_queue_delay_us: int, device: str, force: bool) -> None:
    """Write REPO/NAME/config.pbtxt and REPO/NAME/1/model.onnx (or model.plan for an engine).

    Backend onnxruntime for ONNX artifacts, tensorrt for engines; tensor names, dtypes and dims from the
    bundle; max_batch_size and dynamic batching from the artifact's batch range (a static-batch artifact gets
    max_batch_size 0 and its full shape). Serve it with the official tritonserver container (printed).
    """
    from hrdeploy.serve.batching import plan_batching
    from hrdeploy.serve.spec import serve_spec
    from hrdeploy.serve.triton_repo import default_model_name, docker_command, write_repo

    spec = serve_spec(bundle, artifact)
    batching = plan_batching(spec, max_batch, max_queue_delay_us)
    result = write_repo(spec, repo, name or default_model_name(spec), batching, instances=instances, device=device,
                        force=force)
    click.echo(result.text, nl=False)
    click.echo(f"wrote {result.config} and {', '.join(str(f) for f in result.files)}")
    click.echo(f"serve it on a GPU host:\n  {docker_command(repo)}")
