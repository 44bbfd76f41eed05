"""The model folder: what :meth:`StudentModel.save <vocabert.model.StudentModel.save>` writes and
:meth:`~vocabert.model.StudentModel.load` reads. numpy, tokenizers and safetensors only (no torch)::

    config.json                        architecture, dimensions, tokenizer/teacher fingerprints, settings
    tokenizer.json                     the teacher's tokenizer
    model.safetensors                  entry patterns and vectors (fp16, or int8 + per-row scales) and
                                       the network's weights (student.*)
    vocabulary.tsv                     the entries, readable, with the statistics that chose them
    README.md                          model card, with the evaluation table
    modules.json                       sentence-transformers: the one module, vocabert's (see
    config_sentence_transformers.json  :mod:`vocabert.st_module`), and its settings

Reading checks everything a later step relies on, and refuses a folder it cannot trust with one line
(:class:`~vocabert.artifacts.VocabertError`): the older layout, a newer format, a config whose values
lack or do not fit the tensors, entry patterns that are not token ids of the vocabulary, NaN or
infinite weights.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

from vocabert._version import __version__
from vocabert.artifacts import VocabertError, read_json, temporary_dir, write_json, write_text
from vocabert.card import model_card, read_evaluation
from vocabert.matching import WILDCARD
from vocabert.networks import ACTIVATIONS, ARCHITECTURES, Network
from vocabert.store import VocabularyStore, all_finite, load_safetensors, save_safetensors
from vocabert.tokenizer import tokenizer_fingerprint

# 1: embeddings.safetensors + student.safetensors; 2: one model.safetensors; 3: context_pool's keys and queries
# in int8 with per-entry scales (a vocabert of format 2 would read the int8 values without their scales, so it
# must refuse the folder). Folders of format 2 load as they did.
FORMAT_VERSION = 3
MODEL_FILES = ("config.json", "tokenizer.json", "model.safetensors")  # what read() reads
OLD_FORMAT_FILES = ("embeddings.safetensors", "student.safetensors")
STUDENT_PREFIX = "student."  # the network's tensors in model.safetensors; the others are the entry store
ST_MODULE = "vocabert.st_module.VocabertEmbedding"


class ModelParts(NamedTuple):
    """What a model is made of, as a folder holds it: ``StudentModel(*parts)``."""

    config: dict
    tokenizer_text: str
    store: VocabularyStore
    network: Network


# ------------------------------------------------------------------------------------------- write


def folder_config(parts: ModelParts) -> dict:
    """``config.json`` as saved: the config with the facts of the model filled in."""
    store = parts.store
    return {
        **parts.config,
        "format_version": FORMAT_VERSION,
        "vocabert_version": __version__,
        "architecture": parts.network.name,
        "dim": store.dim,
        "entries": len(store),
        "dtype": store.dtype,
    }


def write_files(
    directory: str | Path, parts: ModelParts, vocabulary_listing: str | None = None, source: Path | None = None
) -> None:
    """The files :func:`read` reads, and ``vocabulary.tsv``, into an existing ``directory`` (no card).

    Without ``vocabulary_listing``, the listing of ``source`` (the folder the model was loaded from) is kept.
    """
    directory = Path(directory)
    write_json(directory / "config.json", folder_config(parts))
    write_text(directory / "tokenizer.json", parts.tokenizer_text)
    tensors = parts.store.tensors()
    tensors.update({STUDENT_PREFIX + k: v for k, v in parts.network.tensors().items()})
    metadata = {**{k: str(v) for k, v in parts.store.metadata.items()}, "format_version": str(FORMAT_VERSION)}
    save_safetensors(directory / "model.safetensors", tensors, {**metadata, "architecture": parts.network.name})
    if vocabulary_listing is None and source is not None and (source / "vocabulary.tsv").is_file():
        vocabulary_listing = (source / "vocabulary.tsv").read_text(encoding="utf-8")
    if vocabulary_listing is not None:
        write_text(directory / "vocabulary.tsv", vocabulary_listing)


def write(
    path: str | Path, parts: ModelParts, vocabulary_listing: str | None = None, source: Path | None = None
) -> Path:
    """Write the whole folder: every file into a temporary folder, then one rename over ``path``.

    The model card is written from the config; the evaluation section of the card already in ``path``
    (or else in ``source``, the folder the model was loaded from) is kept.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    evaluation = read_evaluation(path, source)
    tmp = temporary_dir(path.parent, f".{path.name}.")
    try:
        write_files(tmp, parts, vocabulary_listing, source)
        write_text(tmp / "README.md", model_card(folder_config(parts), evaluation))
        # sentence-transformers: one module, ours, at the folder's root (SentenceTransformer(path) loads it).
        write_json(tmp / "modules.json", [{"idx": 0, "name": "0", "path": "", "type": ST_MODULE}])
        write_json(tmp / "config_sentence_transformers.json", sentence_transformers_config(parts.config))
        if path.exists():
            old = path.with_name(f".{path.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            path.rename(old)
            tmp.rename(path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return path


def sentence_transformers_config(config: dict | None = None) -> dict:
    """``config_sentence_transformers.json``: the teacher's prompts (the model's config holds them),
    cosine similarity, and vocabert as a requirement, so that sentence-transformers says what to install
    where vocabert is missing."""
    config = config or {}
    return {
        "model_type": "SentenceTransformer",
        "prompts": config.get("prompts") or {},
        "default_prompt_name": config.get("default_prompt_name"),
        "similarity_fn_name": "cosine",
        "requirements": {"vocabert": f">={__version__}"},
    }


# -------------------------------------------------------------------------------------------- read


def _integer(least: int) -> Callable[[Any], bool]:
    def check(value: Any) -> bool:
        return isinstance(value, int) and not isinstance(value, bool) and value >= least

    return check


# The keys read() relies on: what each must be, and the check. A bool is no integer here, though Python's is.
CONFIG_KEYS = {
    "architecture": ("a string", lambda v: isinstance(v, str)),
    "max_length": ("an integer of at least 2 ([CLS] and [SEP])", _integer(2)),
    "vocab_size": ("a positive integer", _integer(1)),
    "dim": ("a positive integer", _integer(1)),
    "entries": ("an integer of at least 0", _integer(0)),
    "provenance": ("a JSON object", lambda v: isinstance(v, dict)),
}
OPTIONAL_CONFIG_KEYS = {
    "format_version": ("a positive integer", _integer(1)),
    "dtype": ("a string", lambda v: isinstance(v, str)),
    "output_activation": (f"one of {', '.join(ACTIVATIONS)}", lambda v: isinstance(v, str) and v in ACTIVATIONS),
    "default_prompt_name": ("a string or null", lambda v: v is None or isinstance(v, str)),
    "prompts": (
        "a JSON object of strings",
        lambda v: isinstance(v, dict) and all(isinstance(x, str) for x in v.values()),
    ),
}


def check_config(config: Any, where: Path) -> dict:
    """``config`` if it holds every key :func:`read` relies on, each of the right type; else VocabertError."""
    if not isinstance(config, dict):
        raise VocabertError(f"model config {where} is not a JSON object")
    for key, (meaning, fits) in (CONFIG_KEYS | OPTIONAL_CONFIG_KEYS).items():
        if key not in config:
            if key in CONFIG_KEYS:
                raise VocabertError(f"model config {where} lacks {key!r} ({meaning})")
        elif not fits(config[key]):
            shown = json.dumps(config[key])
            shown = shown if len(shown) <= 60 else shown[:57] + "..."
            raise VocabertError(f"model config {where}: {key!r} must be {meaning}, not {shown}")
    return config


def read(path: str | Path) -> ModelParts:
    """The parts of the model folder ``path``, checked; the entry vectors and the network's per-entry tables
    stay memory-mapped (a batch reads the rows of its entries).

    Every float tensor is checked for NaN and infinity: one pass over the file, read from it rather than
    through the maps (~10 ms for a 77 MB store once it is cached), so that the check leaves none of the
    file resident in the process.
    """
    path = Path(path)
    if path.is_file():
        raise VocabertError(f"model path {path} is a file, not a model folder (one holding {', '.join(MODEL_FILES)})")
    if not path.is_dir():
        raise VocabertError(f"model directory {path} does not exist")
    if not (path / "model.safetensors").exists() and any((path / f).exists() for f in OLD_FORMAT_FILES):
        raise VocabertError(
            f"{path} is a model folder of an older vocabert format (embeddings.safetensors + student.safetensors, "
            "no model.safetensors); get a new one with `vocabert train --force` on the work directory that built it"
        )
    missing = [f for f in MODEL_FILES if not (path / f).is_file()]
    if missing:
        raise VocabertError(f"model directory {path} is incomplete: missing {', '.join(missing)}")
    config_file = path / "config.json"
    config = check_config(read_json(config_file, "model config"), config_file)
    if config.get("format_version", FORMAT_VERSION) > FORMAT_VERSION:
        raise VocabertError(
            f"{path} was written by a newer vocabert (format {config['format_version']}); upgrade vocabert"
        )
    tokenizer_text = _read_tokenizer(path / "tokenizer.json", config)
    arch = ARCHITECTURES.get(config["architecture"])
    if arch is None:
        raise VocabertError(f"unknown architecture {config['architecture']!r} in {config_file}")

    weights = path / "model.safetensors"
    where = f"model weights {weights}"
    tensors, metadata = load_safetensors(weights, "model weights")
    student = {k.removeprefix(STUDENT_PREFIX): v for k, v in tensors.items() if k.startswith(STUDENT_PREFIX)}
    store = VocabularyStore.from_tensors(
        {k: v for k, v in tensors.items() if not k.startswith(STUDENT_PREFIX)}, metadata, where
    )
    _check_store(store, config, config_file, where)
    try:
        network = arch.from_tensors(student)
    except KeyError as e:
        raise VocabertError(f"{where} lack tensor {STUDENT_PREFIX}{e.args[0]}") from None
    network.check(len(store), store.dim)
    for name, tensor in tensors.items():  # entry vectors, scales and the network's weights
        if not all_finite(tensor):
            raise VocabertError(f"{where}: tensor {name} holds NaN or infinite values")
    return ModelParts(config, tokenizer_text, store, network)


def _read_tokenizer(file: Path, config: dict) -> str:
    """tokenizer.json's text, if it is the tokenizer the vocabulary was built for."""
    try:
        text = file.read_text(encoding="utf-8")
        found = tokenizer_fingerprint(text)
    except ValueError:  # not UTF-8, or not JSON
        raise VocabertError(f"{file} is not valid JSON") from None
    except (AttributeError, TypeError):  # JSON, but no object
        raise VocabertError(f"{file} is not a tokenizer (a JSON object)") from None
    expected = config["provenance"].get("tokenizer")
    if found != expected:
        raise VocabertError(
            f"{file} is tokenizer {found}, but the vocabulary was built for tokenizer "
            f"{expected} ({config['provenance'].get('tokenizer_source', '?')})"
        )
    return text


def _check_store(store: VocabularyStore, config: dict, config_file: Path, where: str) -> None:
    """The store is what the config says, and its patterns are token ids of the config's vocabulary."""
    for key, found in (("dim", store.dim), ("entries", len(store)), ("dtype", store.dtype)):
        if key in config and config[key] != found:
            raise VocabertError(f"model config {config_file} says {key} {config[key]}, but {where} hold {found}")
    lowest, highest = (int(store.patterns.min()), int(store.patterns.max())) if len(store) else (0, 0)
    if lowest < WILDCARD or highest >= config["vocab_size"]:
        bad = lowest if lowest < WILDCARD else highest
        raise VocabertError(
            f"{where}: tensor patterns holds {bad}, not a token id of the vocabulary "
            f"(0 to {config['vocab_size'] - 1}, vocab_size in {config_file}) nor a wildcard or padding"
        )
