"""Serve lite_hrnet_18 (256x192) on Triton (PyTriton) and load it at several concurrencies, next to the same
onnxruntime runner called directly in this process, in the same run.

For each concurrency C, C closed-loop clients (each sends a batch-1 request and waits for the answer) run for
--duration seconds, first against the runner in process (hrdeploy.serve.loadtest.run_load calling
OrtRunner.run), then against `hrdeploy serve` over gRPC (the same harness, tritonclient per thread). The
average batch Triton's dynamic batcher formed comes from its Prometheus metrics
(nv_inference_request_success / nv_inference_exec_count over the window).

Run in the serve environment (make setup-serve): .venv-serve/bin/python benchmarks/bench_serve.py
Writes OUT/bench_serve.json, benchmarks/serve_measured.md, and that section into benchmarks/RESULTS.md.

With --pipeline it measures the keypoint pipeline instead (`hrdeploy serve --pipeline`): the trained PP-TinyPose
network of ../shared/data (wider_naive_lite_hrnet_18 256x192) on the coco-val photos with their annotated person
boxes, at each concurrency for --duration seconds (hrdeploy.serve.loadtest.load_pipeline, what `hrdeploy loadtest
--pipeline` runs): requests/s, people/s, latency, failures, the network's average batch in crops and in requests
(Triton's metrics of the network model) and the COCO AP of the answers, next to `hrdeploy eval`'s AP of the
same artifact (`hrdeploy eval`, run as a command) on the ground-truth boxes and on the float32 boxes the
server receives. Writes OUT/bench_serve_pipeline.json, benchmarks/serve_pipeline_measured.md and its section.
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
PIPELINE_SECTION = "## Serving keypoints on Triton: photos and person boxes in, keypoints out (serve --pipeline)"
PIPELINE_MEASURED = ROOT / "benchmarks" / "serve_pipeline_measured.md"
RESULTS = ROOT / "benchmarks" / "RESULTS.md"
DATA = ROOT.parent / "shared" / "data"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def bundle_for(out: Path, model: str, size: tuple[int, int], checkpoint: str | None = None) -> Path:
    """The benchmark bundle: exported once (dynamic batch), reused while its input size and checkpoint match."""
    from hrdeploy.bundle import Bundle, is_bundle
    from hrdeploy.export import export_bundle

    bundle = out / (model if checkpoint is None else f"{model}_{Path(checkpoint).stem}")
    if is_bundle(bundle):
        inp = Bundle.open(bundle).input
        if inp.size == size and inp.dynamic_batch:
            return bundle
    print(f"exporting {model} at {size[0]}x{size[1]} to {bundle} ...", flush=True)
    result = export_bundle(model, bundle, input_size=size, dynamic_batch=True, force=True, checkpoint=checkpoint)
    if not result.passed:
        sys.exit(f"export parity failed for {bundle}")
    return bundle


def start_server(bundle: Path, args: argparse.Namespace, log: Path, *extra: str,
                 ready_model: str | None = None) -> tuple[subprocess.Popen, dict[str, int]]:
    ports = {"http": free_port(), "grpc": free_port(), "metrics": free_port()}
    cmd = [sys.executable, "-m", "hrdeploy.cli", "serve", os.fspath(bundle), "--host", "127.0.0.1",
           "--port", str(ports["http"]), "--grpc-port", str(ports["grpc"]), "--metrics-port", str(ports["metrics"]),
           "--threads", str(args.threads), "--instances", str(args.instances),
           "--max-queue-delay-us", str(args.max_queue_delay_us), "--log-file", os.fspath(log), *extra]
    if args.max_batch is not None:
        cmd += ["--max-batch", str(args.max_batch)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 180
    url = f"http://127.0.0.1:{ports['http']}/v2/models/{ready_model or args.model}/ready"
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


def begin(args: argparse.Namespace) -> tuple[tuple[float, float, float], Path, tuple[int, int]]:
    """The load average at the start, the output folder (made), and the input size of a measurement."""
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    h, w = (int(v) for v in args.input_size.split("x"))
    return os.getloadavg(), out, (h, w)


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

    load_start, out, size = begin(args)
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
    return {
        "command": " ".join([_shown(sys.executable), *sys.argv]),
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "model": args.model, "input_size": list(size), "duration_s": args.duration, "rounds": args.rounds,
        "threads": args.threads,
        "instances": args.instances, "max_batch": args.max_batch, "max_queue_delay_us": args.max_queue_delay_us,
        "server_exit_code": code, "machine": machine_info(), "python": platform.python_version(),
        "load_average": [list(load_start), list(os.getloadavg())], "versions": versions(), "rows": rows,
    }


def versions() -> dict[str, str]:
    found = {}
    for dist in ("hrdeploy", "onnxruntime", "nvidia-pytriton", "tritonclient", "numpy"):
        try:
            found[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            pass
    return found


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


def write_section(text: str, section: str = SECTION, measured: Path = MEASURED) -> None:
    """Put the section into RESULTS.md, replacing an earlier one (up to the next '## ' heading)."""
    from hrdeploy.io import write_text

    write_text(measured, text)
    current = RESULTS.read_text()
    if section in current:
        head, rest = current.split(section, 1)
        nxt = rest.find("\n## ")
        tail = rest[nxt + 1:] if nxt >= 0 else ""
        current = head + text + ("\n" + tail if tail else "")
    else:
        current = current.rstrip("\n") + "\n\n" + text
    write_text(RESULTS, current)


# ------------------------------------------------------------------------------------------ keypoint pipeline


def measure_pipeline(args: argparse.Namespace) -> dict:
    """`hrdeploy eval` of the artifact, then `serve --pipeline` loaded at each concurrency on real photos."""
    from hrdeploy.bench.harness import machine_info
    from hrdeploy.bundle import Bundle
    from hrdeploy.io import write_json
    from hrdeploy.runtime.onnxruntime import OrtRunner
    from hrdeploy.serve.loadtest import (
        PipelineLoad,
        as_dict,
        average_batch,
        collect,
        load_pipeline,
        model_metadata,
        parse_target,
        photo_requests,
        scrape_metrics,
        summarize,
    )
    from hrdeploy.serve.pipeline import pipeline_config, pipeline_model_name, postprocess_request, preprocess_request

    load_start, out, size = begin(args)
    bundle = bundle_for(out, args.model, size, args.checkpoint)
    photos, coco = photo_requests(args.images, args.ann, args.max_boxes)
    people = sum(len(r.boxes) for r in photos)
    # The server gets float32 x1,y1,x2,y2 and crops x,y,x2-x1,y2-y1 (float64): the same boxes as a detections file
    served_boxes = out / "served_boxes.json"
    write_json(served_boxes, [
        {"image_id": p.image_id, "category_id": coco.category_id, "score": 1.0,
         "bbox": [float(x1), float(y1), float(x2) - float(x1), float(y2) - float(y1)]}
        for r in photos for p, (x1, y1, x2, y2) in zip(r.people, r.boxes.astype(np.float64), strict=True)])
    evals = {}  # `hrdeploy eval` in its own process: torch's threads never share this one's CPU time
    for key, dets in (("ground-truth boxes", None), ("the served float32 boxes", served_boxes)):
        print(f"hrdeploy eval {bundle} on {key} ...", flush=True)
        report_file = out / f"eval_{'gt' if dets is None else 'served_boxes'}.json"
        cmd = [sys.executable, "-m", "hrdeploy.cli", "eval", os.fspath(bundle), "--ann", os.fspath(args.ann),
               "--images", os.fspath(args.images), "--threads", str(args.threads), "--json", os.fspath(report_file),
               *(["--dets", os.fspath(dets)] if dets else [])]
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
        onnx = next(r for r in json.loads(report_file.read_text())["rows"] if r["artifact"] == "onnx")
        evals[key] = {"AP": onnx["AP"], "mean_oks": onnx["mean_oks"], "people": onnx["people"]}
    cfg = pipeline_config(Bundle.open(bundle), args.max_boxes)
    runner = OrtRunner(bundle / "model.onnx", threads=args.threads)
    done = [0]

    def direct_call():  # noqa: ANN202 - the same steps in this process, one photo's crops per runner call
        position = [0]

        def call() -> None:
            r = photos[position[0] % len(photos)]
            position[0] += 1
            crops, transforms = preprocess_request(np.array([r.data], dtype=object), r.boxes, cfg)
            postprocess_request(runner.run(crops)[runner.output_names[0]], transforms, cfg)
            done[0] += len(r.boxes)
        return call

    print(f"in process, 1 client, {args.duration:g} s ...", flush=True)
    d = collect(direct_call, 1, duration=args.duration)
    direct = as_dict(summarize(d)) | {"people_per_s": round((done[0] - len(photos[0].boxes)) / d.seconds, 2)}
    runner.close()
    pipeline = pipeline_model_name(args.model)
    proc, ports = start_server(bundle, args, out / "tritonserver.log", "--pipeline", "--max-boxes",
                               str(args.max_boxes), "--pipeline-instances", str(args.pipeline_instances),
                               ready_model=pipeline)
    rows = []
    try:
        target = parse_target(f"grpc://127.0.0.1:{ports['grpc']}")
        metrics = f"http://127.0.0.1:{ports['metrics']}/metrics"
        load = PipelineLoad(target, pipeline, photos)
        max_batch = int(model_metadata(target, args.model)[1]["max_batch_size"])  # what the server runs with
        for c in args.concurrency:
            before = scrape_metrics(metrics, args.model)
            r = load_pipeline(load, c, coco, duration=args.duration)
            after = scrape_metrics(metrics, args.model)
            r.network_batch = average_batch(before, after, "nv_inference_count")
            r.network_requests_per_batch = average_batch(before, after)
            print(f"served c={c:>2}: {r.throughput_rps:6.1f} req/s {r.people_per_s:6.1f} people/s p50 {r.p50_ms} "
                  f"p99 {r.p99_ms} ms, {r.failures} failed, network batch {r.network_batch} crops "
                  f"({r.network_requests_per_batch} requests), AP {r.ap}", flush=True)
            rows.append(as_dict(r))
    finally:
        code = stop_server(proc)
    return {
        "command": " ".join([_shown(sys.executable), *sys.argv]),
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "model": args.model, "checkpoint": Path(args.checkpoint).name, "input_size": list(size),
        "images": _shown(os.fspath(Path(args.images).resolve())), "photo_requests": len(photos), "people": people,
        "duration_s": args.duration, "threads": args.threads, "instances": args.instances,
        "max_batch": max_batch, "max_boxes": args.max_boxes, "pipeline_instances": args.pipeline_instances,
        "max_queue_delay_us": args.max_queue_delay_us, "server_exit_code": code, "machine": machine_info(),
        "python": platform.python_version(), "load_average": [list(load_start), list(os.getloadavg())],
        "versions": versions(), "eval": evals, "direct": direct, "rows": rows,
    }


def pipeline_verdicts(report: dict) -> list[tuple[str, bool, str]]:
    """The issue's "done when" checks on a pipeline report: (what, held, the measured numbers)."""
    rows = sorted(report["rows"], key=lambda r: r["concurrency"])
    low, top = rows[0], rows[-1]
    same = report["eval"]["the served float32 boxes"]["AP"]
    gt = report["eval"]["ground-truth boxes"]["AP"]
    failed = sum(r["failures"] for r in rows)
    return [
        ("no failed request", failed == 0, f"{failed} of {sum(r['requests'] for r in rows)}"),
        ("served AP = hrdeploy eval's AP (same boxes)", all(r["ap"] == same for r in rows),
         f"served {', '.join(str(r['ap']) for r in rows)}; eval {same} on the served float32 boxes, {gt} on the "
         "float64 ground-truth boxes"),
        (f"people/s at {top['concurrency']} clients >= at {low['concurrency']}",
         top["people_per_s"] >= low["people_per_s"], f"{top['people_per_s']} vs {low['people_per_s']}"),
        (f"network batch at {top['concurrency']} clients > 2 crops, from several requests",
         (top["network_batch"] or 0) > 2 and (top["network_requests_per_batch"] or 0) > 1,
         f"{top['network_batch']} crops from {top['network_requests_per_batch']} requests per network run"),
    ]


def render_pipeline(report: dict) -> str:
    m = report["machine"]
    h, w = report["input_size"]
    la = " at the start, ".join(", ".join(f"{v:.1f}" for v in la) for la in report["load_average"])
    ev = report["eval"]
    d = report["direct"]
    lines = [
        PIPELINE_SECTION,
        "",
        f"Generated by `{report['command']}` on {report['date']}.",
        "",
        f"- Machine: {m['cpu']}, {m['cores']} cores usable, no GPU, shared with other jobs: load average "
        f"(1, 5, 15 min) {la} at the end. Versions: {', '.join(f'{k} {v}' for k, v in report['versions'].items())}.",
        f"- Model: {report['model']} {h}x{w} with the trained weights {report['checkpoint']}, fp32 ONNX, dynamic "
        f"batch, onnxruntime CPU with {report['threads']} intra-op thread(s).",
        f"- Served: `hrdeploy serve --pipeline` (PyTriton): the pipeline model with {report['pipeline_instances']} "
        "instances decodes the photo and crops each box (hrdeploy.pose, as `hrdeploy infer`), sends the crops to the "
        f"network model over gRPC (Triton's dynamic batcher, {report['instances']} instance(s), max batch "
        f"{report['max_batch']}, queue delay {report['max_queue_delay_us']} us) and decodes the "
        f"heatmaps; up to {report['max_boxes']} boxes per request. Server exit status after SIGTERM: "
        f"{report['server_exit_code']}.",
        f"- Load: {report['images']}, {report['photo_requests']} photos with their {report['people']} annotated "
        f"people (COCO boxes, sent as float32 x1,y1,x2,y2), C closed-loop gRPC clients for {report['duration_s']:g} s "
        "per row (`hrdeploy loadtest --pipeline`'s code). Network batch = nv_inference_count (crops) and "
        "nv_inference_request_success (requests) per nv_inference_exec_count of the network model over the row. "
        "AP = pycocotools keypoint AP of the answers: each photo's first answer in the row (photos no client reached "
        "in the row are asked once after it; `answered` counts those reached under load).",
        f"- `hrdeploy eval` of the same artifact (onnx): AP {ev['ground-truth boxes']['AP']} (mean OKS "
        f"{ev['ground-truth boxes']['mean_oks']}) on the ground-truth boxes, AP {ev['the served float32 boxes']['AP']} "
        f"(mean OKS {ev['the served float32 boxes']['mean_oks']}) on the float32 boxes the server receives (`--dets`).",
        f"- In process, the same steps with one runner and one client: {d['people_per_s']} people/s, "
        f"{d['throughput_rps']} photos/s, p50 {d['p50_ms']} ms, p99 {d['p99_ms']} ms.",
        "",
        "| clients | requests | failed | req/s | people/s | p50 ms | p90 ms | p99 ms | network batch (crops) "
        "| requests per network batch | answered | AP | mean OKS |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in report["rows"]:
        lines.append(
            f"| {r['concurrency']} | {r['requests']} | {r['failures']} | {r['throughput_rps']:.1f} "
            f"| {r['people_per_s']:.1f} | {r['p50_ms']:.1f} | {r['p90_ms']:.1f} | {r['p99_ms']:.1f} "
            f"| {r['network_batch']} | {r['network_requests_per_batch']} | {r['answered_under_load']} of "
            f"{report['photo_requests']} | {r['ap']} | {r['mean_oks']} |")
    lines += ["", "| check | held | measured |", "|---|---|---|"]
    lines += [f"| {what} | {'yes' if ok else 'NO'} | {numbers} |" for what, ok, numbers in pipeline_verdicts(report)]
    return "\n".join(lines) + "\n"


def main() -> None:
    from hrdeploy.serve.batching import DEFAULT_MAX_BOXES, DEFAULT_PIPELINE_INSTANCES

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="out/bench_serve", help="Bundle, JSON and tritonserver log go here.")
    p.add_argument("--model", help="[default: lite_hrnet_18; --pipeline: wider_naive_lite_hrnet_18]")
    p.add_argument("--pipeline", action="store_true", help="Measure the keypoint pipeline on real photos instead.")
    p.add_argument("--checkpoint", default=os.fspath(DATA / "weights" / "pp_tinypose_256x192.safetensors"),
                   help="--pipeline: trained weights of --model.")
    p.add_argument("--images", default=os.fspath(DATA / "coco-val"), help="--pipeline: photos to send.")
    p.add_argument("--ann", default=os.fspath(DATA / "coco-val" / "person_keypoints.json"),
                   help="--pipeline: their COCO keypoint annotations (the boxes sent, the AP scored).")
    p.add_argument("--max-boxes", type=int, default=DEFAULT_MAX_BOXES, help="--pipeline: boxes per request at most.")
    p.add_argument("--pipeline-instances", type=int, default=DEFAULT_PIPELINE_INSTANCES,
                   help="--pipeline: pipeline model instances.")
    p.add_argument("--input-size", default="256x192")
    p.add_argument("--concurrency", type=lambda s: [int(v) for v in s.split(",")], default=[1, 4, 16])
    p.add_argument("--duration", type=float, default=20.0, help="Seconds per row (direct and served each).")
    p.add_argument("--rounds", type=int, default=4, help="Alternating direct/served windows per row.")
    p.add_argument("--threads", type=int, default=1, help="onnxruntime intra-op threads (server and direct).")
    p.add_argument("--instances", type=int, default=1)
    p.add_argument("--max-batch", type=int, help="[default: 16; --pipeline: `serve --pipeline`'s default]")
    p.add_argument("--max-queue-delay-us", type=int, default=100)
    p.add_argument("--no-results", action="store_true", help="Do not touch benchmarks/*.md (demo runs).")
    p.add_argument("--render-only", action="store_true", help="Re-render OUT/bench_serve.json, measure nothing.")
    args = p.parse_args()
    args.model = args.model or ("wider_naive_lite_hrnet_18" if args.pipeline else "lite_hrnet_18")
    if args.max_batch is None and not args.pipeline:
        args.max_batch = 16
    from hrdeploy.io import write_json

    json_path = Path(args.out) / ("bench_serve_pipeline.json" if args.pipeline else "bench_serve.json")
    if args.render_only:
        report = json.loads(json_path.read_text())
    else:
        report = (measure_pipeline if args.pipeline else measure)(args)
        write_json(json_path, report)
    text = (render_pipeline if args.pipeline else render)(report)
    print(text)
    if not args.no_results:
        section, measured = (PIPELINE_SECTION, PIPELINE_MEASURED) if args.pipeline else (SECTION, MEASURED)
        write_section(text, section, measured)
        print(f"wrote {json_path}, {measured.relative_to(ROOT)} and the section in {RESULTS.relative_to(ROOT)}")
    if args.pipeline:
        sys.exit(0 if all(held for _, held, _ in pipeline_verdicts(report)) and report["server_exit_code"] == 0 else 1)
    failed = sum(r["served"]["failures"] for r in report["rows"])
    sys.exit(1 if failed or report["server_exit_code"] != 0 else 0)


if __name__ == "__main__":
    main()
