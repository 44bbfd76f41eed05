"""Measure the Ray engine against the local path: teacher-pass throughput, and peak memory.

    python scripts/ray_scaling.py throughput --passages 1500 --repeats 3 --root /tmp/scaling
    python scripts/ray_scaling.py memory --workdir DIR --stage embed --engine ray --seconds 180

``throughput`` builds a corpus of the first N bundled passages (all of them through the teacher),
then runs ``vocabert embed`` alternately on the local path and on Ray with 2 workers, each time on
a fresh teacher pass and cache, and prints the medians. ``memory`` runs one stage command on a work
directory (stopping it with Ctrl-C after ``--seconds`` if given: a bounded prefix) and samples the
peak resident memory (VmHWM) of the driver and of every Ray worker process it starts.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _env() -> dict:
    return {**os.environ, "PYTHONPATH": str(REPO / "src"), "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "vocabert.cli", *args]


def _status(pid: int) -> dict[str, int]:
    out = {}
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(("VmHWM:", "VmRSS:")):
                out[line.split(":")[0]] = int(line.split()[1]) // 1024  # MiB
    except OSError:
        pass
    return out


def _descendants(root: int) -> dict[int, str]:
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
        except (OSError, IndexError, ValueError):
            continue
    found, todo = {}, [root]
    while todo:
        for child in children.get(todo.pop(), []):
            try:
                found[child] = Path(f"/proc/{child}/cmdline").read_bytes().replace(b"\0", b" ").decode()[:80]
            except OSError:
                continue
            todo.append(child)
    return found


def _kind(cmdline: str) -> str:
    name = cmdline.split()[0] if cmdline else ""
    if "TeacherWorker" in name:
        return "teacher worker"
    if name.startswith("ray::") and "Agent" not in name:
        return "other ray worker (tasks, Ray Data's own actors)"
    return "ray system (raylet, gcs, agents)"


def run_sampled(command: list[str], seconds: float | None = None, log: Path | None = None) -> dict:
    """Run ``command``, sampling peak memory every 0.5 s; Ctrl-C it after ``seconds``."""
    out = open(log, "w") if log else subprocess.DEVNULL  # noqa: SIM115
    started = time.perf_counter()
    child = subprocess.Popen(
        command,
        env=_env(),
        stdout=out,
        stderr=subprocess.STDOUT,
        cwd=REPO,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),  # a shell's background job ignores Ctrl-C
    )
    peaks: dict[str, int] = {}
    system_rss = total_rss = 0
    interrupted = False
    while child.poll() is None:
        driver = _status(child.pid)
        peaks["driver"] = max(peaks.get("driver", 0), driver.get("VmHWM", 0))
        system_now, total_now = 0, driver.get("VmRSS", 0)
        for pid, cmdline in _descendants(child.pid).items():
            status, kind = _status(pid), _kind(cmdline)
            total_now += status.get("VmRSS", 0)
            if kind.startswith("ray system"):
                system_now += status.get("VmRSS", 0)
            else:
                peaks[kind] = max(peaks.get(kind, 0), status.get("VmHWM", 0))
        system_rss = max(system_rss, system_now)
        total_rss = max(total_rss, total_now)
        if seconds is not None and not interrupted and time.perf_counter() - started > seconds:
            child.send_signal(signal.SIGINT)
            interrupted = True
        time.sleep(0.5)
    peaks["ray system (raylet, gcs, agents), summed"] = system_rss
    peaks["every process, summed (shared pages counted in each)"] = total_rss
    return {"seconds": time.perf_counter() - started, "returncode": child.returncode, "peak_mib": peaks}


def _median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def throughput(args: argparse.Namespace) -> None:
    root = Path(args.root)
    data = Path(os.environ.get("VOCABERT_DATA", REPO.parent / "shared" / "data"))
    root.mkdir(parents=True, exist_ok=True)
    passages = root / "passages.tsv"
    with gzip.open(data / "msmarco_passage" / "collection_subset.tsv.gz", "rt", encoding="utf-8") as f:
        passages.write_text("".join(line for _, line in zip(range(args.passages), f, strict=False)))
    work = root / "work"
    common = ["--workdir", str(work), "--no-progress"]
    corpus = _cli("corpus", *common, "--passages", str(passages), "--unseen-topics", "none")
    subprocess.run(corpus, env=_env(), check=True)
    subprocess.run(_cli("mine", *common, "--budget", "20000", "--min-count", "3"), env=_env(), check=True)
    results: dict[str, list[dict]] = {"local": [], "ray": []}
    pattern = re.compile(r"(\d+) texts, (\d+) tokens through the teacher.*")
    for repeat in range(args.repeats):
        for engine in ("local", "ray"):
            shutil.rmtree(work / "teacher", ignore_errors=True)
            shutil.rmtree(work / "store", ignore_errors=True)
            cache = root / f"cache-{engine}-{repeat}"
            shutil.rmtree(cache, ignore_errors=True)
            extra = ["--engine", "ray", "--ray-workers", str(args.workers)] if engine == "ray" else []
            log = root / f"embed-{engine}-{repeat}.log"
            command = _cli("embed", *common, "--teacher-share", "1", "--cache-dir", str(cache), *extra)
            sampled = run_sampled(command, log=log)
            text = log.read_text()
            line = next(m.group(0) for m in pattern.finditer(text))
            texts, tokens = (int(x) for x in pattern.search(line).groups())
            seconds = float(re.search(r"pass (\d+) s" if engine == "ray" else r"\((\d+) s,", line).group(1))
            row = {"wall": sampled["seconds"], "pass": seconds, "texts": texts, "tokens": tokens, **sampled}
            if engine == "ray":
                row["start"] = float(re.search(r"Ray started in ([\d.]+) s", line).group(1))
                row["plan"] = float(re.search(r"of which ([\d.]+) s planning", line).group(1))
            results[engine].append(row)
            print(engine, repeat, json.dumps({k: v for k, v in row.items() if k != "returncode"}), flush=True)
    (root / "throughput.json").write_text(json.dumps(results, indent=2))
    print("\n| path | texts | tokens | teacher pass s | texts/s | tokens/s | command wall s | driver peak MiB |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for engine, rows in results.items():
        p = _median([r["pass"] for r in rows])
        texts, tokens = rows[0]["texts"], rows[0]["tokens"]
        wall = _median([r["wall"] for r in rows])
        rss = _median([r["peak_mib"]["driver"] for r in rows])
        rates = f"{texts / p:.1f} | {tokens / p:.0f}"
        print(f"| {engine} | {texts} | {tokens} | {p:.0f} | {rates} | {wall:.0f} | {rss:.0f} |")
    for engine, rows in results.items():
        print(engine, "all runs:", [round(r["pass"]) for r in rows], "walls:", [round(r["wall"]) for r in rows])


def memory(args: argparse.Namespace) -> None:
    command = _cli(args.stage, "--workdir", args.workdir, "--no-progress", "--engine", args.engine, *args.extra)
    result = run_sampled(command, args.seconds, Path(args.log) if args.log else None)
    print(json.dumps(result, indent=2))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("throughput")
    p.add_argument("--passages", type=int, default=1500)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--root", default="/tmp/vocabert-scaling")
    p.set_defaults(func=throughput)
    p = sub.add_parser("memory")
    p.add_argument("--workdir", required=True)
    p.add_argument("--stage", choices=["mine", "embed"], required=True)
    p.add_argument("--engine", choices=["local", "ray"], default="ray")
    p.add_argument("--seconds", type=float, default=None, help="Ctrl-C the command after this long")
    p.add_argument("--log", default=None)
    p.add_argument("extra", nargs="*", help="more options for the stage command (after --)")
    p.set_defaults(func=memory)
    args = parser.parse_args()
    args.func(args)


if __name__ == "__main__":
    main()
