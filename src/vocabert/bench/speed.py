"""Throughput and memory of an encoder, measured the same way for every model.

Throughput is timed in-process on the raw encoder (never through the embedding cache). Memory is
measured in a fresh Python process per model, so one model's imports and allocations never count
against another's: the child loads the model, encodes the texts and reports its own peak RSS.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from vocabert.artifacts import VocabertError


def measure_throughput(
    encode_fn: Callable[[list[str], int], np.ndarray],
    texts: list[str],
    batch_size: int,
    repeats: int = 3,
    warmup: bool = True,
    min_seconds: float = 1.0,
) -> dict:
    """Texts per second of ``encode_fn(texts, batch_size)``: median and every run of ``repeats``.

    One warm-up call on a small slice first (lazy init, allocator, caches), then ``repeats`` timed
    runs, each over all ``texts`` as many times as it takes to last ``min_seconds``: a fast student
    encodes 2,000 passages in ~0.15 s, too short a run for a shared machine's scheduler noise to
    average out. The median is robust to the rest of the noise; all runs are kept.
    """
    from vocabert.bench.peers import CachedEncoder

    if isinstance(getattr(encode_fn, "__self__", None), CachedEncoder):
        raise VocabertError("speed must be measured on the raw encoder: pass encoder.uncached.encode")
    texts = list(texts)
    if not texts or repeats < 1 or batch_size < 1:
        raise VocabertError("measure_throughput needs texts, repeats >= 1 and batch_size >= 1")
    if warmup:
        encode_fn(texts[: max(batch_size, 8)], batch_size)
    seconds, passes = [], []
    for _ in range(repeats):
        start, n, elapsed = time.perf_counter(), 0, 0.0
        while n == 0 or elapsed < min_seconds:
            encode_fn(texts, batch_size)
            n += 1
            elapsed = time.perf_counter() - start
        seconds.append(elapsed)
        passes.append(n)
    rates = [n * len(texts) / max(s, 1e-9) for n, s in zip(passes, seconds, strict=True)]
    return {
        "texts_per_s": statistics.median(rates),
        "runs_texts_per_s": rates,
        "runs_seconds": seconds,
        "runs_passes": passes,
        "min_seconds": min_seconds,
        "n_texts": len(texts),
        "batch_size": batch_size,
        "repeats": repeats,
        "warmup": warmup,
    }


def measure_latency(encode_fn: Callable[[list[str], int], np.ndarray], texts: list[str]) -> dict:
    """Milliseconds to encode one text, call by call: percentiles over ``texts`` (after one warm-up call)."""
    texts = list(texts)
    if not texts:
        raise VocabertError("measure_latency needs texts")
    encode_fn(texts[:1], 1)
    seconds = []
    for text in texts:
        start = time.perf_counter()
        encode_fn([text], 1)
        seconds.append(time.perf_counter() - start)
    ms = 1e3 * np.asarray(seconds)
    return {
        "p50_ms": float(np.percentile(ms, 50)),
        "p90_ms": float(np.percentile(ms, 90)),
        "p99_ms": float(np.percentile(ms, 99)),
        "max_ms": float(ms.max()),
        "n_texts": len(texts),
    }


# Runs in the child process. Only the model's own library is imported, so a peer is charged for
# exactly what its users would load. The result is the last stdout line, after a sentinel.
_CHILD = r"""
import json, os, resource, sys, time

def status_kib(field):
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None

def peak_kib():
    # VmHWM is this process's own peak. ru_maxrss on Linux also carries the parent's peak across
    # fork+exec, so it is only the fallback where /proc is missing.
    hwm = status_kib("VmHWM")
    if hwm is not None:
        return hwm
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return r // 1024 if sys.platform == "darwin" else r  # bytes on macOS, KiB on Linux

def rss_kib():
    rss = status_kib("VmRSS")
    return rss if rss is not None else peak_kib()  # no /proc: the peak so far is an upper bound

spec = json.loads(sys.argv[1])
with open(sys.argv[2], encoding="utf-8") as f:
    texts = json.load(f)
batch_size = int(sys.argv[3])
out = {"rss_start_kib": rss_kib()}
t0 = time.perf_counter()
kind, path = spec["kind"], spec["path"]
if kind == "teacher":
    from sentence_transformers import SentenceTransformer
    load = lambda: SentenceTransformer(path, device="cpu")
    encode = lambda m: m.encode(texts, batch_size=batch_size, convert_to_numpy=True)
elif kind == "model2vec":
    from model2vec import StaticModel
    load = lambda: StaticModel.from_pretrained(path)
    encode = lambda m: m.encode(texts, batch_size=batch_size)
elif kind == "student":
    import vocabert
    load = lambda: vocabert.load(path)
    encode = lambda m: m.encode(texts, batch_size=batch_size)
else:
    raise SystemExit(f"unknown model kind {kind!r}")
t1 = time.perf_counter()
out["import_seconds"] = t1 - t0
out["rss_after_imports_kib"] = rss_kib()
model = load()
t2 = time.perf_counter()
out["load_seconds"] = t2 - t1
out["rss_after_load_kib"] = rss_kib()
vectors = encode(model)
out["encode_seconds"] = time.perf_counter() - t2
out["rss_after_encode_kib"] = rss_kib()
out["peak_rss_kib"] = peak_kib()
out["peak_rss_source"] = "VmHWM" if status_kib("VmHWM") is not None else "ru_maxrss"
out["n_vectors"] = len(vectors)
print("VOCABERT_MEMORY " + json.dumps(out), flush=True)
"""


def measure_memory(spec: dict, texts: list[str], batch_size: int = 64, timeout: float = 900) -> dict:
    """Peak RSS of loading and running one model in a fresh process.

    The peak is the child's VmHWM (Linux), falling back to ``getrusage().ru_maxrss``: on Linux
    ru_maxrss survives fork+exec, so a child of a big parent would report the parent's peak.

    ``spec`` is ``{"kind": "teacher" | "model2vec" | "student", "path": str}`` (``Encoder.spec()``).
    Returns MiB figures (start, after imports, after load, after encoding, peak) and the cold
    import/load/encode seconds. A failure comes back as ``{"error": reason, ...}`` rather than raising,
    so one model's crash never stops the bench.
    """
    kind, path = spec.get("kind"), spec.get("path")
    path = str(Path(path).resolve()) if path else path  # the child runs in a temporary folder
    result = {"kind": kind, "path": str(path), "n_texts": len(texts), "batch_size": batch_size}
    if kind not in ("teacher", "model2vec", "student") or not path:
        return {**result, "error": f"unsupported model spec {spec!r}"}
    package_root = str(Path(__file__).resolve().parents[2])  # src/: so the child imports this vocabert
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "PYTHONPATH": os.pathsep.join(p for p in (package_root, os.environ.get("PYTHONPATH")) if p),
    }
    with tempfile.TemporaryDirectory(prefix="vocabert-mem-") as tmp:
        texts_file = Path(tmp) / "texts.json"
        texts_file.write_text(json.dumps(list(texts)), encoding="utf-8")
        cmd = [sys.executable, "-c", _CHILD, json.dumps({"kind": kind, "path": str(path)}), str(texts_file)]
        try:
            proc = subprocess.run(
                [*cmd, str(batch_size)], capture_output=True, text=True, env=env, timeout=timeout, cwd=tmp
            )
        except subprocess.TimeoutExpired:
            return {**result, "error": f"timed out after {timeout:.0f} s"}
    lines = [line for line in proc.stdout.splitlines() if line.startswith("VOCABERT_MEMORY ")]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        return {**result, "error": f"exit code {proc.returncode}: {tail}"}
    child = json.loads(lines[-1].removeprefix("VOCABERT_MEMORY "))
    for key in [k for k in child if k.endswith("_kib")]:
        result[key.removesuffix("_kib") + "_mib"] = child[key] / 1024
    for key in ("import_seconds", "load_seconds", "encode_seconds"):
        result[key] = child[key]
    result["peak_rss_source"] = child["peak_rss_source"]
    result["error"] = None
    return result
