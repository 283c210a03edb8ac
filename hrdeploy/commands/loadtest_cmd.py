"""`hrdeploy loadtest URL --model NAME`: bounded load against a Triton server on this machine."""

from __future__ import annotations

from pathlib import Path

import click

from hrdeploy.serve.batching import DEFAULT_MAX_BOXES


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
    from hrdeploy.bench.harness import cpu_name
    from hrdeploy.errors import UserError
    from hrdeploy.io import write_json, write_text
    from hrdeploy.serve.loadtest import (
        as_dict,
        average_batch,
        check_budget,
        describe_model,
        load_pipeline,
        markdown,
        parse_concurrency,
        parse_target,
        run_load,
        scrape_metrics,
        triton_call_factory,
    )

    target = parse_target(url)
    levels = parse_concurrency(concurrency)
    check_budget(requests, duration)
    if json_file.suffix.lower() != ".json":
        raise UserError(f"--json {json_file}: give a .json path (the .md is written beside it)")
    watched = model
    if pipeline:
        from hrdeploy.serve.loadtest import PipelineLoad, check_pipeline_model, photo_requests
        from hrdeploy.serve.pipeline import network_model_name

        if batch != 1:
            raise UserError("--batch is for network models; a pipeline request carries one photo and its boxes")
        if images_dir is None:
            raise UserError("--pipeline needs --images DIR (photos to send), and --ann COCO.json to score the answers")
        check_pipeline_model(target, model)
        watched = network_model or network_model_name(model)
        photos, coco = photo_requests(images_dir, ann, max_boxes or DEFAULT_MAX_BOXES)
        load = PipelineLoad(target, model, photos)
        inp = None
    else:
        if images_dir or ann or network_model or max_boxes:
            raise UserError("--images, --ann, --network-model and --max-boxes drive a keypoint pipeline; "
                            "add --pipeline")
        inp = describe_model(target, model, batch)
    if metrics_url is None:  # `hrdeploy serve` layout: HTTP on PORT, gRPC on PORT + 1, metrics on PORT + 2
        guess = f"http://{target.address.rsplit(':', 1)[0]}:{target.port + (2 if target.protocol == 'http' else 1)}"
        try:
            scrape_metrics(f"{guess}/metrics", watched)
            metrics_url = f"{guess}/metrics"
        except UserError:
            click.echo(f"no Triton metrics at {guess}/metrics; pass --metrics-url for the average batch", err=True)
    make_call = None if pipeline else triton_call_factory(target, model, inp)
    results = []
    for c in levels:
        before = scrape_metrics(metrics_url, watched) if metrics_url else {}
        if pipeline:
            r = load_pipeline(load, c, coco, requests=requests, duration=duration)
        else:
            r = run_load(make_call, c, requests=requests, duration=duration, batch=batch)
        if metrics_url:
            after = scrape_metrics(metrics_url, watched)
            if pipeline:
                r.network_batch = average_batch(before, after, "nv_inference_count")
                r.network_requests_per_batch = average_batch(before, after)
            else:
                r.avg_batch = average_batch(before, after)
        results.append(r)
        if pipeline:
            ap = f", AP {r.ap:.4f} (mean OKS {r.mean_oks:.4f})" if r.ap is not None else ""
            click.echo(f"concurrency {c:>3}: {r.requests} requests, {r.failures} failed, {r.throughput_rps:.1f} req/s, "
                       f"{r.people_per_s:.1f} people/s, p50 {r.p50_ms} ms, p90 {r.p90_ms} ms, p99 {r.p99_ms} ms, "
                       f"network batch {r.network_batch} crops ({r.network_requests_per_batch} requests){ap}")
        else:
            click.echo(f"concurrency {c:>3}: {r.requests} requests, {r.failures} failed, {r.throughput_rps:.1f} req/s, "
                       f"p50 {r.p50_ms} ms, p99 {r.p99_ms} ms, avg batch {r.avg_batch}")
    target_info = {"url": url, "model": model, "protocol": target.protocol, "requests": requests,
                   "duration_s": duration, "metrics": metrics_url}
    if pipeline:
        target_info.update(pipeline=True, network_model=watched, images=str(images_dir),
                           ann=None if ann is None else str(ann), photo_requests=len(photos),
                           people=sum(len(p.boxes) for p in photos))
    else:
        target_info.update(batch=batch, shape=list(inp.shape), datatype=inp.datatype)
    report = {"target": target_info, "machine": f"{cpu_name()}", "results": [as_dict(r) for r in results]}
    write_json(json_file, report)
    md = json_file.with_suffix(".md")
    write_text(md, markdown(report))
    click.echo(f"wrote {json_file}, {md}")
    failed = sum(r.failures for r in results)
    if failed:
        click.echo(f"FAILED: {failed} of {sum(r.requests for r in results)} requests failed: "
                   f"{'; '.join(e for r in results for e in r.errors)}", err=True)
        ctx.exit(1)
