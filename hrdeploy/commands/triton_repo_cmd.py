"""`hrdeploy triton-repo BUNDLE -o REPO`: a Triton Inference Server model repository for one artifact."""

from __future__ import annotations

from pathlib import Path

import click

from hrdeploy.serve.batching import DEFAULT_MAX_BOXES, DEFAULT_PIPELINE_INSTANCES


@click.command("triton-repo")
@click.argument("bundle", type=click.Path(path_type=Path))
@click.option("-o", "--output", "repo", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Model repository directory (created if missing).")
@click.option("--artifact", default="onnx", show_default=True,
              help="Bundle artifact to serve: onnx, fp16, int8, engine_fp16, ...")
@click.option("--name", help="Triton model name [default: the bundle's model, suffixed with the artifact key].")
@click.option("--max-batch", type=int, help="max_batch_size [default: the artifact's max batch, else 8; with "
                                            "--pipeline: else the larger of 8 and --max-boxes].")
@click.option("--instances", type=int, default=1, show_default=True, help="Model instances (instance_group count).")
@click.option("--max-queue-delay-us", type=int, default=100, show_default=True,
              help="Dynamic batcher: longest wait for more requests, in microseconds.")
@click.option("--device", type=click.Choice(["gpu", "cpu"]), default="gpu", show_default=True,
              help="instance_group kind (engines run on the GPU only).")
@click.option("--pipeline", is_flag=True,
              help="Also write the keypoint pipeline ensemble NAME_pipeline: IMAGE (encoded bytes) + BOXES (FP32 "
                   "[N, 4] x1,y1,x2,y2) in, KEYPOINTS (FP32 [N, K, 3]) out, with Python-backend pre/post steps.")
@click.option("--max-boxes", type=int,
              help=f"Pipeline: most person boxes per request [default: {DEFAULT_MAX_BOXES}, or the max batch if "
                   "smaller].")
@click.option("--pipeline-instances", type=int,
              help=f"Pipeline: instances of each Python step [default: {DEFAULT_PIPELINE_INSTANCES}].")
@click.option("--dark", is_flag=True, help="Pipeline: DARK sub-pixel decoding instead of the quarter-pixel shift.")
@click.option("--hrdeploy-source", type=click.Path(path_type=Path),
              help="Pipeline: hrdeploy checkout or sdist that the printed docker line installs in the container "
                   "[default: this installation's checkout, if any].")
@click.option("--force", is_flag=True, help="Replace the config and model file of an existing REPO/NAME.")
def triton_repo_cmd(bundle: Path, repo: Path, artifact: str, name: str | None, max_batch: int | None, instances: int,
                    max_queue_delay_us: int, device: str, pipeline: bool, max_boxes: int | None,
                    pipeline_instances: int | None, dark: bool, hrdeploy_source: Path | None, force: bool) -> None:
    """Write REPO/NAME/config.pbtxt and REPO/NAME/1/model.onnx (or model.plan for an engine).

    Backend onnxruntime for ONNX artifacts, tensorrt for engines; tensor names, dtypes and dims from the
    bundle; max_batch_size and dynamic batching from the artifact's batch range (a static-batch artifact gets
    max_batch_size 0 and its full shape). Serve it with the official tritonserver container (printed).
    With --pipeline, clients send photos and person boxes to NAME_pipeline and get keypoints: the Python steps
    run hrdeploy's own cropping and decoding, so the container needs hrdeploy installed (the printed line does it).
    """
    from hrdeploy.errors import UserError
    from hrdeploy.serve.batching import plan_batching, plan_pipeline_batching
    from hrdeploy.serve.spec import serve_spec
    from hrdeploy.serve.triton_repo import default_model_name, docker_command, write_pipeline_repo, write_repo

    spec = serve_spec(bundle, artifact)
    model = name or default_model_name(spec)
    if not pipeline:
        if dark or max_boxes is not None or pipeline_instances is not None or hrdeploy_source is not None:
            raise UserError("--dark, --max-boxes, --pipeline-instances and --hrdeploy-source configure the keypoint "
                            "pipeline; add --pipeline")
        batching = plan_batching(spec, max_batch, max_queue_delay_us)
        result = write_repo(spec, repo, model, batching, instances=instances, device=device, force=force)
        click.echo(result.text, nl=False)
        click.echo(f"wrote {result.config} and {', '.join(str(f) for f in result.files)}")
        click.echo(f"serve it on a GPU host:\n  {docker_command(repo)}")
        return
    from hrdeploy.bundle import Bundle
    from hrdeploy.serve.pipeline import pipeline_config

    batching, max_boxes = plan_pipeline_batching(spec, max_batch, max_boxes, max_queue_delay_us)
    cfg = pipeline_config(Bundle.open(bundle), max_boxes, dark)
    source = hrdeploy_source or _checkout()
    if source is not None and not (Path(source) / "pyproject.toml").is_file() and not Path(source).is_file():
        raise UserError(f"--hrdeploy-source {source}: give an hrdeploy checkout (with pyproject.toml) or an sdist file")
    results = write_pipeline_repo(spec, repo, model, batching, cfg, instances=instances, device=device,
                                  pipeline_instances=pipeline_instances or DEFAULT_PIPELINE_INSTANCES, force=force)
    for r in results:
        click.echo(f"wrote {r.config}" + (f" and {', '.join(str(f) for f in r.files)}" if r.files else ""))
    h, w = cfg.input_hw
    click.echo(f"pipeline {results[-1].model_dir.name!r}: IMAGE + BOXES (up to {cfg.max_boxes}) -> KEYPOINTS "
               f"[N, {cfg.num_keypoints}, 3]; crops {h}x{w}, network max batch {batching.max_batch_size}, "
               f"{cfg.post_process} decoding")
    if source is None:
        click.echo("the container needs hrdeploy: pass --hrdeploy-source CHECKOUT for the docker line that installs it")
        click.echo(f"serve it on a GPU host:\n  {docker_command(repo)}")
    else:
        click.echo(f"serve it on a GPU host (installs hrdeploy from {source} in the container):\n  "
                   f"{docker_command(repo, source=source)}")


def _checkout() -> Path | None:
    """The hrdeploy checkout this installation runs from (editable installs), else None."""
    root = Path(__file__).resolve().parents[2]
    return root if (root / "pyproject.toml").is_file() and (root / "hrdeploy").is_dir() else None
