"""`hrdeploy serve BUNDLE`: serve an artifact on Triton Inference Server (PyTriton) with dynamic batching."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import click

from hrdeploy.serve.batching import DEFAULT_MAX_BOXES, DEFAULT_PIPELINE_INSTANCES

if TYPE_CHECKING:
    from hrdeploy.serve.batching import Batching
    from hrdeploy.serve.pipeline import PipelineConfig
    from hrdeploy.serve.server import Endpoints
    from hrdeploy.serve.spec import ServeSpec


@click.command("serve")
@click.argument("bundle", type=click.Path(path_type=Path))
@click.option("--artifact", default="onnx", show_default=True,
              help="Bundle artifact to serve: onnx, fp16, int8, engine_fp16, ...")
@click.option("--name", help="Triton model name [default: the bundle's model, suffixed with the artifact key].")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", type=click.IntRange(1, 65535), default=8000, show_default=True, help="HTTP port.")
@click.option("--grpc-port", type=click.IntRange(1, 65535), help="gRPC port [default: --port + 1].")
@click.option("--metrics-port", type=click.IntRange(1, 65535), help="Prometheus metrics port [default: --port + 2].")
@click.option("--max-batch", type=int, help="Dynamic batcher's max batch [default: the artifact's max, else 8; with "
                                            "--pipeline: else the larger of 8 and --max-boxes].")
@click.option("--max-queue-delay-us", type=int, default=100, show_default=True,
              help="Dynamic batcher: longest wait for more requests, in microseconds.")
@click.option("--instances", type=int, default=1, show_default=True, help="Model instances, one runner each.")
@click.option("--threads", type=click.IntRange(min=1), help="onnxruntime intra-op threads per instance.")
@click.option("--pipeline", is_flag=True,
              help="Also serve the keypoint pipeline as NAME_pipeline: IMAGE (encoded bytes) and BOXES (FP32 [N, 4] "
                   "x1,y1,x2,y2) in, KEYPOINTS (FP32 [N, K, 3] x, y, score in image pixels) out.")
@click.option("--max-boxes", type=int, help="Pipeline: most person boxes per request, within the network's max batch "
                                            f"[default: {DEFAULT_MAX_BOXES}, or the max batch if smaller].")
@click.option("--pipeline-instances", type=int, help="Pipeline: requests decoded, cropped and sent to the network at "
                                                     f"once [default: {DEFAULT_PIPELINE_INSTANCES}].")
@click.option("--dark", is_flag=True, help="Pipeline: DARK sub-pixel decoding instead of the quarter-pixel shift.")
@click.option("--log-file", type=click.Path(dir_okay=False, path_type=Path),
              help="Write tritonserver's log here [default: a temporary file removed at exit].")
@click.pass_context
def serve_cmd(ctx: click.Context, bundle: Path, artifact: str, name: str | None, host: str, port: int,
              grpc_port: int | None, metrics_port: int | None, max_batch: int | None, max_queue_delay_us: int,
              instances: int, threads: int | None, pipeline: bool, max_boxes: int | None,
              pipeline_instances: int | None, dark: bool, log_file: Path | None) -> None:
    """Serve a bundle artifact over HTTP and gRPC on a real Triton Inference Server (NVIDIA PyTriton).

    Triton's dynamic batcher groups requests into batches for hrdeploy's runner (onnxruntime; TensorRT for
    engines). Prometheus metrics at :METRICS_PORT/metrics, health at /v2/health/live and /v2/health/ready.
    Stops cleanly on SIGTERM (exit 0) or Ctrl-C / SIGINT (exit 130). Needs the serve extra
    (pip install 'hrdeploy[serve]'). With --pipeline, clients send photos and person boxes and get keypoints
    (hrdeploy infer's cropping and decoding on the server; crops of several requests share network batches).
    """
    from hrdeploy.serve.batching import plan_batching, plan_pipeline_batching
    from hrdeploy.serve.server import Endpoints, serve
    from hrdeploy.serve.spec import serve_spec
    from hrdeploy.serve.triton_repo import check_model_name, default_model_name

    spec = serve_spec(bundle, artifact)
    _check_pipeline_options(pipeline, dark, max_boxes, pipeline_instances)
    cfg = None
    if pipeline:
        pipeline_instances = pipeline_instances or DEFAULT_PIPELINE_INSTANCES
        batching, max_boxes = plan_pipeline_batching(spec, max_batch, max_boxes, max_queue_delay_us)
        cfg = _pipeline_config(bundle, max_boxes, dark)
    else:
        batching = plan_batching(spec, max_batch, max_queue_delay_us)
    served = _Served(spec, batching, check_model_name(name or default_model_name(spec)), instances, cfg,
                     pipeline_instances)
    endpoints = Endpoints(host, port, grpc_port or port + 1, metrics_port or port + 2)
    code = serve(spec, served.model, batching, endpoints, instances=instances, threads=threads, log_file=log_file,
                 on_ready=served.announce, pipeline=cfg, pipeline_instances=pipeline_instances or 1)
    click.echo("stopped", err=True)
    ctx.exit(code)


def _check_pipeline_options(pipeline: bool, dark: bool, max_boxes: int | None, pipeline_instances: int | None) -> None:
    """A UserError when options of the keypoint pipeline are given without --pipeline."""
    if not pipeline and (dark or max_boxes is not None or pipeline_instances is not None):
        from hrdeploy.errors import UserError

        raise UserError("--dark, --max-boxes and --pipeline-instances configure the keypoint pipeline; add --pipeline")


def _pipeline_config(bundle: Path, max_boxes: int, dark: bool) -> PipelineConfig:
    """The keypoint pipeline's cropping and decoding, from the bundle's model."""
    from hrdeploy.bundle import Bundle
    from hrdeploy.serve.pipeline import pipeline_config

    return pipeline_config(Bundle.open(bundle), max_boxes, dark)


@dataclass(frozen=True)
class _Served:
    """What `serve` serves, to announce once tritonserver is ready: the artifact as `model`, its batching, and
    the keypoint pipeline (None without --pipeline)."""

    spec: ServeSpec
    batching: Batching
    model: str
    instances: int
    pipeline: PipelineConfig | None
    pipeline_instances: int | None

    def announce(self, e: Endpoints) -> None:
        """Print the models, their endpoints and how to load-test them."""
        b = self.batching
        batch = (f"dynamic batching up to {b.max_batch_size} (preferred {list(b.preferred)}, "
                 f"queue delay {b.max_queue_delay_us} us)" if b.max_batch_size else
                 f"static batch {self.spec.static_batch}, no batching")
        click.echo(f"serving {self.spec.path} as model {self.model!r}: {batch}, {self.instances} instance(s)")
        click.echo(f"  HTTP    {e.http}/v2/models/{self.model}/infer   health {e.http}/v2/health/ready")
        click.echo(f"  gRPC    {e.grpc}")
        click.echo(f"  metrics {e.metrics}")
        if self.pipeline is None:
            click.echo(f"ready; load test: hrdeploy loadtest {e.http} --model {self.model}   (Ctrl-C or SIGTERM stops)")
            return
        from hrdeploy.serve.pipeline import pipeline_model_name

        cfg, name = self.pipeline, pipeline_model_name(self.model)
        h, w = cfg.input_hw
        click.echo(f"pipeline {name!r}: IMAGE + BOXES (up to {cfg.max_boxes}) -> KEYPOINTS "
                   f"[N, {cfg.num_keypoints}, 3], crops {h}x{w}, {cfg.post_process} decoding, "
                   f"{self.pipeline_instances} instance(s)")
        click.echo(f"ready; load test: hrdeploy loadtest {e.http} --model {name} --pipeline "
                   "--images DIR [--ann COCO.json]   (Ctrl-C or SIGTERM stops)")
