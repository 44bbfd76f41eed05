"""Load test of ``vocabert serve``: start the server, run concurrent clients, report throughput and latency.

    python scripts/load_test.py --model runs/minilm-msmarco/model --clients 8 --duration 20
    python scripts/load_test.py --model runs/minilm-msmarco/model --batch 1 --hostile \
        --json docs/results/load_test.json --docs      # the figures of docs/serving.md

starts ``vocabert serve`` on a free loopback port in a subprocess, checks that its vectors are
exactly those of ``vocabert.load(model).encode``, then for each ``--batch`` size runs ``--clients``
closed-loop clients (each sends its next request when the last one is answered) for ``--duration``
seconds after a warm-up, posting real MS MARCO dev queries (``msmarco_queries_dev/`` of the data
folder). It prints requests/s, texts/s, latency p50 / p99 and failed requests, the CPU time the server
and the clients used and what the rest of the machine used meanwhile (they share it), and the server's
peak memory (RSS, sampled).

With ``--hostile`` every scenario runs twice more with hostile clients beside the normal ones
(:data:`HOSTILE`): first the ones that only hold or drop connections (they send their headers a line
a second, or nothing, stop their body half way, hang up mid-request with a reset or before reading
the answer), then all of them, with a client posting requests of unique 10,000-character words (they
cost the server CPU, as any large request does). The normal clients should see no failure.

``--json PATH`` writes the figures in the form of ``docs/results/`` (see ``scripts/make_docs.py``);
``--docs`` then redraws the table of ``docs/serving.md`` from it.
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
import tempfile
import time
from collections import Counter, defaultdict
from pathlib import Path

import httpx
import numpy as np

import vocabert

QUERIES = Path("msmarco_queries_dev") / "queries.dev.txt.gz"
ROOT = Path(__file__).resolve().parents[1]
DOCS_PAGE = ROOT / "docs" / "serving.md"
# Hostile clients beside the normal ones (kind: how many), all below the server's connection cap (256).
HOSTILE = {"slow_headers": 24, "silent": 8, "half_body": 16, "hang_up": 2, "long_words": 1}
# The phases of --hostile: none, those that only hold or drop connections, all.
HOSTILE_PHASES = ({}, {k: n for k, n in HOSTILE.items() if k != "long_words"}, HOSTILE)
HOSTILE_WORDS, HOSTILE_WORD_CHARS = 16, 10_000  # a long_words request: unique words this long, one a text


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


def server_rss_mb(pid: int) -> float:
    """Resident memory of process ``pid`` and its children (uvicorn's workers), MiB, from /proc."""
    total = 0
    for status in Path("/proc").glob("[0-9]*/status"):
        try:
            fields = dict(line.split(":", 1) for line in status.read_text().splitlines() if ":" in line)
        except OSError:
            continue
        if int(status.parent.name) == pid or int(fields.get("PPid", "0")) == pid:
            total += int(fields.get("VmRSS", "0 kB").split()[0])
    return total / 1024


def machine_busy_seconds() -> float:
    """CPU time spent by every process on the machine (all cores), from /proc/stat."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle, iowait
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def start_server(args: argparse.Namespace, port: int, log: Path) -> subprocess.Popen:
    """``vocabert serve`` on ``port``, its output in ``log`` (a file: a pipe nobody reads would block it)."""
    command = [sys.executable, "-m", "vocabert.cli", "serve", "--model", str(args.model), "--port", str(port)]
    command += ["--workers", str(args.workers)] + (["--threads", str(args.threads)] if args.threads else [])
    with open(log, "w") as out:
        server = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if server.poll() is not None:
            sys.exit(f"load_test: the server exited ({server.returncode}):\n{log.read_text()}")
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


async def scenario(
    url: str,
    texts: list[str],
    batch: int,
    clients: int,
    warmup: float,
    duration: float,
    fmt: str,
    hostile: dict[str, int] | None = None,
    server_pid: int | None = None,
):
    """``clients`` closed-loop clients posting ``batch`` texts per request (and the ``hostile`` clients
    beside them, kind: how many): the latencies of the requests wholly inside the timed window, the
    failures of all (warm-up included), the number sent, what the hostile clients met and the server's
    peak RSS (MiB, sampled every 0.2 s)."""
    latencies: list[float] = []
    failures: list[str] = []
    sent = [0]
    start = time.perf_counter() + warmup
    stop = start + duration
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    met: defaultdict[str, Counter] = defaultdict(Counter)
    peak = [0.0]

    async def sample_rss() -> None:
        while time.perf_counter() < stop:
            peak[0] = max(peak[0], server_rss_mb(server_pid))
            await asyncio.sleep(0.2)

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

        tasks = [client(k) for k in range(clients)]
        if server_pid is not None:
            tasks.append(sample_rss())
        if hostile:
            host, port = url.removeprefix("http://").split(":")
            tasks += [
                hostile_client(kind, k, host, int(port), stop, met[kind])
                for kind, n in hostile.items()
                for k in range(n)
            ]
        await asyncio.gather(*tasks)
    return latencies, failures, sent[0], {kind: dict(counts) for kind, counts in met.items()}, peak[0]


# ------------------------------------------------------------------------------------------ hostile clients

HEAD = "POST /v1/embeddings HTTP/1.1\r\nhost: load-test\r\ncontent-type: application/json\r\n"


async def until_closed(reader: asyncio.StreamReader, stop: float) -> str:
    """What the server did with the connection by ``stop``: the status it answered before closing it,
    ``closed`` (without a word) or ``open``."""
    try:
        data = await asyncio.wait_for(reader.read(), timeout=max(0.01, stop - time.perf_counter()))
    except TimeoutError:
        return "open"
    except ConnectionError:
        return "reset"
    return data.split(b" ", 2)[1].decode() if data.startswith(b"HTTP/1.1 ") else "closed"


async def hostile_client(kind: str, k: int, host: str, port: int, stop: float, met: Counter) -> None:
    """One hostile client of ``kind`` until ``stop``, connection after connection; ``met`` counts what
    became of each (the server's status, ``closed``, ``open`` when the test ended, ...)."""
    if kind == "long_words":
        return await long_words_client(k, host, port, stop, met)
    n = 0
    while time.perf_counter() < stop:
        n += 1
        try:
            reader, writer = await asyncio.open_connection(host, port)
        except OSError as e:
            met[f"connect failed: {type(e).__name__}"] += 1
            await asyncio.sleep(0.5)
            continue
        try:
            if kind == "slow_headers":  # a header line a second, until the server answers
                writer.write(HEAD.encode())
                outcome = "open"
                while outcome == "open" and time.perf_counter() < stop:
                    writer.write(b"x-slow: 1\r\n")
                    outcome = await until_closed(reader, min(stop, time.perf_counter() + 1.0))
            elif kind == "silent":  # connects and sends nothing
                outcome = await until_closed(reader, stop)
            elif kind == "half_body":  # announces 100,000 bytes, sends 20
                writer.write(f"{HEAD}content-length: 100000\r\n\r\n".encode() + b'{"input": ["half a bo')
                outcome = await until_closed(reader, stop)
            else:  # hang_up: mid-body with a reset, or a whole request and gone before the answer
                body = json.dumps({"input": [f"hang up {k} {n}"]}).encode()
                if n % 2:
                    writer.write(f"{HEAD}content-length: {len(body)}\r\n\r\n".encode() + body[:5])
                else:
                    writer.write(f"{HEAD}content-length: {len(body)}\r\n\r\n".encode() + body)
                await writer.drain()
                await asyncio.sleep(0.01)
                writer.transport.abort()
                outcome = "hung up mid-body" if n % 2 else "hung up before the answer"
                await asyncio.sleep(0.05)
            met[outcome] += 1
        except ConnectionError as e:
            met[type(e).__name__] += 1
        finally:
            writer.transport.abort()


async def long_words_client(k: int, host: str, port: int, stop: float, met: Counter) -> None:
    """Closed loop of requests of unique 10,000-character words (one [UNK] each, 40 KB as Python strings)."""
    async with httpx.AsyncClient(base_url=f"http://{host}:{port}", timeout=60) as http:
        n = 0
        while time.perf_counter() < stop:
            words = [f"{k}-{n}-{i}-" + "\U0001f600" * HOSTILE_WORD_CHARS for i in range(HOSTILE_WORDS)]
            n += 1
            try:
                r = await http.post("/v1/embeddings", json={"input": [w[:HOSTILE_WORD_CHARS] for w in words]})
                met[str(r.status_code)] += 1
            except httpx.HTTPError as e:
                met[type(e).__name__] += 1


def run(args: argparse.Namespace) -> list[dict]:
    texts = read_queries(args.data_dir, args.queries)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = Path(tempfile.mkdtemp(prefix="load_test-")) / "server.log"
    server = start_server(args, port, log)
    results = []
    try:
        check_exact(url, args.model, texts[:64])
        print(f"server: {url} (pid {server.pid}, log {log}); vectors exactly those of encode", flush=True)
        phases = HOSTILE_PHASES if args.hostile else ({},)
        for fmt, batch, hostile in ((f, b, h) for f in args.encoding_format for b in args.batch for h in phases):
            server_cpu, client_cpu, busy = cpu_seconds(server.pid), time.process_time(), machine_busy_seconds()
            log_lines = len(log.read_text().splitlines())
            started = time.perf_counter()
            latencies, failures, sent, met, peak_rss = asyncio.run(
                scenario(url, texts, batch, args.clients, args.warmup, args.duration, fmt, hostile, server.pid)
            )
            wall = time.perf_counter() - started
            server_cpu, client_cpu = cpu_seconds(server.pid) - server_cpu, time.process_time() - client_cpu
            busy = machine_busy_seconds() - busy
            lat = np.array(latencies) * 1000
            row = {
                "phase": phase_name(args.clients, hostile),
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
                # the server's CPU time per normal request (the hostile clients' share included)
                "server_cpu_ms_per_request": server_cpu * 1000 / max(sent, 1),
                "server_peak_rss_mb": peak_rss,
                "hostile": met,  # kind: {what became of its connections: how many}
                "server_log_lines": len(log.read_text().splitlines()) - log_lines,  # written during the row
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


def phase_name(clients: int, hostile: dict[str, int]) -> str:
    if not hostile:
        return f"{clients} clients"
    kinds = "long words too" if "long_words" in hostile else "connections only"
    return f"{clients} clients + {sum(hostile.values())} hostile ({kinds})"


# key: (header, format as scripts/make_docs.py reads it)
COLUMNS = {
    "phase": ("clients", "text"),
    "batch": ("texts/request", "d"),
    "encoding_format": ("format", "text"),
    "requests": ("requests", ",d"),
    "failed": ("failed", ",d"),
    "requests_per_s": ("requests/s", ",.0f"),
    "latency_ms_p50": ("p50 ms", ".1f"),
    "latency_ms_p99": ("p99 ms", ".1f"),
    "server_cores": ("server cores", ".2f"),
    "other_cores": ("other cores", ".2f"),
    "server_cpu_ms_per_request": ("server CPU ms/request", ".2f"),
    "server_peak_rss_mb": ("server peak RSS MiB", ".0f"),
    "server_log_lines": ("server log lines", ",d"),
}


def table(results: list[dict]) -> str:
    """The results as a markdown table (the one ``scripts/make_docs.py`` draws from the JSON)."""
    lines = ["| " + " | ".join(h for h, _ in COLUMNS.values()) + " |"]
    lines.append("|" + "|".join("---" if f == "text" else "---:" for _, f in COLUMNS.values()) + "|")
    for r in results:
        cells = ("—" if r.get(k) is None else format(r[k], f if f != "text" else "") for k, (_, f) in COLUMNS.items())
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def results_doc(args: argparse.Namespace, results: list[dict]) -> dict:
    """The figures as ``docs/results/load_test.json`` holds them (read by ``scripts/make_docs.py``)."""
    machine = {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()}
    settings = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
    command = "python scripts/load_test.py " + " ".join(sys.argv[1:])
    return {
        "title": "vocabert serve under load, with and without hostile clients",
        "command": command,
        "provenance": f"written by scripts/load_test.py on {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}",
        "columns": list(COLUMNS),
        "labels": {k: h for k, (h, _) in COLUMNS.items()},
        "formats": {k: f for k, (_, f) in COLUMNS.items()},
        "settings": settings,
        "hostile_clients": HOSTILE,
        "machine": machine,
        "rows": results,
    }


def redraw_docs_table(json_path: Path) -> None:
    """Redraw the tables of ``docs/serving.md`` from ``docs/results/`` (that page only)."""
    sys.path.insert(0, str(ROOT / "scripts"))
    import make_docs

    if json_path.resolve() != (make_docs.RESULTS / "load_test.json").resolve():
        sys.exit(f"load_test: --docs draws from docs/results/load_test.json, not {json_path}")
    text, new = make_docs.regenerate(DOCS_PAGE)
    if new != text:
        DOCS_PAGE.write_text(new, encoding="utf-8")
    print(f"{DOCS_PAGE.relative_to(ROOT)}: {'table redrawn' if new != text else 'table unchanged'}")


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
    parser.add_argument(
        "--hostile",
        action="store_true",
        help="run every scenario twice more, hostile clients beside",
    )
    parser.add_argument("--json", type=Path, default=None, help="write the figures here (docs/results/ form)")
    parser.add_argument("--docs", action="store_true", help="then redraw docs/serving.md's table from --json")
    args = parser.parse_args()
    if args.docs and not args.json:
        parser.error("--docs needs --json docs/results/load_test.json")
    results = run(args)
    print(table(results))
    if args.json:
        args.json.write_text(json.dumps(results_doc(args, results), indent=1) + "\n")
        if args.docs:
            redraw_docs_table(args.json)
    if any(r["failed"] for r in results):
        sys.exit(1)


if __name__ == "__main__":
    main()
