"""`hrdeploy loadtest URL --model NAME`: bounded load against a Triton server on this machine."""

from __future__ import annotations

from pathlib import Path

import click


@click.command("loadtest")
@click.argument("url")
@click.option("--model", required=True, help="Triton model name (`hrdeploy serve` prints it).")
@click.option("--concurrency", default="1,4,16", show_default=True, help="Comma list of concurrent clients.")
@click.option("--requests", type=int, help="Requests per concurrency level (all clients together).")
@click.option("--duration", type=float, help="Seconds per concurrency level.")
@click.option("--batch", type=click.IntRange(min=1), default=1, show_default=True, help="Images per request.")
@click.option("--metrics-url", help="Triton's Prometheus endpoint, for the average batch per execution "
                                    "[default: `hrdeploy serve`'s, HTTP port + 2 or gRPC port + 1, if it answers].")
@click.option("--json", "json_file", type=click.Path(dir_okay=False, path_type=Path), default=Path("loadtest.json"),
              show_default=True, help="Where to write the JSON; the .md goes beside it.")
@click.pass_context
def loadtest_cmd(ctx: click.Context, url: str, model: str, concurrency: str, requests: int | None,
                 duration: float | None, batch: int, metrics_url: str | None, json_file: Path) -> None:
    """Load a Triton server at URL (http://HOST:PORT or grpc://HOST:PORT, loopback only) at each concurrency.

    Reports throughput, p50/p90/p99 latency and failed requests per concurrency, and the average batch
    Triton's dynamic batcher formed (from its metrics). Exit status 1 when any request failed.
    """
    from hrdeploy.bench.harness import cpu_name
    from hrdeploy.errors import UserError
    from hrdeploy.io import write_json, write_text
    from hrdeploy.serve.loadtest import (
        as_dict,
        average_batch,
        check_budget,
        describe_model,
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
    inp = describe_model(target, model, batch)
    if metrics_url is None:  # `hrdeploy serve` layout: HTTP on PORT, gRPC on PORT + 1, metrics on PORT + 2
        guess = f"http://{target.address.rsplit(':', 1)[0]}:{target.port + (2 if target.protocol == 'http' else 1)}"
        try:
            scrape_metrics(f"{guess}/metrics", model)
            metrics_url = f"{guess}/metrics"
        except UserError:
            click.echo(f"no Triton metrics at {guess}/metrics; pass --metrics-url for the average batch", err=True)
    make_call = triton_call_factory(target, model, inp)
    results = []
    for c in levels:
        before = scrape_metrics(metrics_url, model) if metrics_url else {}
        r = run_load(make_call, c, requests=requests, duration=duration, batch=batch)
        if metrics_url:
            r.avg_batch = average_batch(before, scrape_metrics(metrics_url, model))
        results.append(r)
        click.echo(f"concurrency {c:>3}: {r.requests} requests, {r.failures} failed, {r.throughput_rps:.1f} req/s, "
                   f"p50 {r.p50_ms} ms, p99 {r.p99_ms} ms, avg batch {r.avg_batch}")
    report = {
        "target": {"url": url, "model": model, "protocol": target.protocol, "batch": batch, "shape": list(inp.shape),
                   "datatype": inp.datatype, "requests": requests, "duration_s": duration, "metrics": metrics_url},
        "machine": f"{cpu_name()}",
        "results": [as_dict(r) for r in results],
    }
    write_json(json_file, report)
    md = json_file.with_suffix(".md")
    write_text(md, markdown(report))
    click.echo(f"wrote {json_file}, {md}")
    failed = sum(r.failures for r in results)
    if failed:
        click.echo(f"FAILED: {failed} of {sum(r.requests for r in results)} requests failed: "
                   f"{'; '.join(e for r in results for e in r.errors)}", err=True)
        ctx.exit(1)
