"""Cost curves: wall time, peak memory and disk of every pipeline stage as the training text grows.

    python scripts/cost_curves.py run --out runs/cost_curves                      # 1x, 4x, 16x (+ 64x for corpus, mine)
    python scripts/cost_curves.py run --max-factor 1 --stages corpus,mine --teacher stand-in
    python scripts/cost_curves.py run --dry-run                                   # print the commands only
    python scripts/cost_curves.py report --out runs/cost_curves [--docs cost_curves]

``run``: for every factor (``--factors``, default 1,4,16, every stage; ``--corpus-mine-factors``, default 64,
for the stages that do not need the teacher; ``--max-factor`` caps both), it builds the corpus with
``scripts/scale_corpus.py`` (cached in ``OUT/data/xN``), then runs the stages one at a time, each as its own
``vocabert`` command over one work directory (``OUT/work/xN-TEACHER``): ``vocabert corpus --data-dir OUT/data/xN``,
``vocabert mine``, ``vocabert embed`` (with a fresh ``--cache-dir`` of its own), ``vocabert train``, each with
``--force`` (a measured stage always runs in full) and ``--teacher``:

- ``--teacher real``: the real teacher (the project's default, all-MiniLM-L6-v2) at every factor;
- ``--teacher stand-in``: a stand-in teacher (``scripts/stand_in_teacher.py``: the real tokenizer and output
  shape, one random layer; ``--stand-in-layers 0``: the embeddings only, so that the stage's time is the data
  path's, not a network's) at every factor, for sizes where the real teacher's CPU time is out of reach;
- ``--teacher auto`` (the default): the real teacher up to ``--real-teacher-max-factor`` (default 1), the
  stand-in above it. Every row and plot line names the teacher it ran with; the stand-in is labelled as such.

For every stage and size it records: the wall time; the peak resident memory of the stage's process (its own
peak, from ``os.wait4``'s rusage: the largest of it and of any child it waited for) and, sampled every 0.2 s
from /proc, the peak of the summed RSS of the process and all its descendants (the larger of the two is
"peak RSS"); the disk of the work directory and of each of its subfolders after the stage (apparent size and
allocated blocks, like ``du --apparent-size`` and ``du``, hard links once), and of the embedding cache; the
corpus's texts and tokens (from its manifest; the split counts, which the manifest does not hold, from the
shards' split arrays). Every run is added to ``OUT/runs.json`` (under a lock: two ``run`` commands over one
``--out``, say 16x beside 1x and 4x, keep each other's records); a rerun skips the stages already measured
for that size and teacher (``--force`` measures them again). ``--stage-args mine="--max-keys 1000000"`` adds
options to a stage (they become part of what identifies a measurement).

``report``: from ``OUT/runs.json``, a table in the format ``scripts/make_docs.py`` reads (``rows``, ``labels``,
``formats``, ``provenance``, ``command``), a second one of each stage's growth (least-squares slopes of log
wall time and log peak RSS against log training tokens: about 1 is linear), one log-log plot (wall time and
peak RSS against training tokens, a line per stage and teacher), and extrapolations to the sizes not
measured (labelled as such). ``--docs NAME`` writes them to ``docs/results/NAME.json``,
``docs/results/NAME_growth.json`` and ``docs/NAME.png`` (a docs page must then show both tables: test_docs
requires every results file to be used); by default they go to ``OUT/``.

"Training tokens" (the x axis) are the tokens of the corpus's training split (what mining counts; the teacher
pass also reads the training passages' sentences, ``teacher_tokens``); both grow with the factor alike.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import shlex
import subprocess
import sys
import threading
import time
from collections.abc import Iterable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SCRIPTS = REPO / "scripts"
sys.path.insert(0, str(SCRIPTS))

from scale_corpus import is_complete  # noqa: E402

HELDOUT = 0.1  # the corpus stage's default --heldout, which the generated corpora are made for
STAGES = ["corpus", "mine", "embed", "train"]
TEACHER_STAGES = {
    "embed",
    "train",
}  # the stages that run the teacher's outputs; corpus and mine only read its tokenizer
STAND_IN, REAL = "stand-in", "real"
REAL_LABEL = "real teacher (all-MiniLM-L6-v2)"
SAMPLE_SECONDS = 0.2
MIB = 1024 * 1024


# ----------------------------------------------------------------------------------------- measuring


def _children(pid: int) -> list[int]:
    out: list[int] = []
    try:
        for task in Path(f"/proc/{pid}/task").iterdir():
            try:
                out.extend(int(c) for c in (task / "children").read_text().split())
            except OSError:
                continue
    except OSError:
        pass
    return out


def process_tree(pid: int) -> list[int]:
    """``pid`` and all its descendants alive now."""
    found, todo = [], [pid]
    while todo:
        p = todo.pop()
        found.append(p)
        todo.extend(_children(p))
    return found


def rss_kib(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return 0


class TreeSampler(threading.Thread):
    """Samples the summed RSS of a process and its descendants until stopped; keeps the peak."""

    def __init__(self, pid: int, interval: float = SAMPLE_SECONDS):
        super().__init__(daemon=True)
        self.pid, self.interval = pid, interval
        self.peak_kib, self.max_processes, self.samples = 0, 0, 0
        self._halt = threading.Event()

    def run(self) -> None:
        while not self._halt.is_set():
            tree = process_tree(self.pid)
            total = sum(rss_kib(p) for p in tree)
            self.peak_kib = max(self.peak_kib, total)
            self.max_processes = max(self.max_processes, len(tree))
            self.samples += 1
            self._halt.wait(self.interval)

    def stop(self) -> None:
        self._halt.set()
        self.join()


def run_measured(command: list[str], env: dict, log_path: Path) -> dict:
    """Run ``command`` (stdout and stderr to ``log_path``) and measure its wall time and peak memory."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "wb") as log:
        started = time.perf_counter()
        proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=REPO)
        sampler = TreeSampler(proc.pid)
        sampler.start()
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - started
        sampler.stop()
        proc.returncode = os.waitstatus_to_exitcode(status)  # (reaped by wait4: Popen must not wait again)
    own = usage.ru_maxrss / 1024  # KiB on Linux
    sampled = sampler.peak_kib / 1024
    return {
        "returncode": proc.returncode,
        "wall_s": round(wall, 2),
        "peak_rss_mib": round(max(own, sampled), 1),
        "rss": {
            "wait4_maxrss_mib": round(own, 1),
            "sampled_tree_peak_mib": round(sampled, 1),
            "sampled_max_processes": sampler.max_processes,
            "samples": sampler.samples,
        },
        "cpu_s": round(usage.ru_utime + usage.ru_stime, 2),
    }


def disk_usage(path: Path, seen: set | None = None) -> dict:
    """Apparent bytes and allocated bytes under ``path`` (each inode once), like ``du -b`` and ``du -B1``."""
    seen = set() if seen is None else seen
    apparent = allocated = files = 0
    for root, dirs, names in os.walk(path):
        for name in names + dirs:
            try:
                st = os.lstat(os.path.join(root, name))
            except OSError:
                continue
            if (st.st_dev, st.st_ino) in seen:
                continue
            seen.add((st.st_dev, st.st_ino))
            apparent += st.st_size if name in names else 0
            allocated += st.st_blocks * 512
            files += name in names
    return {"apparent_bytes": apparent, "allocated_bytes": allocated, "files": files}


def workdir_disk(workdir: Path) -> dict:
    """The disk of a work directory and of each of its subfolders."""
    if not workdir.is_dir():
        return {}
    out = {"total": disk_usage(workdir), "folders": {}}
    for child in sorted(workdir.iterdir()):
        if child.is_dir():
            out["folders"][child.name] = disk_usage(child)
    return out


def corpus_counts(workdir: Path) -> dict:
    """Texts and tokens of a finished corpus: per source from its manifest, per split from the shards' split
    arrays (only ``offsets`` and ``split`` are read from each shard)."""
    import numpy as np

    corpus = workdir / "corpus"
    manifest_path = corpus / "manifest.json"
    if not manifest_path.is_file():
        return {}
    manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    counts = manifest.get("counts", {})
    # (the split codes of vocabert.distill.corpus: TRAIN 0, HELDOUT 1, UNSEEN 2, CROP 3)
    texts = [0, 0, 0, 0]
    tokens = [0, 0, 0, 0]
    for name in manifest.get("shards", []):
        with np.load(corpus / name, allow_pickle=False) as z:
            lengths, split = np.diff(z["offsets"]), z["split"]
        for code in range(4):
            mine = split == code
            texts[code] += int(mine.sum())
            tokens[code] += int(lengths[mine].sum())
    return {
        "texts": sum(c["texts"] for c in counts.values()),
        "tokens": sum(c["tokens"] for c in counts.values()),
        "training_texts": texts[0],
        "training_tokens": tokens[0],
        "teacher_texts": texts[0] + texts[3],
        "teacher_tokens": tokens[0] + tokens[3],
        "heldout_texts": texts[1],
        "unseen_texts": texts[2],
        "shards": len(manifest.get("shards", [])),
        "duplicates_skipped": sum(c.get("duplicates", 0) for c in counts.values()),
        "by_source": counts,
    }


def manifest_figures(directory: Path) -> dict:
    """The numbers a stage's manifest holds at its top level (and one level down), for the record."""
    path = directory / "manifest.json"
    if not path.is_file():
        return {}
    manifest = json.loads(path.read_text(encoding="utf-8"))
    out: dict = {}
    for key, value in manifest.items():
        if key == "key":
            continue
        if isinstance(value, int | float) and not isinstance(value, bool):
            out[key] = value
        elif isinstance(value, dict):
            numbers = {k: v for k, v in value.items() if isinstance(v, int | float) and not isinstance(v, bool)}
            if numbers:
                out[key] = numbers
    return out


# ------------------------------------------------------------------------------------------- planning


def parse_factors(text: str) -> list[int]:
    return sorted({int(x) for x in text.split(",") if x.strip()})


def stand_in_kind(layers: int) -> str:
    """The kind a stand-in of ``layers`` layers is recorded under: "stand-in" for the first one (1 layer),
    "stand-in-L<n>" for the others, so that their measurements and work directories never mix."""
    return STAND_IN if layers == 1 else f"{STAND_IN}-L{layers}"


def stand_in_layers(kind: str) -> int | None:
    if kind == STAND_IN:
        return 1
    if kind.startswith(STAND_IN + "-L"):
        return int(kind.removeprefix(STAND_IN + "-L"))
    return None


def is_stand_in_kind(kind: str) -> bool:
    return stand_in_layers(kind) is not None


def teacher_for(factor: int, choice: str, real_max: int, layers: int = 1) -> str:
    if choice == "auto":
        choice = REAL if factor <= real_max else STAND_IN
    return stand_in_kind(layers) if choice == STAND_IN else choice


def teacher_label(kind: str) -> str:
    layers = stand_in_layers(kind)
    if layers is None:
        return REAL_LABEL
    if layers == 0:
        return "stand-in teacher (embeddings only, no layer, seed 0)"
    return f"stand-in teacher ({layers} random layer{'s' if layers != 1 else ''}, seed 0)"


STAND_IN_LABEL = teacher_label(STAND_IN)


def env() -> dict:
    path = os.environ.get("PYTHONPATH")
    src = str(REPO / "src")
    return {**os.environ, "PYTHONPATH": src + (os.pathsep + path if path else ""), "HF_HUB_OFFLINE": "1"}


def stand_in_path(out: Path, layers: int = 1) -> Path:
    return out / f"stand-in-teacher-L{layers}-seed0"


def real_teacher_path() -> Path:
    sys.path.insert(0, str(REPO / "src"))
    from vocabert.distill.teacher import default_teacher_path

    return default_teacher_path()


def stage_command(stage: str, workdir: Path, teacher: Path, data: Path, cache: Path, extra: list[str]) -> list[str]:
    command = [
        sys.executable,
        "-m",
        "vocabert.cli",
        stage,
        "--workdir",
        str(workdir),
        "--teacher",
        str(teacher),
        "--no-progress",
        "--force",
    ]
    if stage == "corpus":
        command += ["--data-dir", str(data)]
    if stage == "embed":
        command += ["--cache-dir", str(cache)]
    return command + extra


def plan(args: argparse.Namespace) -> list[tuple[int, str, list[str]]]:
    """``(factor, teacher kind, stages)`` in the order they run: small sizes first."""
    every = parse_factors(args.factors)
    light = parse_factors(args.corpus_mine_factors)
    stages = [s for s in STAGES if s in args.stages.split(",")]
    unknown = set(args.stages.split(",")) - set(STAGES)
    if unknown:
        raise SystemExit(f"cost_curves: unknown stages {sorted(unknown)}: use {','.join(STAGES)}")
    out = []
    for factor in sorted(set(every) | set(light)):
        if args.max_factor and factor > args.max_factor:
            continue
        wanted = [s for s in stages if factor in every or s not in TEACHER_STAGES]
        if wanted:
            kind = teacher_for(factor, args.teacher, args.real_teacher_max_factor, args.stand_in_layers)
            out.append((factor, kind, wanted))
    return out


# ------------------------------------------------------------------------------------------- records


def load_runs(path: Path) -> dict:
    if path.is_file():
        return json.loads(path.read_text(encoding="utf-8"))
    return {"about": "scripts/cost_curves.py measurements, one per stage run", "runs": [], "generated": {}}


def save_runs(path: Path, runs: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".json.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(runs, indent=1) + "\n", encoding="utf-8")
    tmp.replace(path)


def _run_key(record: dict) -> tuple:
    """What identifies a measurement: size, teacher, stage and the stage's extra options."""
    return record["factor"], record["teacher"], record["stage"], record.get("stage_args", [])


def save_measurement(path: Path, record: dict | None = None, generated: tuple[str, dict] | None = None) -> dict:
    """Add one measurement to runs.json as it is on disk now (under a lock), replacing the one it measures
    again, and return the file's content: two ``run`` commands over one --out (say 16x beside 1x) keep
    each other's records."""
    import fcntl

    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_suffix(".json.lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        runs = load_runs(path)
        if record is not None:
            runs["runs"] = [r for r in runs["runs"] if _run_key(r) != _run_key(record)] + [record]
        if generated is not None:
            runs["generated"][generated[0]] = generated[1]
        save_runs(path, runs)
    return runs


def find_run(runs: dict, factor: int, teacher: str, stage: str, extra: list[str]) -> dict | None:
    for record in runs["runs"]:
        if _run_key(record) == (factor, teacher, stage, extra) and record["returncode"] == 0:
            return record
    return None


def machine() -> dict:
    return {
        "cpus": os.cpu_count(),
        "cpu": platform.processor() or platform.machine(),
        "python": platform.python_version(),
    }


def now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def run(args: argparse.Namespace) -> int:
    out = args.out.resolve()
    runs_path = out / "runs.json"
    extras = {}
    for item in args.stage_args:
        stage, _, options = item.partition("=")
        extras[stage] = shlex.split(options)
    environment = env()
    steps = plan(args)
    if not steps:
        print("cost_curves: nothing to run (see --factors, --max-factor, --stages)")
        return 0
    print(f"# every command runs in {REPO} with PYTHONPATH={REPO / 'src'} HF_HUB_OFFLINE=1", flush=True)
    needs_stand_in = any(is_stand_in_kind(kind) for _, kind, _ in steps)
    stand_in = stand_in_path(out, args.stand_in_layers)
    if needs_stand_in and not (stand_in / "stand_in_teacher.json").is_file():
        command = [
            sys.executable,
            str(SCRIPTS / "stand_in_teacher.py"),
            str(stand_in),
            "--layers",
            str(args.stand_in_layers),
            "--speed-texts",
            str(args.speed_texts),
            "--speed-json",
            str(out / "teacher_speed.json"),
        ]
        print("$ " + shlex.join(command), flush=True)
        if not args.dry_run:
            subprocess.run(command, env=environment, check=True, cwd=REPO)
    real = None if args.dry_run and args.teacher == STAND_IN else real_teacher_path()
    failures = 0
    for factor, kind, stages in steps:
        data = out / "data" / f"x{factor}"
        generate = [
            sys.executable,
            str(SCRIPTS / "scale_corpus.py"),
            "--factor",
            str(factor),
            "--out",
            str(data),
            "--seed",
            str(args.seed),
        ]
        cached = is_complete(data, factor, args.seed, None, HELDOUT)
        print(("# cached: " if cached else "$ ") + shlex.join(generate), flush=True)
        if not args.dry_run and not cached:
            log = out / "logs" / f"x{factor}-generate.log"
            measured = run_measured(generate, environment, log)
            if measured["returncode"] != 0:
                print(f"cost_curves: generating x{factor} failed: see {log}")
                return 1
            info = json.loads((data / "scale_corpus.json").read_text(encoding="utf-8"))
            generated = {
                **measured,
                "disk": disk_usage(data),
                "counts": info["counts"],
                "seed": args.seed,
                "measured": now(),
            }
            save_measurement(runs_path, generated=(f"x{factor}", generated))
        workdir = out / "work" / f"x{factor}-{kind}"
        cache = out / "cache" / f"x{factor}-{kind}"
        teacher = stand_in if is_stand_in_kind(kind) else real
        for stage in stages:
            extra = extras.get(stage, [])
            done = find_run(load_runs(runs_path), factor, kind, stage, extra)
            if done and not args.force:
                print(
                    f"cost_curves: x{factor} {stage} ({teacher_label(kind)}) already measured: "
                    f"{done['wall_s']} s, {done['peak_rss_mib']:.0f} MiB (--force to measure again)"
                )
                continue
            command = stage_command(stage, workdir, teacher, data, cache, extra)
            print("$ " + shlex.join(command), flush=True)
            if args.dry_run:
                continue
            if stage == "embed" and cache.exists():
                import shutil

                shutil.rmtree(cache)  # a fresh cache: no target comes from an earlier run
            load_before = os.getloadavg()
            measured = run_measured(command, environment, out / "logs" / f"x{factor}-{kind}-{stage}.log")
            record = {
                "factor": factor,
                "teacher": kind,
                "teacher_label": teacher_label(kind),
                "stage": stage,
                "stage_args": extra,
                "command": shlex.join(command),
                **measured,
                "load_average_before": [round(x, 2) for x in load_before],
                "load_average_after": [round(x, 2) for x in os.getloadavg()],
                "disk": workdir_disk(workdir),
                "measured": now(),
                "machine": machine(),
                "log": str(out / "logs" / f"x{factor}-{kind}-{stage}.log"),
            }
            if stage == "embed" and cache.exists():
                record["disk"]["cache"] = disk_usage(cache)
            record["corpus"] = corpus_counts(workdir)
            artefact = {"corpus": "corpus", "mine": "vocab", "embed": "teacher", "train": "model"}[stage]
            record["manifest"] = manifest_figures(workdir / artefact)
            if measured["returncode"] != 0:
                tail = Path(record["log"]).read_text(encoding="utf-8", errors="replace").splitlines()[-15:]
                record["log_tail"] = tail
            save_measurement(runs_path, record)
            rss = measured["peak_rss_mib"]
            disk = record["disk"].get("total", {}).get("allocated_bytes", 0) / MIB
            print(
                f"cost_curves: x{factor} {stage} ({teacher_label(kind)}): rc {measured['returncode']}, "
                f"{measured['wall_s']} s, peak RSS {rss:.0f} MiB, work directory {disk:,.0f} MiB",
                flush=True,
            )
            if measured["returncode"] != 0:
                failures += 1
                print(f"cost_curves: {stage} failed; the later stages of x{factor} are skipped. Log: {record['log']}")
                for line in record["log_tail"]:
                    print("    " + line)
                break
    if not args.dry_run:
        print(f"cost_curves: measurements in {runs_path}; `python scripts/cost_curves.py report --out {args.out}`")
    return 1 if failures else 0


# -------------------------------------------------------------------------------------------- fitting


def fit_slope(xs: Iterable[float], ys: Iterable[float]) -> dict | None:
    """Least-squares line through (log x, log y): ``slope`` (the growth exponent), ``intercept`` (natural
    logs), ``r2``; None with fewer than 2 distinct x or a non-positive value."""
    pairs = [(float(x), float(y)) for x, y in zip(xs, ys, strict=True)]
    if len({x for x, _ in pairs}) < 2 or any(x <= 0 or y <= 0 for x, y in pairs):
        return None
    lx = [math.log(x) for x, _ in pairs]
    ly = [math.log(y) for _, y in pairs]
    mx, my = sum(lx) / len(lx), sum(ly) / len(ly)
    sxx = sum((a - mx) ** 2 for a in lx)
    sxy = sum((a - mx) * (b - my) for a, b in zip(lx, ly, strict=True))
    slope = sxy / sxx
    intercept = my - slope * mx
    ss_tot = sum((b - my) ** 2 for b in ly)
    ss_res = sum((b - (intercept + slope * a)) ** 2 for a, b in zip(lx, ly, strict=True))
    r2 = 1.0 - ss_res / ss_tot if ss_tot > 0 else 1.0
    return {"slope": slope, "intercept": intercept, "r2": r2, "points": len(pairs)}


def growth_word(slope: float | None, tolerance: float = 0.1) -> str:
    """How a quantity grows from its exponent: linear within ``tolerance`` of 1."""
    if slope is None:
        return "one size only"
    if abs(slope - 1) <= tolerance:
        return "linear"
    if slope < 1 - tolerance:
        return "flat" if slope < 0.2 else "sublinear"
    return "superlinear"


def extrapolate(fit: dict | None, x0: float, y0: float, x: float) -> float:
    """``y`` at ``x`` along the fit, or linearly from the one measured point ``(x0, y0)``."""
    if fit is None:
        return y0 * x / x0
    return math.exp(fit["intercept"] + fit["slope"] * math.log(x))


# ------------------------------------------------------------------------------------------- reporting


LABELS = {
    "stage": "stage",
    "size": "size",
    "teacher": "teacher",
    "options": "stage options",
    "tokens": "training tokens",
    "texts": "texts",
    "wall_s": "wall s",
    "cpu_s": "CPU s",
    "rss_mib": "peak RSS MiB",
    "stage_mib": "stage's folder MiB",
    "workdir_mib": "work directory MiB",
    "real_pass_s": "real teacher's pass s, projected",
}
FORMATS = {
    "tokens": "count",
    "texts": ",d",
    "wall_s": ",.1f",
    "cpu_s": ",.1f",
    "rss_mib": ",.0f",
    "stage_mib": ",.1f",
    "workdir_mib": ",.1f",
    "real_pass_s": ",.0f",
}
GROWTH_LABELS = {
    "stage": "stage",
    "teacher": "teacher",
    "options": "stage options",
    "sizes": "sizes",
    "time_slope": "wall time exponent",
    "time_growth": "wall time grows",
    "cpu_slope": "CPU time exponent",
    "cpu_growth": "CPU time grows",
    "rss_slope": "peak RSS exponent",
    "rss_growth": "peak RSS grows",
}
GROWTH_FORMATS = {"time_slope": ".2f", "cpu_slope": ".2f", "rss_slope": ".2f"}
STAGE_FOLDER = {"corpus": "corpus", "mine": "vocab", "embed": "teacher", "train": "model"}


def report_rows(runs: dict, speed: dict | None) -> list[dict]:
    """One row per successful measurement, in stage order then size."""
    rows = []
    for r in runs["runs"]:
        if r.get("returncode") != 0 or not r.get("corpus"):
            continue
        folders = r.get("disk", {}).get("folders", {})
        stage_bytes = folders.get(STAGE_FOLDER[r["stage"]], {}).get("allocated_bytes")
        if r["stage"] == "embed" and "store" in folders:
            stage_bytes = (stage_bytes or 0) + folders["store"]["allocated_bytes"]
        row = {
            "stage": r["stage"],
            "size": f"{r['factor']}x",
            "factor": r["factor"],
            "teacher": r["teacher_label"] if r["stage"] in TEACHER_STAGES else "— (tokenizer only)",
            "teacher_kind": r["teacher"],
            "options": " ".join(r.get("stage_args", [])) or "defaults",
            "measured": r["measured"],
            "tokens": r["corpus"]["training_tokens"],
            "teacher_tokens": r["corpus"]["teacher_tokens"],
            "texts": r["corpus"]["texts"],
            "wall_s": r["wall_s"],
            "cpu_s": r.get("cpu_s"),
            "rss_mib": r["peak_rss_mib"],
            "stage_mib": None if stage_bytes is None else stage_bytes / MIB,
            "workdir_mib": r.get("disk", {}).get("total", {}).get("allocated_bytes", 0) / MIB,
        }
        if r["stage"] == "embed" and is_stand_in_kind(r["teacher"]) and speed:
            row["real_pass_s"] = r["corpus"]["teacher_tokens"] / speed["real_tokens_per_s"]
        rows.append(row)
    # The latest measurement of each stage, teacher, options and size (corpus and mine read only the tokenizer:
    # their teacher does not matter), so that a stage measured again after a change replaces its old figures.
    latest: dict[tuple, dict] = {}
    for row in sorted(rows, key=lambda row: row["measured"]):
        latest[(row["stage"], row["teacher"], row["options"], row["factor"])] = row
    rows = list(latest.values())
    rows.sort(key=lambda row: (STAGES.index(row["stage"]), row["teacher"], row["options"], row["factor"]))
    return rows


def growth_rows(rows: list[dict]) -> list[dict]:
    """Each stage's (and teacher's) exponents of wall time and peak RSS against training tokens."""
    groups: dict[tuple[str, str], list[dict]] = {}
    for row in rows:
        groups.setdefault((row["stage"], row["teacher"], row["options"]), []).append(row)
    out = []
    for (stage, teacher, options), members in groups.items():
        time_fit = fit_slope([m["tokens"] for m in members], [m["wall_s"] for m in members])
        # CPU time: what the stage itself spent, whatever else the machine ran meanwhile
        cpu_fit = None
        if all(m.get("cpu_s") for m in members):
            cpu_fit = fit_slope([m["tokens"] for m in members], [m["cpu_s"] for m in members])
        rss_fit = fit_slope([m["tokens"] for m in members], [m["rss_mib"] for m in members])
        out.append(
            {
                "stage": stage,
                "teacher": teacher,
                "options": options,
                "sizes": ", ".join(m["size"] for m in members),
                "time_slope": time_fit and time_fit["slope"],
                "time_r2": time_fit and time_fit["r2"],
                "time_growth": growth_word(time_fit and time_fit["slope"]),
                "cpu_slope": cpu_fit and cpu_fit["slope"],
                "cpu_growth": growth_word(cpu_fit and cpu_fit["slope"]),
                "rss_slope": rss_fit and rss_fit["slope"],
                "rss_r2": rss_fit and rss_fit["r2"],
                "rss_growth": growth_word(rss_fit and rss_fit["slope"]),
                "_fits": (time_fit, rss_fit),
                "_members": members,
            }
        )
    return out


def projections(growth: list[dict], factors: list[int], speed: dict | None) -> list[dict]:
    """Wall time and peak RSS of each stage at ``factors`` it was not measured at, along its fit (or linearly
    from its one size): extrapolations, not measurements."""
    out = []
    for g in growth:
        members = g["_members"]
        base = max(members, key=lambda r: r["factor"])
        per_factor = base["tokens"] / base["factor"]
        for factor in factors:
            if any(m["factor"] == factor for m in members):
                continue
            tokens = per_factor * factor
            time_fit, rss_fit = g["_fits"]
            row = {
                "stage": g["stage"],
                "teacher": g["teacher"],
                "size": f"{factor}x",
                "tokens": round(tokens),
                "wall_s": extrapolate(time_fit, base["tokens"], base["wall_s"], tokens),
                # (memory from one size is not extrapolated: what grows with the corpus is unknown)
                "rss_mib": extrapolate(rss_fit, base["tokens"], base["rss_mib"], tokens) if rss_fit else None,
                "how": "fitted exponent" if time_fit else "linear from the one size measured",
            }
            if g["stage"] == "embed" and speed:
                row["real_pass_s"] = base["teacher_tokens"] / base["factor"] * factor / speed["real_tokens_per_s"]
            out.append(row)
    return out


def plot_curves(rows: list[dict], path: Path, title: str) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(10, 4.2), dpi=110, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, 2)
    groups: dict[tuple[str, str, str], list[dict]] = {}
    for row in rows:
        kind = row["teacher_kind"] if row["stage"] in TEACHER_STAGES else "tokenizer"
        groups.setdefault((row["stage"], kind, row["options"]), []).append(row)
    for (stage, kind, options), members in groups.items():
        members.sort(key=lambda r: r["tokens"])
        style = "--" if is_stand_in_kind(kind) and stage in TEACHER_STAGES else "-"
        label = stage + (f", {teacher_label(kind)}" if stage in TEACHER_STAGES else "")
        label += f" ({options})" if options != "defaults" else ""
        xs = [m["tokens"] for m in members]
        for ax, key in zip(axes, ("wall_s", "rss_mib"), strict=True):
            ax.plot(xs, [m[key] for m in members], style, marker="o", label=label)
    for ax, name in zip(axes, ("wall time, s", "peak RSS, MiB"), strict=True):
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("training tokens")
        ax.set_ylabel(name)
        ax.grid(alpha=0.3, which="both")
    axes[0].legend(fontsize=7)
    fig.suptitle(title, fontsize=10)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png", dpi=110)


def write_json(path: Path, doc: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(doc, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    tmp.replace(path)


def _rounded(row: dict) -> dict:
    return {k: (round(v, 4) if isinstance(v, float) else v) for k, v in row.items() if not k.startswith("_")}


def build_report(runs: dict, speed: dict | None, command: str, project: list[int]) -> tuple[dict, dict]:
    """The two docs tables (stages x sizes; growth), as make_docs.py reads them."""
    rows = report_rows(runs, speed)
    if not rows:
        raise ValueError("no successful measurement to report")
    growth = growth_rows(rows)
    dates = sorted(r["measured"] for r in runs["runs"] if r.get("returncode") == 0)
    stand_in_labels = sorted(
        {r["teacher"] for r in rows if is_stand_in_kind(r["teacher_kind"]) and r["stage"] in TEACHER_STAGES}
    )
    uses_stand_in = bool(stand_in_labels)
    provenance = (
        f"scripts/cost_curves.py runs of {dates[0][:10]} to {dates[-1][:10]} on a {os.cpu_count()}-CPU machine "
        "(runs.json, one `vocabert` command per stage and size); corpora from scripts/scale_corpus.py"
        + (
            f"; rows marked {' or '.join(repr(x) for x in stand_in_labels)} ran with a stand-in teacher "
            "(scripts/stand_in_teacher.py), not the "
            "real one: their embed/train times are the data path's, not the real teacher's"
            if uses_stand_in
            else ""
        )
        + (
            f"; the real teacher's pass time is projected from {speed['real_tokens_per_s']:,.0f} tokens/s "
            f"({speed.get('real_rate_source', 'measured by scripts/stand_in_teacher.py')})"
            if speed and uses_stand_in
            else ""
        )
    )
    columns = [
        "stage",
        "size",
        "teacher",
        "options",
        "tokens",
        "texts",
        "wall_s",
        "cpu_s",
        "rss_mib",
        "stage_mib",
        "workdir_mib",
    ]
    if any("real_pass_s" in r for r in rows):
        columns.append("real_pass_s")
    table = {
        "title": "Cost curves: each stage's wall time, peak RSS and disk against the training text",
        "command": command,
        "provenance": provenance,
        "columns": columns,
        "rows": [_rounded(r) for r in rows],
        "labels": LABELS,
        "formats": FORMATS,
        "teacher_speed": speed,
    }
    growth_doc = {
        "title": "Cost curves: growth exponents (least squares on log-log, against training tokens)",
        "command": command,
        "provenance": provenance,
        "columns": [
            "stage",
            "teacher",
            "options",
            "sizes",
            "time_slope",
            "time_growth",
            "cpu_slope",
            "cpu_growth",
            "rss_slope",
            "rss_growth",
        ],
        "rows": [_rounded(g) for g in growth],
        "labels": GROWTH_LABELS,
        "formats": GROWTH_FORMATS,
        "projections": {
            "note": "extrapolated along each stage's fitted exponent (or linearly from its one size): not measured",
            "rows": [_rounded(p) for p in projections(growth, project, speed)],
        },
    }
    return table, growth_doc


def report(args: argparse.Namespace) -> int:
    out = args.out.resolve()
    runs = load_runs(out / "runs.json")
    speed_path = out / "teacher_speed.json"
    speed = json.loads(speed_path.read_text(encoding="utf-8")) if speed_path.is_file() else None
    if args.real_tokens_per_s:
        source = args.real_rate_source or "given on the command line"
        speed = {**(speed or {}), "real_tokens_per_s": args.real_tokens_per_s, "real_rate_source": source}
    command = (
        args.command or "python scripts/cost_curves.py run && python scripts/cost_curves.py report --docs cost_curves"
    )
    table, growth = build_report(runs, speed, command, parse_factors(args.project))
    if args.docs:
        table_path = REPO / "docs" / "results" / f"{args.docs}.json"
        growth_path = REPO / "docs" / "results" / f"{args.docs}_growth.json"
        plot_path = REPO / "docs" / f"{args.docs}.png"
    else:
        table_path, growth_path, plot_path = (
            out / "cost_curves.json",
            out / "cost_curves_growth.json",
            out / "cost_curves.png",
        )
    write_json(table_path, table)
    write_json(growth_path, growth)
    plot_curves(table["rows"], plot_path, "Cost of each stage against the training tokens (log-log)")
    print_report(table, growth)
    print(f"cost_curves: wrote {table_path}, {growth_path}, {plot_path}")
    return 0


def print_report(table: dict, growth: dict) -> None:
    print(
        f"{'stage':7} {'size':>5} {'teacher':42} {'tokens':>12} {'wall s':>9} {'RSS MiB':>8} {'stage MiB':>10} "
        f"{'workdir MiB':>11}"
    )
    for r in table["rows"]:
        stage_mib = "—" if r["stage_mib"] is None else f"{r['stage_mib']:,.1f}"
        print(
            f"{r['stage']:7} {r['size']:>5} {r['teacher'][:42]:42} {r['tokens']:>12,} {r['wall_s']:>9,.1f} "
            f"{r['rss_mib']:>8,.0f} {stage_mib:>10} {r['workdir_mib']:>11,.1f}"
        )
    for g in growth["rows"]:
        t = "—" if g["time_slope"] is None else f"{g['time_slope']:.2f}"
        m = "—" if g["rss_slope"] is None else f"{g['rss_slope']:.2f}"
        print(
            f"growth: {g['stage']} ({g['teacher']}), sizes {g['sizes']}: wall time exponent {t} ({g['time_growth']}), "
            f"peak RSS exponent {m} ({g['rss_growth']})"
        )
    for p in growth["projections"]["rows"]:
        extra = f", real teacher's pass ~{p['real_pass_s'] / 3600:,.1f} h" if "real_pass_s" in p else ""
        rss = "peak RSS not extrapolated" if p["rss_mib"] is None else f"~{p['rss_mib']:,.0f} MiB peak RSS"
        print(
            f"extrapolated (not measured): {p['stage']} at {p['size']} ({p['tokens']:,} training tokens): "
            f"~{p['wall_s'] / 60:,.1f} min, {rss} [{p['how']}]{extra}"
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="action", required=True)
    p = sub.add_parser("run", help="build the corpora and measure the stages")
    p.add_argument("--out", type=Path, default=REPO / "runs" / "cost_curves")
    p.add_argument("--factors", default="1,4,16", help="sizes for every stage (default: %(default)s)")
    p.add_argument(
        "--corpus-mine-factors",
        default="64",
        help="further sizes for corpus and mine only (default: %(default)s; '' for none)",
    )
    p.add_argument("--max-factor", type=int, default=None, help="skip every size above this")
    p.add_argument("--stages", default=",".join(STAGES), help="stages to measure (default: %(default)s)")
    p.add_argument(
        "--teacher",
        choices=["auto", REAL, STAND_IN],
        default="auto",
        help="real: the real teacher everywhere; stand-in: the stand-in everywhere; auto: the real one up "
        "to --real-teacher-max-factor, the stand-in above (default: %(default)s)",
    )
    p.add_argument("--real-teacher-max-factor", type=int, default=1)
    p.add_argument(
        "--stand-in-layers",
        type=int,
        default=1,
        help="random layers of the stand-in teacher; 0: embeddings only, the data path at its cheapest "
        "(default: %(default)s)",
    )
    p.add_argument(
        "--stage-args",
        action="append",
        default=[],
        metavar="STAGE=OPTIONS",
        help="more options for one stage, e.g. mine='--max-keys 1000000'",
    )
    p.add_argument("--seed", type=int, default=0, help="the corpus generator's seed")
    p.add_argument("--speed-texts", type=int, default=3000, help="texts to time the two teachers on")
    p.add_argument("--force", action="store_true", help="measure again the stages already measured")
    p.add_argument("--dry-run", action="store_true", help="print the commands, run nothing")
    p.set_defaults(func=run)
    p = sub.add_parser("report", help="tables, growth exponents, plot and extrapolations from runs.json")
    p.add_argument("--out", type=Path, default=REPO / "runs" / "cost_curves")
    p.add_argument(
        "--docs",
        default=None,
        metavar="NAME",
        help="write docs/results/NAME.json, NAME_growth.json and docs/NAME.png instead of files in --out",
    )
    p.add_argument("--project", default="1,4,16,64", help="sizes to extrapolate to where not measured")
    p.add_argument(
        "--real-tokens-per-s",
        type=float,
        default=None,
        help="the real teacher's rate for the projected pass times (default: OUT/teacher_speed.json's median)",
    )
    p.add_argument("--real-rate-source", default=None, help="where --real-tokens-per-s comes from (for provenance)")
    p.add_argument("--command", default=None, help="the command recorded as reproducing the table")
    p.set_defaults(func=report)
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
