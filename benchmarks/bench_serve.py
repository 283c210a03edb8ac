"""Serve lite_hrnet_18 (256x192) on Triton (PyTriton) and load it at several concurrencies, next to the same
onnxruntime runner called directly in this process, in the same run.

For each concurrency C, C closed-loop clients (each sends a batch-1 request and waits for the answer) run for
--duration seconds, first against the runner in process (hrdeploy.serve.loadtest.run_load calling
OrtRunner.run), then against `hrdeploy serve` over gRPC (the same harness, tritonclient per thread). The
average batch Triton's dynamic batcher formed comes from its Prometheus metrics
(nv_inference_request_success / nv_inference_exec_count over the window).

Run in the serve environment (make setup-serve): .venv-serve/bin/python benchmarks/bench_serve.py
Writes OUT/bench_serve.json, benchmarks/serve_measured.md, and that section into benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SECTION = "## Serving on Triton: hrdeploy serve vs the runner in process"
MEASURED = ROOT / "benchmarks" / "serve_measured.md"
RESULTS = ROOT / "benchmarks" / "RESULTS.md"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def bundle_for(out: Path, model: str, size: tuple[int, int]) -> Path:
    """The benchmark bundle: exported once (dynamic batch), reused while its input size matches."""
    from hrdeploy.bundle import Bundle, is_bundle
    from hrdeploy.export import export_bundle

    bundle = out / model
    if is_bundle(bundle):
        inp = Bundle.open(bundle).input
        if inp.size == size and inp.dynamic_batch:
            return bundle
    print(f"exporting {model} at {size[0]}x{size[1]} to {bundle} ...", flush=True)
    result = export_bundle(model, bundle, input_size=size, dynamic_batch=True, force=True)
    if not result.passed:
        sys.exit(f"export parity failed for {bundle}")
    return bundle


def start_server(bundle: Path, args: argparse.Namespace, log: Path) -> tuple[subprocess.Popen, dict[str, int]]:
    ports = {"http": free_port(), "grpc": free_port(), "metrics": free_port()}
    cmd = [sys.executable, "-m", "hrdeploy.cli", "serve", os.fspath(bundle), "--host", "127.0.0.1",
           "--port", str(ports["http"]), "--grpc-port", str(ports["grpc"]), "--metrics-port", str(ports["metrics"]),
           "--threads", str(args.threads), "--instances", str(args.instances), "--max-batch", str(args.max_batch),
           "--max-queue-delay-us", str(args.max_queue_delay_us), "--log-file", os.fspath(log)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 180
    url = f"http://127.0.0.1:{ports['http']}/v2/models/{args.model}/ready"
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            sys.exit(f"hrdeploy serve exited {proc.returncode}: {proc.stdout.read()}")
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return proc, ports
        except OSError:
            time.sleep(0.5)
    proc.kill()
    sys.exit("hrdeploy serve was not ready within 180 s")


def stop_server(proc: subprocess.Popen) -> int:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
    return proc.returncode


def measure(args: argparse.Namespace) -> dict:
    from hrdeploy.bench.harness import machine_info
    from hrdeploy.runtime.onnxruntime import OrtRunner
    from hrdeploy.serve.loadtest import (
        as_dict,
        average_batch,
        collect,
        describe_model,
        parse_target,
        scrape_metrics,
        summarize,
        triton_call_factory,
    )

    load_start = os.getloadavg()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    size = tuple(int(v) for v in args.input_size.split("x"))
    bundle = bundle_for(out, args.model, size)
    x = np.random.default_rng(0).standard_normal((1, 3, *size)).astype(np.float32)
    runner = OrtRunner(bundle / "model.onnx", threads=args.threads)

    def direct_call():  # noqa: ANN202 - one shared session, as an application thread pool would use it
        return lambda: runner.run(x)

    proc, ports = start_server(bundle, args, out / "tritonserver.log")
    rows = []
    try:
        target = parse_target(f"grpc://127.0.0.1:{ports['grpc']}")
        metrics = f"http://127.0.0.1:{ports['metrics']}/metrics"
        served_call = triton_call_factory(target, args.model, describe_model(target, args.model, 1))
        window = args.duration / args.rounds
        for c in args.concurrency:
            direct = served = None
            counted: dict[str, float] = {}
            for _ in range(args.rounds):  # alternate short windows, so both see the same machine load
                d = collect(direct_call, c, duration=window)
                direct = d if direct is None else direct + d
                before = scrape_metrics(metrics, args.model)
                s = collect(served_call, c, duration=window)
                served = s if served is None else served + s
                after = scrape_metrics(metrics, args.model)
                for k in after:
                    counted[k] = counted.get(k, 0.0) + after[k] - before.get(k, 0.0)
            direct, served = summarize(direct), summarize(served)
            served.avg_batch = average_batch({}, counted)
            print(f"direct  c={c:>2}: {direct.throughput_rps:7.1f} req/s p50 {direct.p50_ms} p99 {direct.p99_ms} ms",
                  flush=True)
            print(f"served  c={c:>2}: {served.throughput_rps:7.1f} req/s p50 {served.p50_ms} p99 {served.p99_ms} ms, "
                  f"{served.failures} failed, avg batch {served.avg_batch}", flush=True)
            rows.append({"concurrency": c, "direct": as_dict(direct), "served": as_dict(served)})
    finally:
        code = stop_server(proc)
    versions = {}
    for dist in ("hrdeploy", "onnxruntime", "nvidia-pytriton", "tritonclient", "numpy"):
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            pass
    return {
        "command": " ".join([_shown(sys.executable), *sys.argv]),
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "model": args.model, "input_size": list(size), "duration_s": args.duration, "rounds": args.rounds,
        "threads": args.threads,
        "instances": args.instances, "max_batch": args.max_batch, "max_queue_delay_us": args.max_queue_delay_us,
        "server_exit_code": code, "machine": machine_info(), "python": platform.python_version(),
        "load_average": [list(load_start), list(os.getloadavg())], "versions": versions, "rows": rows,
    }


def _shown(path: str) -> str:
    """`path` relative to the checkout when inside it (e.g. .venv-serve/bin/python), else its name."""
    p = Path(path).absolute()
    return os.fspath(p.relative_to(ROOT)) if p.is_relative_to(ROOT) else p.name


def render(report: dict) -> str:
    m = report["machine"]
    h, w = report["input_size"]
    la = " at the start, ".join(", ".join(f"{v:.1f}" for v in la) for la in report["load_average"])
    lines = [
        SECTION,
        "",
        f"Generated by `{report['command']}` on {report['date']}.",
        "",
        f"- Machine: {m['cpu']}, {m['cores']} cores usable, no GPU, shared with other jobs: load average "
        f"(1, 5, 15 min) {la} at the end. "
        f"Versions: {', '.join(f'{k} {v}' for k, v in report['versions'].items())}.",
        f"- Model: {report['model']} {h}x{w}, fp32 ONNX, dynamic batch, seeded weights, onnxruntime CPU with "
        f"{report['threads']} intra-op thread(s) per session.",
        f"- Served: `hrdeploy serve` (PyTriton: tritonserver + its Python backend handing batches to hrdeploy's "
        f"OrtRunner), {report['instances']} instance(s), max batch {report['max_batch']}, queue delay "
        f"{report['max_queue_delay_us']} us; clients over gRPC from the benchmark process. Direct: the same "
        "OrtRunner in the benchmark process, one session shared by the client threads.",
        f"- Load: C closed-loop clients (each sends one 1-image request and waits for its answer) for "
        f"{report['duration_s']:g} s per row and target, in {report['rounds']} alternating direct/served windows "
        "(both see the same machine load). Latency is per request, client side; "
        "avg batch = nv_inference_request_success / nv_inference_exec_count over the row (Triton metrics). "
        f"Server exit status after SIGTERM: {report['server_exit_code']}.",
        "",
        "| clients | direct req/s | direct p50 ms | direct p99 ms | served req/s | served p50 ms | served p90 ms "
        "| served p99 ms | failed | avg batch | served/direct req/s |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in report["rows"]:
        d, s = row["direct"], row["served"]
        ratio = s["throughput_rps"] / d["throughput_rps"] if d["throughput_rps"] else float("nan")
        lines.append(
            f"| {row['concurrency']} | {d['throughput_rps']:.1f} | {d['p50_ms']:.1f} | {d['p99_ms']:.1f} "
            f"| {s['throughput_rps']:.1f} | {s['p50_ms']:.1f} | {s['p90_ms']:.1f} | {s['p99_ms']:.1f} "
            f"| {s['failures']} of {s['requests']} | {s['avg_batch']} | {ratio:.2f} |")
    top = max(report["rows"], key=lambda r: r["concurrency"])
    low = min(report["rows"], key=lambda r: r["concurrency"])
    lines += [
        "",
        f"Triton's dynamic batcher formed batches of {top['served']['avg_batch']} requests on average at "
        f"{top['concurrency']} clients ({low['served']['avg_batch']} with {low['concurrency']}). "
        "Batching does not raise throughput much on this CPU because onnxruntime's time per image hardly "
        "drops with the batch for this "
        "network (`ort b8/b1` in the zoo table above); how much it gains elsewhere depends on the backend's batch "
        "scaling and was not measured here (no GPU). On a loaded machine the path with more runnable threads "
        "(served: client threads, tritonserver and the server process) gets a larger share of the CPU, so a "
        "served/direct ratio above 1 is not a speed-up of the server over the runner; the served path adds the "
        "request's gRPC round trip and the hand-over of each batch between tritonserver and the serving "
        "process (shared memory).",
    ]
    return "\n".join(lines) + "\n"


def write_section(text: str) -> None:
    """Put the section into RESULTS.md, replacing an earlier one (up to the next '## ' heading)."""
    from hrdeploy.io import write_text

    write_text(MEASURED, text)
    current = RESULTS.read_text()
    if SECTION in current:
        head, rest = current.split(SECTION, 1)
        nxt = rest.find("\n## ")
        tail = rest[nxt + 1:] if nxt >= 0 else ""
        current = head + text + ("\n" + tail if tail else "")
    else:
        current = current.rstrip("\n") + "\n\n" + text
    write_text(RESULTS, current)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="out/bench_serve", help="Bundle, JSON and tritonserver log go here.")
    p.add_argument("--model", default="lite_hrnet_18")
    p.add_argument("--input-size", default="256x192")
    p.add_argument("--concurrency", type=lambda s: [int(v) for v in s.split(",")], default=[1, 4, 16])
    p.add_argument("--duration", type=float, default=20.0, help="Seconds per row (direct and served each).")
    p.add_argument("--rounds", type=int, default=4, help="Alternating direct/served windows per row.")
    p.add_argument("--threads", type=int, default=1, help="onnxruntime intra-op threads (server and direct).")
    p.add_argument("--instances", type=int, default=1)
    p.add_argument("--max-batch", type=int, default=16)
    p.add_argument("--max-queue-delay-us", type=int, default=100)
    p.add_argument("--no-results", action="store_true", help="Do not touch benchmarks/*.md (demo runs).")
    p.add_argument("--render-only", action="store_true", help="Re-render OUT/bench_serve.json, measure nothing.")
    args = p.parse_args()
    from hrdeploy.io import write_json

    json_path = Path(args.out) / "bench_serve.json"
    if args.render_only:
        report = json.loads(json_path.read_text())
    else:
        report = measure(args)
        write_json(json_path, report)
    text = render(report)
    print(text)
    if not args.no_results:
        write_section(text)
        print(f"wrote {json_path}, {MEASURED.relative_to(ROOT)} and the section in {RESULTS.relative_to(ROOT)}")
    failed = sum(r["served"]["failures"] for r in report["rows"])
    sys.exit(1 if failed or report["server_exit_code"] != 0 else 0)


if __name__ == "__main__":
    main()
