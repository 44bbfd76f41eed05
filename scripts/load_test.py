"""Load test of ``vocabert serve``: start the server, run concurrent clients, report throughput and latency.

    python scripts/load_test.py --model runs/minilm-msmarco/model --clients 8 --duration 20

starts ``vocabert serve`` on a free loopback port in a subprocess, checks that its vectors are
exactly those of ``vocabert.load(model).encode``, then for each ``--batch`` size runs ``--clients``
closed-loop clients (each sends its next request when the last one is answered) for ``--duration``
seconds after a warm-up, posting real MS MARCO dev queries (``msmarco_queries_dev/`` of the data
folder). It prints requests/s, texts/s, latency p50 / p99 and failed requests, the CPU time the server
and the clients used and what the rest of the machine used meanwhile (they share it), and writes the
figures as JSON with ``--json``.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import gzip
import json
import os
import platform
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np

import vocabert

QUERIES = Path("msmarco_queries_dev") / "queries.dev.txt.gz"


def read_queries(data_dir: Path | None, limit: int) -> list[str]:
    if data_dir is None:
        from vocabert.distill.corpus import default_data_dir

        data_dir = default_data_dir()
    if data_dir is None or not (data_dir / QUERIES).is_file():
        sys.exit(f"load_test: {QUERIES} not found under {data_dir} (set --data-dir or $VOCABERT_DATA)")
    with gzip.open(data_dir / QUERIES, "rt", encoding="utf-8") as f:
        texts = [line.rstrip("\n") for _, line in zip(range(limit), f, strict=False)]
    return [t for t in texts if t.strip()]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of process ``pid`` and its children (uvicorn's workers), from /proc."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(stat.parent.name) == pid or int(fields[1]) == pid:  # fields[1]: the parent's pid
            total += (int(fields[11]) + int(fields[12])) / tick
    return total


def machine_busy_seconds() -> float:
    """CPU time spent by every process on the machine (all cores), from /proc/stat."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle, iowait
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def start_server(args: argparse.Namespace, port: int) -> subprocess.Popen:
    command = [sys.executable, "-m", "vocabert.cli", "serve", "--model", str(args.model), "--port", str(port)]
    command += ["--workers", str(args.workers)] + (["--threads", str(args.threads)] if args.threads else [])
    server = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if server.poll() is not None:
            sys.exit(f"load_test: the server exited ({server.returncode}):\n{server.stderr.read()}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                return server
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    server.kill()
    sys.exit("load_test: the server did not answer /health within 120 s")


def check_exact(url: str, model_dir: Path, texts: list[str]) -> None:
    """The server's float and base64 vectors are exactly the library's."""
    expected = vocabert.load(model_dir).encode(texts)
    r = httpx.post(f"{url}/v1/embeddings", json={"input": texts}, timeout=60)
    r.raise_for_status()
    got = np.array([d["embedding"] for d in r.json()["data"]], dtype=np.float32)
    r = httpx.post(f"{url}/v1/embeddings", json={"input": texts, "encoding_format": "base64"}, timeout=60)
    r.raise_for_status()
    got64 = np.stack([np.frombuffer(base64.b64decode(d["embedding"]), "<f4") for d in r.json()["data"]])
    if not (np.array_equal(got, expected) and np.array_equal(got64, expected)):
        sys.exit("load_test: the server's vectors differ from vocabert.load(model).encode")


async def scenario(url: str, texts: list[str], batch: int, clients: int, warmup: float, duration: float, fmt: str):
    """``clients`` closed-loop clients posting ``batch`` texts per request: the latencies of the requests
    wholly inside the timed window, the failures of all (warm-up included) and the number sent."""
    latencies: list[float] = []
    failures: list[str] = []
    sent = [0]
    start = time.perf_counter() + warmup
    stop = start + duration
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)

    async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as http:

        async def client(k: int) -> None:
            i = k * 7919 * batch  # each client its own stretch of the queries
            while (now := time.perf_counter()) < stop:
                body = {"input": [texts[(i + j) % len(texts)] for j in range(batch)], "model": "vocabert"}
                if fmt != "float":
                    body["encoding_format"] = fmt
                i += batch
                try:
                    r = await http.post("/v1/embeddings", json=body)
                    ok = r.status_code == 200 and len(r.json()["data"]) == batch
                    error = None if ok else f"HTTP {r.status_code}: {r.text[:200]}"
                except httpx.HTTPError as e:
                    error = f"{type(e).__name__}: {e}"
                done = time.perf_counter()
                sent[0] += 1
                if error:
                    failures.append(error)
                elif now >= start and done <= stop:  # requests wholly inside the timed window
                    latencies.append(done - now)

        await asyncio.gather(*(client(k) for k in range(clients)))
    return latencies, failures, sent[0]


def run(args: argparse.Namespace) -> list[dict]:
    texts = read_queries(args.data_dir, args.queries)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    server = start_server(args, port)
    results = []
    try:
        check_exact(url, args.model, texts[:64])
        print(f"server: {url} (pid {server.pid}); vectors exactly those of encode; {len(texts)} queries", flush=True)
        for fmt, batch in ((f, b) for f in args.encoding_format for b in args.batch):
            server_cpu, client_cpu, busy = cpu_seconds(server.pid), time.process_time(), machine_busy_seconds()
            started = time.perf_counter()
            latencies, failures, sent = asyncio.run(
                scenario(url, texts, batch, args.clients, args.warmup, args.duration, fmt)
            )
            wall = time.perf_counter() - started
            server_cpu, client_cpu = cpu_seconds(server.pid) - server_cpu, time.process_time() - client_cpu
            busy = machine_busy_seconds() - busy
            lat = np.array(latencies) * 1000
            row = {
                "batch": batch,
                "clients": args.clients,
                "encoding_format": fmt,
                "seconds": args.duration,
                "requests": len(latencies),  # answered in the timed window
                "sent": sent,  # warm-up and the window's edges included
                "failed": len(failures),  # of those sent
                "requests_per_s": len(latencies) / args.duration,
                "texts_per_s": len(latencies) * batch / args.duration,
                "latency_ms_p50": float(np.percentile(lat, 50)) if len(lat) else None,
                "latency_ms_p99": float(np.percentile(lat, 99)) if len(lat) else None,
                "latency_ms_mean": float(lat.mean()) if len(lat) else None,
                # CPU cores busy over the scenario (warm-up included), server and load generator apart
                "server_cores": server_cpu / wall,
                "client_cores": client_cpu / wall,
                "other_cores": max(0.0, busy - server_cpu - client_cpu) / wall,  # other work on the machine
                # the server's CPU time per request: steadier than throughput on a shared machine
                "server_cpu_ms_per_request": server_cpu * 1000 / max(sent, 1),
            }
            results.append(row)
            print(json.dumps(row), flush=True)
            for f in failures[:5]:
                print(f"  failed: {f}", flush=True)
    finally:
        server.terminate()
        try:
            server.wait(10)
        except subprocess.TimeoutExpired:
            server.kill()
    return results


COLUMNS = [  # (header, key, format)
    ("texts/request", "batch", "{}"),
    ("format", "encoding_format", "{}"),
    ("clients", "clients", "{}"),
    ("requests", "requests", "{:,}"),
    ("failed", "failed", "{}"),
    ("requests/s", "requests_per_s", "{:,.0f}"),
    ("texts/s", "texts_per_s", "{:,.0f}"),
    ("p50 ms", "latency_ms_p50", "{:.1f}"),
    ("p99 ms", "latency_ms_p99", "{:.1f}"),
    ("server cores", "server_cores", "{:.2f}"),
    ("client cores", "client_cores", "{:.2f}"),
    ("other cores", "other_cores", "{:.2f}"),
    ("server CPU ms/request", "server_cpu_ms_per_request", "{:.2f}"),
]


def table(results: list[dict]) -> str:
    lines = ["| " + " | ".join(h for h, _, _ in COLUMNS) + " |"]
    lines.append("|" + "|".join("---" if k == "encoding_format" else "---:" for _, k, _ in COLUMNS) + "|")
    for r in results:
        cells = ("—" if r[k] is None else f.format(r[k]) for _, k, f in COLUMNS)
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, default=Path("runs/minilm-msmarco/model"), help="(default: %(default)s)")
    parser.add_argument("--data-dir", type=Path, default=None, help="(default: $VOCABERT_DATA or ../shared/data)")
    parser.add_argument("--queries", type=int, default=20_000, help="queries read (default: %(default)s)")
    parser.add_argument("--clients", type=int, default=8, help="concurrent clients (default: %(default)s)")
    parser.add_argument(
        "--batch", type=int, nargs="+", default=[1, 32], help="texts per request, one scenario each (default: 1 32)"
    )
    parser.add_argument("--duration", type=float, default=20.0, help="timed seconds per scenario (default: 20)")
    parser.add_argument("--warmup", type=float, default=2.0, help="untimed seconds first (default: %(default)s)")
    parser.add_argument(
        "--encoding-format",
        nargs="+",
        choices=["float", "base64"],
        default=["float"],
        help="answers asked for, one set of scenarios each (default: float)",
    )
    parser.add_argument("--workers", type=int, default=1, help="server processes (default: %(default)s)")
    parser.add_argument("--threads", type=int, default=None, help="server encode threads (default: the server's)")
    parser.add_argument("--json", type=Path, default=None, help="write the figures here")
    args = parser.parse_args()
    results = run(args)
    print(table(results))
    if args.json:
        machine = {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()}
        settings = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
        args.json.write_text(json.dumps({"settings": settings, "machine": machine, "results": results}, indent=1))
    if any(r["failed"] for r in results):
        sys.exit(1)


if __name__ == "__main__":
    main()
