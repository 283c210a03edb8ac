"""`hrdeploy loadtest URL --model NAME`: bounded load against a Triton server on this machine."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from hrdeploy.errors import UserError
from hrdeploy.serve.batching import DEFAULT_MAX_BOXES

if TYPE_CHECKING:
    from hrdeploy.serve.loadtest import LoadResult, ModelInput, PipelineLoad, Target


@click.command("loadtest")
@click.argument("url")
@click.option("--model", required=True, help="Triton model name (`hrdeploy serve` prints it).")
@click.option("--concurrency", default="1,4,16", show_default=True, help="Comma list of concurrent clients.")
@click.option("--requests", type=int, help="Requests per concurrency level (all clients together).")
@click.option("--duration", type=float, help="Seconds per concurrency level.")
@click.option("--batch", type=click.IntRange(min=1), default=1, show_default=True, help="Images per request.")
@click.option("--pipeline", is_flag=True, help="Drive a keypoint pipeline (`serve --pipeline`, `triton-repo "
                                               "--pipeline`): real photos and person boxes in, keypoints out.")
@click.option("--images", "images_dir", type=click.Path(path_type=Path),
              help="Pipeline: folder of photos to send (their bytes, as stored).")
@click.option("--ann", type=click.Path(path_type=Path),
              help="Pipeline: COCO keypoint json of --images: its person boxes are sent and the answers scored (COCO "
                   "AP) [default: one whole-photo box per photo, no AP].")
@click.option("--network-model", help="Pipeline: the network model, for its average batch [default: --model without "
                                      "its _pipeline suffix].")
@click.option("--max-boxes", type=click.IntRange(min=1),
              help=f"Pipeline: most boxes per request (the server's --max-boxes); photos with more people are split "
                   f"[default: {DEFAULT_MAX_BOXES}].")
@click.option("--metrics-url", help="Triton's Prometheus endpoint, for the average batch per execution "
                                    "[default: `hrdeploy serve`'s, HTTP port + 2 or gRPC port + 1, if it answers].")
@click.option("--json", "json_file", type=click.Path(dir_okay=False, path_type=Path), default=Path("loadtest.json"),
              show_default=True, help="Where to write the JSON; the .md goes beside it.")
@click.pass_context
def loadtest_cmd(ctx: click.Context, url: str, model: str, concurrency: str, requests: int | None,
                 duration: float | None, batch: int, pipeline: bool, images_dir: Path | None, ann: Path | None,
                 network_model: str | None, max_boxes: int | None, metrics_url: str | None, json_file: Path) -> None:
    """Load a Triton server at URL (http://HOST:PORT or grpc://HOST:PORT, loopback only) at each concurrency.

    Reports throughput, p50/p90/p99 latency and failed requests per concurrency, and the average batch
    Triton's dynamic batcher formed (from its metrics). With --pipeline: photos and their person boxes in,
    people/s, the network's average batch in crops, and with --ann the COCO AP of the served keypoints.
    Exit status 1 when any request failed.
    """
    from hrdeploy.serve.loadtest import check_budget, parse_concurrency, parse_target

    target = parse_target(url)
    levels = parse_concurrency(concurrency)
    check_budget(requests, duration)
    if json_file.suffix.lower() != ".json":
        raise UserError(f"--json {json_file}: give a .json path (the .md is written beside it)")
    prepare = _PipelineLoad.prepare if pipeline else _NetworkLoad.prepare
    load = prepare(target, model, batch, _PipelineOptions(images_dir, ann, network_model, max_boxes))
    if metrics_url is None:
        metrics_url = _default_metrics_url(target, load.watched)
    results = [_run_level(load, c, requests, duration, metrics_url) for c in levels]
    target_info = {"url": url, "model": model, "protocol": target.protocol, "requests": requests,
                   "duration_s": duration, "metrics": metrics_url, **load.info()}
    _write_report(json_file, target_info, results)
    failed = sum(r.failures for r in results)
    if failed:
        click.echo(f"FAILED: {failed} of {sum(r.requests for r in results)} requests failed: "
                   f"{'; '.join(e for r in results for e in r.errors)}", err=True)
        ctx.exit(1)


@dataclass(frozen=True)
class _PipelineOptions:
    """The options that drive a keypoint pipeline (all unset for a network model)."""

    images_dir: Path | None
    ann: Path | None
    network_model: str | None
    max_boxes: int | None

    def given(self) -> bool:
        return bool(self.images_dir or self.ann or self.network_model or self.max_boxes)


@dataclass(frozen=True)
class _NetworkLoad:
    """Load on a network model: one seeded random tensor of its input shape per request; the model's own
    metrics give the average batch."""

    model: str
    batch: int
    inp: ModelInput
    make_call: Callable[[], Callable[[], object]]

    @classmethod
    def prepare(cls, target: Target, model: str, batch: int, options: _PipelineOptions) -> _NetworkLoad:
        """The load for `model` on the server, after refusing options that only a pipeline takes."""
        from hrdeploy.serve.loadtest import describe_model, triton_call_factory

        if options.given():
            raise UserError("--images, --ann, --network-model and --max-boxes drive a keypoint pipeline; "
                            "add --pipeline")
        inp = describe_model(target, model, batch)
        return cls(model, batch, inp, triton_call_factory(target, model, inp))

    @property
    def watched(self) -> str:
        """The model whose metrics give the average batch."""
        return self.model

    def run(self, concurrency: int, requests: int | None, duration: float | None) -> LoadResult:
        from hrdeploy.serve.loadtest import run_load

        return run_load(self.make_call, concurrency, requests=requests, duration=duration, batch=self.batch)

    def add_batch(self, r: LoadResult, before: dict[str, float], after: dict[str, float]) -> None:
        from hrdeploy.serve.loadtest import average_batch

        r.avg_batch = average_batch(before, after)

    def line(self, r: LoadResult) -> str:
        return f"{_counts(r)}, p50 {r.p50_ms} ms, p99 {r.p99_ms} ms, avg batch {r.avg_batch}"

    def info(self) -> dict:
        return {"batch": self.batch, "shape": list(self.inp.shape), "datatype": self.inp.datatype}


@dataclass(frozen=True)
class _PipelineLoad:
    """Load on a keypoint pipeline: photos and their person boxes in, keypoints out (scored with --ann); the
    network model's metrics give its average batch in crops and in requests."""

    load: PipelineLoad
    coco: Any  # CocoKeypoints of --ann, None without
    watched: str  # the network model
    options: _PipelineOptions

    @classmethod
    def prepare(cls, target: Target, model: str, batch: int, options: _PipelineOptions) -> _PipelineLoad:
        """The photo requests for pipeline `model` on the server; a UserError when it is not one."""
        from hrdeploy.serve.loadtest import PipelineLoad, check_pipeline_model, photo_requests
        from hrdeploy.serve.pipeline import network_model_name

        if batch != 1:
            raise UserError("--batch is for network models; a pipeline request carries one photo and its boxes")
        if options.images_dir is None:
            raise UserError("--pipeline needs --images DIR (photos to send), and --ann COCO.json to score the answers")
        check_pipeline_model(target, model)
        watched = options.network_model or network_model_name(model)
        photos, coco = photo_requests(options.images_dir, options.ann, options.max_boxes or DEFAULT_MAX_BOXES)
        return cls(PipelineLoad(target, model, photos), coco, watched, options)

    def run(self, concurrency: int, requests: int | None, duration: float | None) -> LoadResult:
        from hrdeploy.serve.loadtest import load_pipeline

        return load_pipeline(self.load, concurrency, self.coco, requests=requests, duration=duration)

    def add_batch(self, r: LoadResult, before: dict[str, float], after: dict[str, float]) -> None:
        from hrdeploy.serve.loadtest import average_batch

        r.network_batch = average_batch(before, after, "nv_inference_count")
        r.network_requests_per_batch = average_batch(before, after)

    def line(self, r: LoadResult) -> str:
        ap = f", AP {r.ap:.4f} (mean OKS {r.mean_oks:.4f})" if r.ap is not None else ""
        return (f"{_counts(r)}, {r.people_per_s:.1f} people/s, p50 {r.p50_ms} ms, p90 {r.p90_ms} ms, "
                f"p99 {r.p99_ms} ms, network batch {r.network_batch} crops ({r.network_requests_per_batch} "
                f"requests){ap}")

    def info(self) -> dict:
        photos, ann = self.load.requests, self.options.ann
        return {"pipeline": True, "network_model": self.watched, "images": str(self.options.images_dir),
                "ann": None if ann is None else str(ann), "photo_requests": len(photos),
                "people": sum(len(p.boxes) for p in photos)}


def _counts(r: LoadResult) -> str:
    """The start of a concurrency level's line: requests, failures and throughput."""
    return f"concurrency {r.concurrency:>3}: {r.requests} requests, {r.failures} failed, {r.throughput_rps:.1f} req/s"


def _default_metrics_url(target: Target, model: str) -> str | None:
    """`hrdeploy serve`'s metrics URL (HTTP on PORT, gRPC on PORT + 1, metrics on PORT + 2) if it answers for
    `model`; else None, with a note on stderr."""
    from hrdeploy.serve.loadtest import scrape_metrics

    guess = f"http://{target.address.rsplit(':', 1)[0]}:{target.port + (2 if target.protocol == 'http' else 1)}"
    try:
        scrape_metrics(f"{guess}/metrics", model)
    except UserError:
        click.echo(f"no Triton metrics at {guess}/metrics; pass --metrics-url for the average batch", err=True)
        return None
    return f"{guess}/metrics"


def _run_level(load: _NetworkLoad | _PipelineLoad, concurrency: int, requests: int | None, duration: float | None,
               metrics_url: str | None) -> LoadResult:
    """One concurrency level, with the average batch from the metrics scraped before and after; printed."""
    from hrdeploy.serve.loadtest import scrape_metrics

    before = scrape_metrics(metrics_url, load.watched) if metrics_url else {}
    r = load.run(concurrency, requests, duration)
    if metrics_url:
        load.add_batch(r, before, scrape_metrics(metrics_url, load.watched))
    click.echo(load.line(r))
    return r


def _write_report(json_file: Path, target_info: dict, results: list[LoadResult]) -> None:
    """The JSON report and its Markdown beside it."""
    from hrdeploy.bench.harness import cpu_name
    from hrdeploy.io import write_json, write_text
    from hrdeploy.serve.loadtest import as_dict, markdown

    report = {"target": target_info, "machine": f"{cpu_name()}", "results": [as_dict(r) for r in results]}
    write_json(json_file, report)
    md = json_file.with_suffix(".md")
    write_text(md, markdown(report))
    click.echo(f"wrote {json_file}, {md}")
