"""A stand-in teacher: the real teacher's tokenizer and output shape, one random layer, for cost curves.

    python scripts/stand_in_teacher.py runs/cost_curves/stand-in-teacher-L1-seed0            # write it, time it
    python scripts/stand_in_teacher.py DIR --layers 2 --seed 1 --speed-texts 0               # write only
    vocabert embed --teacher runs/cost_curves/stand-in-teacher-L1-seed0 ...

The folder loads offline with ``SentenceTransformer(DIR)`` like the real teacher (by default all-MiniLM-L6-v2,
``vocabert.distill.teacher.default_teacher_path()``): the same tokenizer files, the same modules (mean pooling,
then normalization: ``modules.json``, ``1_Pooling/``, ``sentence_bert_config.json`` copied), and a ``BertModel``
with the same vocabulary, hidden size (384), heads and maximum length, but ``--layers`` (default 1) randomly
initialised layers instead of 6 trained ones, seeded (``--seed``), so the same command writes the same weights.
Its vectors mean nothing: it exists to run the teacher pass and training at sizes where the real teacher's CPU
time is out of reach, with the real data path (the same token ids, the same shapes, the same bytes on disk).
Every figure measured with it is labelled "stand-in teacher"; its folder's name must say so (it is the teacher's
name in every manifest vocabert writes: the README names no model to load), and ``stand_in_teacher.json`` in the
folder describes it.

After writing, the command times the stand-in and the real teacher on the same few thousand bundled texts
(``--speed-texts``, a sample of passages, queries and glosses in the corpus's proportions), alternating, 3 times
each (``--repeats``), and prints their median tokens/s, and the best run's (the machine may be shared). Tokens
are counted as ``vocabert corpus`` counts them: the teacher's input ids, [CLS] and [SEP] included, truncated
at its maximum length. ``--speed-json`` keeps the figures (scripts/cost_curves.py reads them to put the real
teacher's time beside the stand-in's).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

LABEL = "stand-in teacher"
# Files copied as they are: the tokenizer, and the sentence-transformers modules around the transformer.
COPIED = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.txt",
    "modules.json",
    "sentence_bert_config.json",
    "config_sentence_transformers.json",
    "1_Pooling/config.json",
)
MARKER = "stand_in_teacher.json"


def real_teacher_path() -> Path:
    from vocabert.distill.teacher import default_teacher_path

    return default_teacher_path()


def label(layers: int = 1, seed: int = 0) -> str:
    return f"{LABEL} ({layers} random layer{'s' if layers != 1 else ''}, seed {seed})"


def default_folder_name(layers: int = 1, seed: int = 0) -> str:
    return f"stand-in-teacher-L{layers}-seed{seed}"


def write_stand_in_teacher(
    out_dir: str | Path, layers: int = 1, seed: int = 0, teacher: str | Path | None = None
) -> Path:
    """Write the stand-in teacher folder to ``out_dir`` (replacing what is there) and return its path.

    ``teacher``: the real teacher folder whose tokenizer, modules and configuration are copied (default: the
    project's default teacher)."""
    import torch
    from transformers import BertConfig, BertModel

    source = Path(teacher) if teacher else real_teacher_path()
    out = Path(out_dir)
    if LABEL.replace(" ", "-") not in out.name:
        # vocabert names a teacher in its manifests by its folder's name: it must say what this is.
        raise ValueError(f"the stand-in's folder name must contain 'stand-in-teacher' (e.g. {default_folder_name()})")
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for name in COPIED:
        if (source / name).is_file():
            (tmp / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source / name, tmp / name)
    if not (tmp / "modules.json").is_file():
        raise FileNotFoundError(f"{source} is not a sentence-transformers folder (no modules.json)")
    config = json.loads((source / "config.json").read_text(encoding="utf-8"))
    config["num_hidden_layers"] = layers
    config["_name_or_path"] = label(layers, seed)
    bert_config = BertConfig(**{k: v for k, v in config.items() if k not in ("architectures", "transformers_version")})
    bert_config.architectures = ["BertModel"]
    generator_state = torch.random.get_rng_state()
    try:
        torch.manual_seed(seed)
        model = BertModel(bert_config)  # (with its pooler, unused, so that loading initialises nothing at random)
    finally:
        torch.random.set_rng_state(generator_state)
    model.eval()
    model.save_pretrained(tmp, safe_serialization=True)
    for file in tmp.iterdir():
        if file.is_file():
            file.chmod(0o644)  # (save_pretrained leaves the weights readable by their owner only)
    info = {
        "label": label(layers, seed),
        "layers": layers,
        "seed": seed,
        "copied_from": str(source),
        "hidden_size": bert_config.hidden_size,
        "vocab_size": bert_config.vocab_size,
        "written_by": "scripts/stand_in_teacher.py",
    }
    (tmp / MARKER).write_text(json.dumps(info, indent=1) + "\n", encoding="utf-8")
    (tmp / "README.md").write_text(_readme(info), encoding="utf-8")
    if out.exists():
        shutil.rmtree(out)
    tmp.rename(out)
    return out


def _readme(info: dict) -> str:
    return f"""# {info["label"]}: not a trained model

A stand-in for the teacher in cost measurements only, written by `scripts/stand_in_teacher.py`: the tokenizer,
pooling and normalization of `{info["copied_from"]}`, and a BERT of {info["layers"]} randomly initialised
layer(s) (seed {info["seed"]}, hidden size {info["hidden_size"]}, vocabulary {info["vocab_size"]}). Its vectors carry
no meaning. Load it with sentence-transformers by its folder path.
"""


def is_stand_in(path: str | Path) -> dict | None:
    """The stand-in's description if ``path`` is a stand-in teacher folder, else None."""
    marker = Path(path) / MARKER
    return json.loads(marker.read_text(encoding="utf-8")) if marker.is_file() else None


# ----------------------------------------------------------------------------------------------- speed


def sample_texts(n: int, data_dir: str | Path | None = None) -> list[str]:
    """``n`` bundled texts, every k-th of each source, in the proportions of the bundled sources."""
    from vocabert.distill.corpus import default_sources
    from vocabert.readers import read_texts

    sources = default_sources(data_dir)
    by_source = {name: [t for _, t in read_texts(path, warn=False)] for name, path in sources.items()}
    total = sum(len(v) for v in by_source.values())
    out: list[str] = []
    for texts in by_source.values():
        share = max(1, round(n * len(texts) / total))
        step = max(1, len(texts) // share)
        out.extend(texts[::step][:share])
    return out


def measure_speed(
    stand_in: str | Path,
    texts: list[str],
    teacher: str | Path | None = None,
    repeats: int = 3,
    batch_size: int = 64,
) -> dict:
    """tokens/s of the stand-in and of the real teacher on ``texts`` (sentence-transformers ``encode``,
    alternating, ``repeats`` times each; the median is reported), with the machine's load."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import torch
    from sentence_transformers import SentenceTransformer

    from vocabert.distill.teacher import max_seq_length, tokenizer_json
    from vocabert.tokenizer import TextTokenizer

    real = Path(teacher) if teacher else real_teacher_path()
    tokens = int(TextTokenizer(tokenizer_json(real), max_seq_length(real)).encode_ids(texts)[1][-1])
    models = {
        "real teacher": SentenceTransformer(str(real), device="cpu"),
        LABEL: SentenceTransformer(str(stand_in), device="cpu"),
    }
    for model in models.values():
        model.encode(texts[:batch_size], batch_size=batch_size)  # warm-up
    seconds: dict[str, list[float]] = {name: [] for name in models}
    load = os.getloadavg()[0]
    for _ in range(repeats):
        for name, model in models.items():
            started = time.perf_counter()
            model.encode(texts, batch_size=batch_size)
            seconds[name].append(time.perf_counter() - started)
    result = {
        "texts": len(texts),
        "tokens": tokens,
        "batch_size": batch_size,
        "repeats": repeats,
        "torch_threads": torch.get_num_threads(),
        "cpu": platform.processor() or platform.machine(),
        "load_average_1min_before": round(load, 2),
        "load_average_1min_after": round(os.getloadavg()[0], 2),
        "stand_in": str(stand_in),
        "stand_in_label": (is_stand_in(stand_in) or {}).get("label", LABEL),
        "real_teacher": str(real),
    }
    for name, values in seconds.items():
        key = "real" if name == "real teacher" else "stand_in"
        result[f"{key}_seconds"] = [round(v, 3) for v in values]
        result[f"{key}_tokens_per_s"] = round(tokens / statistics.median(values))
        result[f"{key}_tokens_per_s_best"] = round(tokens / min(values))  # (the least disturbed run)
    result["stand_in_speedup"] = round(result["stand_in_tokens_per_s"] / result["real_tokens_per_s"], 2)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("out", type=Path, nargs="?", help="folder to write (default: runs/stand-in-teacher-L1-seed0)")
    parser.add_argument("--layers", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--teacher", type=Path, default=None, help="the real teacher folder (default: the project's)")
    parser.add_argument("--speed-texts", type=int, default=3000, help="texts to time both teachers on; 0: no timing")
    parser.add_argument("--repeats", type=int, default=3, help="timings of each teacher, alternating (median kept)")
    parser.add_argument("--speed-json", type=Path, default=None, help="write the timing here as JSON")
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    out = args.out or REPO / "runs" / default_folder_name(args.layers, args.seed)
    path = write_stand_in_teacher(out, args.layers, args.seed, args.teacher)
    print(f"{label(args.layers, args.seed)} written to {path}")
    if args.speed_texts > 0:
        speed = measure_speed(path, sample_texts(args.speed_texts), args.teacher, repeats=args.repeats)
        print(
            f"on {speed['texts']:,} bundled texts ({speed['tokens']:,} tokens), batch {speed['batch_size']}, "
            f"median of {speed['repeats']}, load average {speed['load_average_1min_before']}: "
            f"real teacher {speed['real_tokens_per_s']:,} tokens/s, {speed['stand_in_label']} "
            f"{speed['stand_in_tokens_per_s']:,} tokens/s ({speed['stand_in_speedup']}x)"
        )
        if args.speed_json:
            args.speed_json.parent.mkdir(parents=True, exist_ok=True)
            args.speed_json.write_text(json.dumps(speed, indent=1) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
