"""A bounded load test of a server on this machine: requests/s, latency percentiles.

    python -m llmlab.load_test --url http://127.0.0.1:8000/classify --concurrency 1 8 32

    # the server started, loaded and stopped for you:
    rows = throughput_curve(lambda: create_app(assistant, max_batch=1),
                            banking77_payloads(), concurrencies=[1, 8, 32])

A closed loop: ``concurrency`` clients each send a request, wait for its response and
send the next, until ``requests`` have been sent in all. A refused client (429) sends
its next request at once (the harshest case for the server), or waits as long as
the Retry-After header asks (``honour_retry_after``: a polite client). Latency
percentiles are those of the answered (200) requests. Bounded on purpose: a fixed
number of requests, and only to this machine (127.0.0.1, localhost or ::1): a load
test aimed at someone else's server is an attack.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import contextlib
import json
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np

LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")
MAX_REQUESTS = 100_000
MAX_CONCURRENCY = 1024


def check_loopback(url: str) -> str:
    """``url`` if it is an http(s) address on this machine; else one line saying why."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or parts.hostname not in LOOPBACK_HOSTS:
        raise ValueError(
            f"the load test only targets this machine (http://127.0.0.1 or "
            f"http://localhost), got {url!r}"
        )
    return url


def _check_count(name: str, value, most: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= most:
        raise ValueError(f"{name} must be an int from 1 to {most:,}, got {value!r}")
    return value


def percentile_ms(seconds: Sequence[float], q: float) -> float:
    """The ``q``-th percentile of latencies given in seconds, in ms (NaN if none)."""
    return float(np.percentile(seconds, q) * 1000) if len(seconds) else float("nan")


async def load_async(
    url: str,
    payloads: Sequence[dict],
    concurrency: int,
    requests: int,
    timeout_s: float = 30.0,
    honour_retry_after: bool = False,
) -> dict:
    """The load test itself (see :func:`run_load_test`), inside a running event loop."""
    import httpx

    check_loopback(url)
    _check_count("concurrency", concurrency, MAX_CONCURRENCY)
    _check_count("requests", requests, MAX_REQUESTS)
    if not payloads:
        raise ValueError("payloads is empty: give at least one request body")
    sent = 0
    answered: list[float] = []  # latency in seconds of every 200
    counts = {"ok": 0, "too_many": 0, "other": 0, "errors": 0}
    error_kinds: set[str] = set()

    async def client_loop(http) -> None:
        nonlocal sent
        while sent < requests:
            payload = payloads[sent % len(payloads)]
            sent += 1
            started = time.perf_counter()
            try:
                response = await http.post(url, json=payload)
            except httpx.HTTPError as error:  # refused, timed out, broken response
                counts["errors"] += 1
                error_kinds.add(type(error).__name__)
                continue
            if response.status_code == 200:
                counts["ok"] += 1
                answered.append(time.perf_counter() - started)
            elif response.status_code == 429:
                counts["too_many"] += 1
                if honour_retry_after:  # a polite client waits as it is told
                    wait_s = float(response.headers.get("Retry-After", 1))
                    await asyncio.sleep(min(wait_s, timeout_s))
            else:
                counts["other"] += 1

    limits = httpx.Limits(
        max_connections=concurrency, max_keepalive_connections=concurrency
    )
    # trust_env=False: a proxy named in the environment must not carry loopback traffic
    async with httpx.AsyncClient(
        timeout=timeout_s, limits=limits, trust_env=False
    ) as http:
        started = time.perf_counter()
        await asyncio.gather(*(client_loop(http) for _ in range(concurrency)))
        seconds = time.perf_counter() - started
    responses = counts["ok"] + counts["too_many"] + counts["other"]
    return dict(
        concurrency=concurrency,
        requests=requests,
        seconds=seconds,
        requests_per_s=responses / seconds,
        answered_per_s=counts["ok"] / seconds,
        p50_ms=percentile_ms(answered, 50),
        p95_ms=percentile_ms(answered, 95),
        p99_ms=percentile_ms(answered, 99),
        **counts,
        refused_share=counts["too_many"] / requests,
        error_kinds=sorted(error_kinds),
    )


def run_load_test(
    url: str,
    payloads: Sequence[dict],
    concurrency: int,
    requests: int,
    timeout_s: float = 30.0,
    honour_retry_after: bool = False,
) -> dict:
    """POST ``requests`` bodies of ``payloads`` (cycled) to ``url``, ``concurrency``
    at a time.

    Returns requests_per_s (every response), answered_per_s (200s), p50_ms/p95_ms/p99_ms
    (latency of the 200s), the counts ok (200), too_many (429), other (any other status)
    and errors (no response), refused_share (429s / requests) and seconds. A refused
    client sends its next request at once, or with ``honour_retry_after`` after the
    seconds the server's Retry-After header asks for. Runs in a thread of its own, so
    it works where an event loop is already running (a notebook).
    """
    check_loopback(url)
    test = load_async(
        url, payloads, concurrency, requests, timeout_s, honour_retry_after
    )
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as thread:
        return thread.submit(asyncio.run, test).result()


@contextlib.contextmanager
def serve_in_thread(app, start_timeout_s: float = 30.0) -> Iterator[str]:
    """Serve ``app`` with uvicorn on a free port of 127.0.0.1, in a thread; yields its
    base URL, then stops the server."""
    import uvicorn

    # log_level warning: no access-log line per request (a proxy in front logs them)
    config = uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="llmlab-uvicorn", daemon=True)
    thread.start()
    deadline = time.monotonic() + start_timeout_s
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            server.should_exit = True
            raise RuntimeError(f"uvicorn did not start within {start_timeout_s:g} s")
        time.sleep(0.05)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)


def throughput_curve(
    app_factory: Callable[[], object],
    payloads: Sequence[dict],
    concurrencies: Sequence[int],
    requests: int = 200,
    path: str = "/classify",
    timeout_s: float = 30.0,
    warmup_requests: int = 32,
    honour_retry_after: bool = False,
) -> list[dict]:
    """:func:`run_load_test` at each concurrency on ``app_factory()`` served by uvicorn.

    The server runs in a thread of this process on 127.0.0.1, so client and server share
    the machine's cores, and it is stopped afterwards. ``warmup_requests`` (not
    reported) go first, at the highest concurrency. Where the app has a batcher
    (``app.state.batcher``), each row gets ``mean_batch``: the requests per model call
    during that row's load.
    """
    from llmlab.progress import tqdm

    app = app_factory()
    batcher = getattr(getattr(app, "state", None), "batcher", None)
    rows = []
    with serve_in_thread(app) as base_url:
        url = base_url + path
        if warmup_requests:
            run_load_test(url, payloads, max(concurrencies), warmup_requests, timeout_s)
        for concurrency in tqdm(concurrencies, desc="load test"):
            before = (batcher.batches, batcher.batched_requests) if batcher else None
            row = run_load_test(
                url, payloads, concurrency, requests, timeout_s, honour_retry_after
            )
            if batcher and batcher.batches > before[0]:
                row["mean_batch"] = (batcher.batched_requests - before[1]) / (
                    batcher.batches - before[0]
                )
            rows.append(row)
    return rows


def banking77_payloads(count: int = 200, seed: int = 0) -> list[dict]:
    """``count`` BANKING77 test messages as /classify bodies, shuffled with ``seed``."""
    from llmlab.data import banking77

    test = banking77()["test"].shuffle(seed=seed)
    return [{"text": text} for text in test.select(range(count))["text"]]


def format_table(rows: Sequence[dict]) -> str:
    """A line per load test: concurrency, throughput, latency of the 200s, statuses."""
    header = (
        f"{'concurrency':>11} {'requests/s':>10} {'answered/s':>10} {'p50 ms':>8} "
        f"{'p95 ms':>8} {'p99 ms':>8} {'200':>5} {'429':>5} {'other':>5} {'errors':>6}"
    )
    lines = [header]
    for row in rows:
        lines.append(
            f"{row['concurrency']:>11} {row['requests_per_s']:>10.1f} "
            f"{row['answered_per_s']:>10.1f} {row['p50_ms']:>8.0f} "
            f"{row['p95_ms']:>8.0f} "
            f"{row['p99_ms']:>8.0f} {row['ok']:>5} {row['too_many']:>5} "
            f"{row['other']:>5} {row['errors']:>6}"
        )
    return "\n".join(lines)


def read_payloads(path: Path) -> list[dict]:
    """Request bodies from a JSON Lines file, one JSON object a line."""
    bodies = []
    for number, line in enumerate(
        path.read_text(encoding="utf-8").splitlines(), start=1
    ):
        if line.strip():
            body = json.loads(line)
            if not isinstance(body, dict):
                raise ValueError(f"{path} line {number} is not a JSON object")
            bodies.append(body)
    return bodies


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m llmlab.load_test",
        description="A bounded load test of a server on this machine.",
    )
    parser.add_argument(
        "--url", required=True, help="e.g. http://127.0.0.1:8000/classify"
    )
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument(
        "--requests", type=int, default=200, help="requests at each concurrency"
    )
    parser.add_argument("--timeout-s", type=float, default=30.0)
    parser.add_argument(
        "--honour-retry-after",
        action="store_true",
        help="after a 429, wait the seconds its Retry-After header asks for",
    )
    parser.add_argument(
        "--payloads",
        type=Path,
        default=None,
        help="JSON Lines of request bodies (default: 200 BANKING77 test messages)",
    )
    options = parser.parse_args(argv)
    try:
        check_loopback(options.url)
        for concurrency in options.concurrency:
            _check_count("--concurrency", concurrency, MAX_CONCURRENCY)
        _check_count("--requests", options.requests, MAX_REQUESTS)
        payloads = (
            read_payloads(options.payloads)
            if options.payloads
            else banking77_payloads(min(200, options.requests))
        )
        rows = [
            run_load_test(
                options.url,
                payloads,
                concurrency,
                options.requests,
                options.timeout_s,
                options.honour_retry_after,
            )
            for concurrency in options.concurrency
        ]
    except (ValueError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(format_table(rows))
    kinds = sorted({kind for row in rows for kind in row["error_kinds"]})
    if kinds:
        print(f"errors (no response): {', '.join(kinds)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
