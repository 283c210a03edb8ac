"""A bounded, closed-loop load generator for a Triton server on this machine (loopback only).

Each of C worker threads sends one request, waits for the answer, and sends the next, until the request
budget or the duration is spent. Latency is per request (client side); throughput is answered requests per
second of wall time. The same harness (`run_load`) drives any callable, so a server and a runner called in
process are measured the same way.
"""

from __future__ import annotations

import ipaddress
import os
import re
import threading
import time
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import numpy as np

from hrdeploy.errors import UserError, missing_dependency
from hrdeploy.serve.batching import DEFAULT_MAX_BOXES

MAX_CONCURRENCY = 256
MAX_REQUESTS = 1_000_000
MAX_DURATION_S = 600.0
_SAMPLE = re.compile(r'^(\w+)\{([^}]*)\}\s+([0-9.eE+-]+)$')


@dataclass(frozen=True)
class Target:
    protocol: str  # "http" | "grpc"
    host: str
    port: int

    @property
    def address(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


@dataclass
class LoadResult:
    concurrency: int
    requests: int  # answered + failed
    failures: int
    seconds: float
    throughput_rps: float  # answered requests per second
    images_per_s: float
    p50_ms: float | None
    p90_ms: float | None
    p99_ms: float | None
    mean_ms: float | None
    max_ms: float | None
    errors: list[str] = field(default_factory=list)  # the first few distinct failure messages
    avg_batch: float | None = None  # requests per model execution, from Triton's metrics
    # --pipeline: people (boxes) answered per second; the network's crops and requests per execution (Triton's
    # metrics of the network model); COCO AP and mean OKS of the answers (with annotations)
    people_per_s: float | None = None
    network_batch: float | None = None
    network_requests_per_batch: float | None = None
    ap: float | None = None
    mean_oks: float | None = None
    answered_under_load: int | None = None  # distinct photo requests answered in the timed window


def check_loopback(host: str, what: str) -> str:
    """`host` if it is a loopback address (127.0.0.0/8, ::1, localhost); else a UserError."""
    try:
        loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if not loopback:
        raise UserError(f"{what} host {host!r} is not loopback; the load test only targets this machine "
                        "(127.0.0.1, ::1 or localhost)")
    return host


def parse_target(url: str) -> Target:
    """http://HOST:PORT or grpc://HOST:PORT (no scheme: http), loopback hosts only."""
    parts = urlsplit(url if "://" in url else f"http://{url}")
    if parts.scheme not in ("http", "grpc"):
        raise UserError(f"{url}: use http://HOST:PORT or grpc://HOST:PORT")
    try:
        port = parts.port
    except ValueError as err:
        raise UserError(f"{url}: bad port ({err})") from err
    if not parts.hostname or port is None:
        raise UserError(f"{url}: give host and port, e.g. http://127.0.0.1:8000")
    return Target(parts.scheme, check_loopback(parts.hostname, "server"), port)


def parse_concurrency(text: str) -> list[int]:
    try:
        levels = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        levels = []
    if not levels or any(not 1 <= c <= MAX_CONCURRENCY for c in levels):
        raise UserError(f"--concurrency {text!r}: give a comma list of 1..{MAX_CONCURRENCY}, e.g. 1,4,16")
    return levels


def check_budget(requests: int | None, duration: float | None) -> None:
    if (requests is None) == (duration is None):
        raise UserError("give exactly one of --requests N or --duration SECONDS")
    if requests is not None and not 1 <= requests <= MAX_REQUESTS:
        raise UserError(f"--requests {requests}: give 1..{MAX_REQUESTS}")
    if duration is not None and not 0 < duration <= MAX_DURATION_S:
        raise UserError(f"--duration {duration}: give more than 0 and at most {MAX_DURATION_S:g} seconds")


@dataclass
class Samples:
    """Raw outcome of one or more load windows at one concurrency (pooled with `+`)."""

    concurrency: int
    batch: int
    latencies_s: list[float]
    failures: int
    errors: list[str]
    seconds: float

    def __add__(self, other: Samples) -> Samples:
        errors = self.errors + [e for e in other.errors if e not in self.errors]
        return Samples(self.concurrency, self.batch, self.latencies_s + other.latencies_s,
                       self.failures + other.failures, errors[:5], self.seconds + other.seconds)


def run_load(
    make_call: Callable[[], Callable[[], object]],
    concurrency: int,
    *,
    requests: int | None = None,
    duration: float | None = None,
    batch: int = 1,
    warmup: int = 1,
) -> LoadResult:
    """Drive `concurrency` threads, each calling its own `make_call()` result in a closed loop.

    Stops after `requests` calls in all or after `duration` seconds. Each thread first makes `warmup`
    untimed calls. An exception from a call counts as a failed request.
    """
    return summarize(collect(make_call, concurrency, requests=requests, duration=duration, batch=batch,
                             warmup=warmup))


def collect(
    make_call: Callable[[], Callable[[], object]],
    concurrency: int,
    *,
    requests: int | None = None,
    duration: float | None = None,
    batch: int = 1,
    warmup: int = 1,
) -> Samples:
    """The raw samples of `run_load` (same arguments), to pool several windows before summarising."""
    check_budget(requests, duration)
    window = _Window(concurrency, requests)
    threads = [threading.Thread(target=window.work, args=(i, make_call, warmup), daemon=True)
               for i in range(concurrency)]
    for t in threads:
        t.start()
    window.start_line.wait()
    t_start = time.perf_counter()
    if duration is not None:
        window.deadline = t_start + duration
    for t in threads:
        t.join()
    seconds = time.perf_counter() - t_start
    return Samples(concurrency, batch, [x for per in window.latencies for x in per], sum(window.failures),
                   window.errors, seconds)


class _Window:
    """One closed-loop load window: its workers share the request budget, the deadline and the first errors.

    The workers meet at `start_line` once warmed up, with the caller, which then sets `deadline` (with a
    duration); the budget and the deadline are checked under one lock before each request.
    """

    def __init__(self, concurrency: int, requests: int | None) -> None:
        self.requests = requests
        self.issued = 0
        self.deadline = float("inf")
        self.lock = threading.Lock()
        self.start_line = threading.Barrier(concurrency + 1)
        self.latencies: list[list[float]] = [[] for _ in range(concurrency)]
        self.failures = [0] * concurrency
        self.errors: list[str] = []

    def take(self) -> bool:
        """Whether one more request may go out (budget and deadline not spent); counts it if so."""
        with self.lock:
            if self.requests is not None and self.issued >= self.requests:
                return False
            if time.perf_counter() >= self.deadline:
                return False
            self.issued += 1
            return True

    def work(self, i: int, make_call: Callable[[], Callable[[], object]], warmup: int) -> None:
        """Worker i: its own call, warmed up, then timed calls until `take` says no; closed at the end."""
        call, setup_error = _warmed_up(make_call, warmup)
        self.start_line.wait()
        while self.take():
            t0 = time.perf_counter()
            try:
                if call is None:
                    raise setup_error  # type: ignore[misc]
                call()
            except Exception as err:  # noqa: BLE001 - any client or server error is a failed request
                self.fail(i, err)
                continue
            self.latencies[i].append(time.perf_counter() - t0)
        close = getattr(call, "close", None)
        if close is not None:
            close()

    def fail(self, i: int, err: Exception) -> None:
        """Count a failed request of worker i and keep its message among the first five distinct ones."""
        self.failures[i] += 1
        message = f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"[:300]
        with self.lock:
            if message not in self.errors and len(self.errors) < 5:
                self.errors.append(message)


def _warmed_up(make_call: Callable[[], Callable[[], object]],
               warmup: int) -> tuple[Callable[[], object] | None, Exception | None]:
    """A worker's call after its untimed warm-up calls, or (None, the error) when it cannot connect or answer:
    then every request of that worker fails with that error."""
    try:
        call = make_call()
        for _ in range(warmup):
            call()
    except Exception as err:
        return None, err
    return call, None


def summarize(s: Samples) -> LoadResult:
    """Throughput (answered requests per second of wall time) and latency percentiles of `s`."""
    lat = np.array(s.latencies_s) * 1e3
    ok = int(lat.size)

    def pct(q: float) -> float | None:
        return round(float(np.percentile(lat, q)), 3) if ok else None

    return LoadResult(
        concurrency=s.concurrency, requests=ok + s.failures, failures=s.failures, seconds=round(s.seconds, 6),
        throughput_rps=round(ok / s.seconds, 2) if s.seconds > 0 else 0.0,
        images_per_s=round(ok * s.batch / s.seconds, 2) if s.seconds > 0 else 0.0,
        p50_ms=pct(50), p90_ms=pct(90), p99_ms=pct(99), mean_ms=round(float(lat.mean()), 3) if ok else None,
        max_ms=round(float(lat.max()), 3) if ok else None, errors=list(s.errors),
    )


# ------------------------------------------------------------------------------------------ Triton client


@dataclass(frozen=True)
class ModelInput:
    name: str
    datatype: str  # Triton datatype, e.g. "FP32"
    shape: tuple[int, ...]  # with the batch axis
    max_batch_size: int


def _client_module(protocol: str):  # noqa: ANN202 - tritonclient.http or tritonclient.grpc
    try:
        if protocol == "grpc":
            import tritonclient.grpc as client
        else:
            import tritonclient.http as client
    except ImportError as err:
        raise missing_dependency("tritonclient", "serve", "hrdeploy loadtest") from err
    return client


def model_metadata(target: Target, model: str) -> tuple[dict, dict]:
    """The model's metadata and config from the server, as dicts; UserError if unreachable or unknown."""
    client_mod = _client_module(target.protocol)
    from tritonclient.utils import InferenceServerException

    try:
        client = client_mod.InferenceServerClient(target.address)
    except Exception as err:
        raise UserError(f"cannot reach {target.protocol}://{target.address}: {err}") from err
    url = f"{target.protocol}://{target.address}"
    try:
        try:
            ready = client.is_server_ready()
        except Exception as err:  # connection refused and friends, raised by either client library
            first = (str(err).strip().splitlines() or [type(err).__name__])[0][:200]
            raise UserError(f"cannot reach {url}: {first}; is the server running?") from err
        if not ready:
            try:  # a Triton server answers GET /v2 even before it is ready; any other HTTP server does not
                client.get_server_metadata()
            except Exception as err:
                raise _not_triton(url, err) from err
            raise UserError(f"the server at {url} is not ready yet; wait for `hrdeploy serve` to print 'ready'")
        try:
            meta = client.get_model_metadata(model)
            config = client.get_model_config(model)
        except InferenceServerException as err:
            raise UserError(f"{url} model {model!r}: {err.message()}; check the name (`hrdeploy serve` prints it)") \
                from err
        except Exception as err:  # not Triton's JSON: another kind of HTTP server answered
            raise _not_triton(url, err) from err
    finally:
        client.close()
    if target.protocol == "grpc":
        from google.protobuf.json_format import MessageToDict

        meta = MessageToDict(meta, preserving_proto_field_name=True)
        config = MessageToDict(config, preserving_proto_field_name=True)
    return meta, config.get("config", config)


def describe_model(target: Target, model: str, batch: int) -> ModelInput:
    """The model's single input, from the server's metadata and config; UserError if unreachable or unknown."""
    meta, config = model_metadata(target, model)
    inputs = meta["inputs"]
    if len(inputs) != 1:
        raise UserError(f"model {model!r} has {len(inputs)} inputs; the load test drives single-input models")
    dims = [int(d) for d in inputs[0]["shape"]]
    max_batch = int(config.get("max_batch_size", 0))
    if max_batch > 0:
        if batch > max_batch:
            raise UserError(f"--batch {batch} is over the model's max_batch_size {max_batch}")
        dims[0] = batch
    elif batch != 1:
        raise UserError(f"model {model!r} does not batch (max_batch_size 0); drop --batch")
    if any(d < 0 for d in dims):
        raise UserError(f"model {model!r} input {inputs[0]['name']} has dynamic dims {dims}; "
                        "the load test needs a fixed input shape")
    return ModelInput(inputs[0]["name"], inputs[0]["datatype"], tuple(dims), max_batch)


def _not_triton(url: str, err: Exception) -> UserError:
    first = (str(err).strip().splitlines() or [type(err).__name__])[0][:200]
    return UserError(f"{url} answers, but not as a Triton server ({first}); check the URL and port "
                     "(`hrdeploy serve` prints them)")


def triton_call_factory(
    target: Target, model: str, inp: ModelInput, seed: int = 0
) -> Callable[[], Callable[[], object]]:
    """A factory of per-thread callables, each with its own client, sending one seeded random tensor."""
    from tritonclient.utils import triton_to_np_dtype

    client_mod = _client_module(target.protocol)
    data = np.random.default_rng(seed).standard_normal(inp.shape).astype(triton_to_np_dtype(inp.datatype))

    def make_call() -> Callable[[], object]:
        client = client_mod.InferenceServerClient(target.address)
        infer_input = client_mod.InferInput(inp.name, list(inp.shape), inp.datatype)
        infer_input.set_data_from_numpy(data)

        def call() -> object:
            return client.infer(model, [infer_input])

        call.close = client.close  # type: ignore[attr-defined]
        return call

    return make_call


# ------------------------------------------------------------------------------------------ keypoint pipeline


@dataclass(frozen=True)
class PhotoRequest:
    """One request to the keypoint pipeline: a photo file's bytes and person boxes (x1, y1, x2, y2)."""

    file: Path
    data: bytes
    boxes: np.ndarray  # float32 [N, 4]
    people: tuple  # the hrdeploy.parity.coco.PersonBox of each box (COCO scoring), () without annotations


def photo_requests(images: str | os.PathLike, ann: str | os.PathLike | None = None,
                   max_boxes: int = DEFAULT_MAX_BOXES) -> tuple[list[PhotoRequest], Any]:
    """The requests for a folder of photos and the CocoKeypoints of `ann` (None without).

    With annotations: each photo's ground-truth person boxes, as `hrdeploy eval` takes them (people with
    keypoints, not crowd), at most `max_boxes` per request. Without: every photo in the folder with one box,
    the whole photo.
    """
    from hrdeploy.images import image_files, read_image

    if max_boxes < 1:
        raise UserError(f"--max-boxes {max_boxes}: give 1 or more")
    if ann is None:
        out = []
        for f in image_files(images):
            h, w = read_image(f).shape[:2]
            out.append(PhotoRequest(f, f.read_bytes(), np.array([[0, 0, w, h]], np.float32), ()))
        return out, None
    from hrdeploy.parity.coco import CocoKeypoints

    coco = CocoKeypoints(ann, images)
    by_image: dict[int, list] = {}
    for b in coco.gt_boxes():
        by_image.setdefault(b.image_id, []).append(b)
    if not by_image:
        raise UserError(f"{ann} has no person with keypoints on the images of {images}; nothing to send")
    out = []
    for image_id in sorted(by_image):
        people = by_image[image_id]
        data = coco.file(image_id).read_bytes()
        for i in range(0, len(people), max_boxes):
            part = people[i:i + max_boxes]
            xyxy = np.array([[x, y, x + w, y + h] for x, y, w, h in (p.box for p in part)], np.float32)
            out.append(PhotoRequest(coco.file(image_id), data, xyxy, tuple(part)))
    return out, coco


def check_pipeline_model(target: Target, model: str) -> None:
    """UserError unless `model` on the server takes IMAGE and BOXES and answers KEYPOINTS (a keypoint pipeline)."""
    from hrdeploy.serve.pipeline import BOXES, IMAGE, KEYPOINTS

    meta, _ = model_metadata(target, model)
    inputs = sorted(t["name"] for t in meta.get("inputs", []))
    outputs = [t["name"] for t in meta.get("outputs", [])]
    if inputs != sorted([IMAGE, BOXES]) or KEYPOINTS not in outputs:
        raise UserError(f"model {model!r} takes {inputs} and answers {outputs}, not a keypoint pipeline ({IMAGE}, "
                        f"{BOXES} -> {KEYPOINTS}); pass the NAME_pipeline model `hrdeploy serve --pipeline` prints")


def pipeline_client(target: Target, model: str) -> Callable[[PhotoRequest], np.ndarray]:
    """One request's KEYPOINTS [N, K, 3] from the pipeline `model` (a new client; `.close` closes it)."""
    client_mod = _client_module(target.protocol)
    from hrdeploy.serve.pipeline import BOXES, IMAGE, KEYPOINTS

    client = client_mod.InferenceServerClient(target.address)

    def send(req: PhotoRequest) -> np.ndarray:
        image = client_mod.InferInput(IMAGE, [1], "BYTES")
        image.set_data_from_numpy(np.array([req.data], dtype=object))
        boxes = client_mod.InferInput(BOXES, list(req.boxes.shape), "FP32")
        boxes.set_data_from_numpy(req.boxes)
        return client.infer(model, [image, boxes]).as_numpy(KEYPOINTS)

    send.close = client.close  # type: ignore[attr-defined]
    return send


class PipelineLoad:
    """Closed-loop callables for `collect` that send photo requests in turn and keep what the server answered.

    Worker i starts at request i * len / C (the clients spread over the photos); the first answer to each
    request is kept, so the answers under load can be scored (`complete` asks for the ones never reached).
    Each worker's first WARMUP calls (collect's warm-up) are neither counted nor kept.
    """

    WARMUP = 1

    def __init__(self, target: Target, model: str, requests: Sequence[PhotoRequest]) -> None:
        if not requests:
            raise UserError("no photo requests to send")
        self.target, self.model, self.requests = target, model, list(requests)
        self._lock = threading.Lock()
        self.reset(1)

    def reset(self, concurrency: int) -> None:
        """Forget the answers and counts; the next `concurrency` make_call()s spread over the requests."""
        self.concurrency = concurrency
        self.answers: dict[int, np.ndarray] = {}
        self.people = 0
        self._workers = 0

    def make_call(self) -> Callable[[], object]:
        with self._lock:
            worker = self._workers
            self._workers += 1
        send = pipeline_client(self.target, self.model)
        position = [worker * len(self.requests) // max(self.concurrency, 1)]
        calls = [0]

        def call() -> None:
            i = position[0] % len(self.requests)
            position[0] += 1
            calls[0] += 1
            keypoints = send(self.requests[i])
            if calls[0] > self.WARMUP:
                with self._lock:
                    self.people += len(keypoints)
                    self.answers.setdefault(i, keypoints)

        call.close = send.close  # type: ignore[attr-defined]
        return call

    def complete(self) -> int:
        """Ask (untimed) for the requests no worker reached; returns how many were answered under load."""
        under_load = len(self.answers)
        missing = [i for i in range(len(self.requests)) if i not in self.answers]
        if missing:
            send = pipeline_client(self.target, self.model)
            try:
                for i in missing:
                    self.answers[i] = send(self.requests[i])
            finally:
                send.close()
        return under_load

    def keypoints(self) -> tuple[list, np.ndarray]:
        """(PersonBox per answered person, keypoints [P, K, 3]) in request order, after `complete`."""
        people = [p for r in self.requests for p in r.people]
        kps = [self.answers[i][j] for i, r in enumerate(self.requests) for j in range(len(r.people))]
        return people, np.stack(kps) if kps else np.zeros((0, 0, 3), np.float32)


def load_pipeline(load: PipelineLoad, concurrency: int, coco: Any = None, *, requests: int | None = None,
                  duration: float | None = None) -> LoadResult:
    """One concurrency level against the pipeline: throughput, people/s and, with `coco`, the answers' COCO AP."""
    from hrdeploy.parity.coco import results_from_keypoints

    load.reset(concurrency)
    samples = collect(load.make_call, concurrency, requests=requests, duration=duration, warmup=load.WARMUP)
    result = summarize(samples)
    result.people_per_s = round(load.people / samples.seconds, 2) if samples.seconds > 0 else 0.0
    if coco is not None:
        result.answered_under_load = load.complete()
        people, kps = load.keypoints()
        stats = coco.score(results_from_keypoints(people, kps.astype(np.float64), coco.category_id))
        result.ap, result.mean_oks = round(stats["AP"], 4), round(stats["mean_oks"], 4)
    return result


# ------------------------------------------------------------------------------------------ metrics


def _check_metrics_url(url: str, what: str = "metrics") -> None:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https"):
        raise UserError(f"{what} URL {url!r} is not http(s)://HOST:PORT/metrics; the load test reads Triton's "
                        "metrics over HTTP on this machine")
    check_loopback(parts.hostname or "", what)


class _LoopbackRedirects(urllib.request.HTTPRedirectHandler):
    """Follows a redirect only to a loopback http(s) URL: the loopback rule holds for every connection."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):  # noqa: ANN001, ANN201 - urllib's signature
        _check_metrics_url(newurl, f"metrics redirect from {req.full_url} to")
        return super().redirect_request(req, fp, code, msg, headers, newurl)


def scrape_metrics(url: str, model: str) -> dict[str, float]:
    """Triton's Prometheus counters for `model` (summed over versions), e.g. nv_inference_exec_count.

    Read straight from the loopback address (no HTTP proxy from the environment), following only redirects
    that stay on loopback.
    """
    _check_metrics_url(url)
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}), _LoopbackRedirects())
    try:
        with opener.open(url, timeout=5) as resp:
            text = resp.read().decode()
    except (OSError, UnicodeDecodeError) as err:
        raise UserError(f"cannot read metrics from {url}: {err}") from err
    counters: dict[str, float] = {}
    for line in text.splitlines():
        m = _SAMPLE.match(line.strip())
        if m and f'model="{model}"' in m.group(2):
            counters[m.group(1)] = counters.get(m.group(1), 0.0) + float(m.group(3))
    return counters


def average_batch(before: dict[str, float], after: dict[str, float],
                  count: str = "nv_inference_request_success") -> float | None:
    """Requests per model execution between two scrapes (nv_inference_request_success / nv_inference_exec_count).

    count="nv_inference_count" gives batch items (e.g. crops) per execution instead of requests.
    """
    execs = after.get("nv_inference_exec_count", 0.0) - before.get("nv_inference_exec_count", 0.0)
    done = after.get(count, 0.0) - before.get(count, 0.0)
    return round(done / execs, 3) if execs > 0 else None


def markdown(report: dict) -> str:
    """The load-test report as a Markdown table (one row per concurrency)."""
    t = report["target"]
    budget = f"{t['requests']} requests" if t.get("requests") else f"{t['duration_s']:g} s"
    if t.get("pipeline"):
        boxes = "their annotated person boxes" if t.get("ann") else "one whole-photo box each"
        scored = f" (scored against {t['ann']})" if t.get("ann") else " (none without --ann)"
        lines = [
            f"# Load test: keypoint pipeline {t['model']} at {t['url']}",
            "",
            f"{budget} per concurrency; {t['photo_requests']} requests cycled: the photos of {t['images']} with "
            f"{boxes} ({t['people']} people), closed loop (each worker waits for its answer). Latency is "
            f"client-side; network batch = crops (requests) per execution of {t['network_model']} from Triton's "
            f"metrics; AP = COCO keypoint AP of the answers{scored}; "
            f"{report['machine']}.",
            "",
            "| concurrency | requests | failed | req/s | people/s | p50 ms | p90 ms | p99 ms | network batch (crops) "
            "| requests per network batch | AP | mean OKS |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        keys = ("concurrency", "requests", "failures", "throughput_rps", "people_per_s", "p50_ms", "p90_ms", "p99_ms",
                "network_batch", "network_requests_per_batch", "ap", "mean_oks")
    else:
        lines = [
            f"# Load test: {t['model']} at {t['url']}",
            "",
            f"{budget} per concurrency, batch {t['batch']} per request, input {t['datatype']} {t['shape']}, "
            f"closed loop (each worker waits for its answer). Latency is client-side; {report['machine']}.",
            "",
            "| concurrency | requests | failed | req/s | images/s | p50 ms | p90 ms | p99 ms | mean ms | avg batch |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        keys = ("concurrency", "requests", "failures", "throughput_rps", "images_per_s", "p50_ms", "p90_ms", "p99_ms",
                "mean_ms", "avg_batch")
    for r in report["results"]:
        lines.append("| " + " | ".join("-" if r[k] is None else str(r[k]) for k in keys) + " |")
    for r in report["results"]:
        for e in r["errors"]:
            lines.append(f"\n- concurrency {r['concurrency']}: {e}")
    return "\n".join(lines) + "\n"


def as_dict(result: LoadResult) -> dict:
    return asdict(result)
