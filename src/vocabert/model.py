"""The student at inference time: numpy, tokenizers and safetensors only (no torch).

``encode`` tokenizes a batch, finds every vocabulary entry in it (:mod:`vocabert.matching`), reads
the entries' teacher vectors from the memory-mapped store, and runs the small network. A model
folder holds::

    config.json                        architecture, dimensions, tokenizer/teacher fingerprints, settings
    tokenizer.json                     the teacher's tokenizer
    model.safetensors                  entry patterns and vectors (fp16, or int8 + per-row scales) and
                                       the network's weights (student.*)
    vocabulary.tsv                     the entries, readable, with the statistics that chose them
    README.md                          model card, with the evaluation table
    modules.json                       sentence-transformers: the one module, vocabert's (see
    config_sentence_transformers.json  :mod:`vocabert.st_module`), and its settings
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from threadpoolctl import ThreadpoolController
from tqdm.auto import tqdm

from vocabert.artifacts import VocabertError, read_json, temporary_dir, write_json, write_text
from vocabert.card import model_card, read_evaluation
from vocabert.matching import EntryIndex, Matches
from vocabert.store import VocabularyStore, load_safetensors, save_safetensors
from vocabert.tokenizer import TextTokenizer, tokenizer_fingerprint

FORMAT_VERSION = 2  # 1: embeddings.safetensors + student.safetensors; 2: one model.safetensors
MODEL_FILES = ("config.json", "tokenizer.json", "model.safetensors")  # what load() reads
OLD_FORMAT_FILES = ("embeddings.safetensors", "student.safetensors")
STUDENT_PREFIX = "student."  # the network's tensors in model.safetensors; the others are the entry store
ST_MODULE = "vocabert.st_module.VocabertEmbedding"
# Texts pooled as one (texts x distinct entries) matrix: larger batches are cut into these, whose matrices stay
# small (the distinct entries grow with the texts, so the matrix grows as their square).
MICRO_BATCH = 32
MIN_TEXTS_PER_THREAD = 16  # below this a thread's hand-off costs more than it saves


def normalize(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length; an all-zero row stays zero (never NaN)."""
    x = np.asarray(x, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


@dataclass
class Batch:
    """A batch of tokenized texts after matching and lookup: what a network pools.

    ``vectors[column[i]]`` is the vector of match ``i``; ``entries`` are the batch's distinct entries.
    """

    matches: Matches
    entries: np.ndarray  # (u,) int64, sorted
    column: np.ndarray  # (matches,) int64, each match's row in entries / vectors
    vectors: np.ndarray  # (u, dim) float32
    lengths: np.ndarray  # (texts,) tokens per text, [CLS] and [SEP] included

    def weight_matrix(self, weight: np.ndarray) -> np.ndarray:
        """(texts, u) float32: the summed ``weight`` of each text's matches of each distinct entry.

        Multiplying it by a per-entry table is one GEMM for a mean of small rows (the attention queries);
        for the d-wide vectors, where it would be mostly zeros, :func:`pool` works per text instead.
        """
        n, u = self.matches.n_texts, len(self.entries)
        flat = self.matches.text * u + self.column
        return np.bincount(flat, weights=weight, minlength=n * u).reshape(n, u).astype(np.float32)


def pool(batch: Batch, weight: np.ndarray) -> np.ndarray:
    """Weighted mean of each text's matched vectors, ``weight[i]`` for match ``i``: (texts, dim). With
    ``weight`` of shape (H, matches), one mean per row of weights, side by side: (texts, H * dim)."""
    text, n = batch.matches.text, batch.matches.n_texts
    heads = np.atleast_2d(weight)
    heads = (heads / np.maximum(per_text_sum(heads.T, text, n), 1e-12)[text].T).astype(np.float32)
    out = np.zeros((n, len(heads), batch.vectors.shape[1]), dtype=np.float32)
    # Matches are sorted by text, so a text's matches are one slice: one small GEMM per text reads only
    # its own rows, where one dense (texts, distinct entries) GEMM multiplied mostly zeros (1.7x slower
    # on passages, no faster on queries).
    bounds = np.searchsorted(text, np.arange(n + 1))
    for i in np.flatnonzero(np.diff(bounds)):
        lo, hi = bounds[i], bounds[i + 1]
        np.matmul(heads[:, lo:hi], batch.vectors[batch.column[lo:hi]], out=out[i])
    return out.reshape(n, -1)


def per_text_max(values: np.ndarray, text: np.ndarray) -> np.ndarray:
    """For each element, the max of ``values`` over the elements of its text (``text`` sorted)."""
    if len(values) == 0:
        return values
    new = np.empty(len(text), dtype=bool)
    new[0] = True
    np.not_equal(text[1:], text[:-1], out=new[1:])
    return np.maximum.reduceat(values, np.flatnonzero(new))[np.cumsum(new) - 1]


def per_text_sum(values: np.ndarray, text: np.ndarray, n_texts: int) -> np.ndarray:
    """(n_texts, ...) sums of the rows of ``values`` of each text (``text`` sorted); zeros for a text without rows."""
    out = np.zeros((n_texts, *values.shape[1:]), dtype=values.dtype)
    if len(values):
        first = np.flatnonzero(np.r_[True, text[1:] != text[:-1]])
        out[text[first]] = np.add.reduceat(values, first, axis=0)
    return out


def gelu(x: np.ndarray) -> np.ndarray:
    """GELU in its tanh form (as trained)."""
    return 0.5 * x * (1 + np.tanh(0.7978845608 * (x + 0.044715 * x**3)))


def available_cores() -> int:
    """CPU cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def _check_shapes(name: str, tensors: dict[str, np.ndarray], expected: dict[str, tuple]) -> None:
    for key, shape in expected.items():
        if tensors[key].shape != shape:
            raise VocabertError(
                f"student weights ({name}) do not fit the store: {key} has shape {tensors[key].shape}, needs {shape}"
            )


class WeightedMean:
    """Learned weighted mean of the matched entries' vectors, then a linear map to the teacher's space.

    ``out = W @ (sum_e w_e v_e / sum_e w_e) + b`` with one positive weight ``w_e`` per entry.
    """

    name = "weighted_mean"

    def __init__(self, entry_weight: np.ndarray, weight: np.ndarray, bias: np.ndarray):
        self.entry_weight = np.asarray(entry_weight, dtype=np.float32)
        self.weight = np.asarray(weight, dtype=np.float32)
        self.bias = np.asarray(bias, dtype=np.float32)
        self.weight_by_input = np.ascontiguousarray(self.weight.T)  # see ContextPool.by_input

    @classmethod
    def from_tensors(cls, tensors: dict[str, np.ndarray]) -> WeightedMean:
        return cls(tensors["entry_weight"], tensors["weight"], tensors["bias"])

    def tensors(self) -> dict[str, np.ndarray]:
        return {"entry_weight": self.entry_weight, "weight": self.weight, "bias": self.bias}

    def check(self, n_entries: int, dim: int) -> None:
        _check_shapes(self.name, self.tensors(), {"entry_weight": (n_entries,), "weight": (dim, dim), "bias": (dim,)})

    def flops(self, matches: float, dim: int) -> float:
        """Multiply-adds per text, given matches per text."""
        return matches * dim + dim * dim

    def forward(self, batch: Batch) -> np.ndarray:
        """(texts, dim), not normalized."""
        return pool(batch, self.entry_weight[batch.matches.entry]) @ self.weight_by_input + self.bias


class ContextPool:
    """Context-aware pooling: each match's weight depends on the text it is in, in ``H`` heads.

    - weight of match ``e`` in text ``t`` in head ``h``: ``w_e * exp(q_th . k_eh)``, where ``k_eh``
      (entry key) and ``p_eh`` (entry query) are rank-``r`` projections of the entry's vector, stored per
      entry and head, and ``q_th`` is the ``w``-weighted mean of the ``p_eh`` of the text: O(H r) per
      match, no d x d work;
    - each head pools the matched vectors with its weights into ``m_h``; ``m`` is the heads' pooled
      vectors side by side (``H d``). It goes through a linear map to the teacher's space, plus a term for
      the teacher's [CLS] and [SEP] vectors, which depend on the whole text and weigh ``2 / (n + 2)`` in
      its mean over ``n`` tokens: ``(S m + s) / n``;
    - plus a residual MLP on ``m`` (``hidden`` units, GELU), where ``hidden > 0``;
    - plus a windowed attention over the matches, where ``window = K > 0``: the text's matches in order of
      position (then entry), each attending to the ``K`` before and after it with rank-``k`` scores
      ``a_i . b_j / sqrt(k) + o_(j-i)``, mixing their values ``c_j`` and adding its own ``g_i``
      (``a, b, c, g``: per-entry rank-``k`` projections, ``entry_window``); ``z_i = gelu(g_i + sum_j
      alpha_ij c_j)`` sees its neighbours, which no pooling weight can. The ``w``-weighted mean of the
      ``z_i`` goes to the teacher's space through ``V`` (d x k), once per text: O(K k) per match.

    ``out = W m + b + (S m + s) / n + B gelu(A m + a) + c + V mean_w(z) + v`` with ``n`` the text's tokens
    but [CLS] and [SEP]. Everything d x d happens once per text. ``entry_key`` and ``entry_query`` are
    (entries, H, r); models of one head written before heads existed store them as (entries, r).
    """

    name = "context_pool"
    KEYS = ("entry_weight", "entry_key", "entry_query", "weight", "bias", "special_weight", "special_bias")
    MLP_KEYS = ("mlp_in", "mlp_in_bias", "mlp_out", "mlp_out_bias")
    WINDOW_KEYS = ("entry_window", "window_offset_bias", "window_weight", "window_bias")
    MAPS = ("weight", "special_weight", "mlp_in", "mlp_out", "window_weight")

    def __init__(self, tensors: dict[str, np.ndarray]):
        self.t = {k: np.asarray(v, dtype=np.float32) for k, v in tensors.items()}
        for name in ("entry_key", "entry_query"):
            if self.t[name].ndim == 2:
                self.t[name] = self.t[name][:, None, :]
        # x @ M.T reads M against its layout; a contiguous M.T makes the once-per-text maps ~20% faster.
        self.by_input = {k: np.ascontiguousarray(self.t[k].T) for k in self.MAPS if k in self.t}

    @classmethod
    def from_tensors(cls, tensors: dict[str, np.ndarray]) -> ContextPool:
        keys = (
            cls.KEYS
            + (cls.MLP_KEYS if "mlp_in" in tensors else ())
            + (cls.WINDOW_KEYS if "entry_window" in tensors else ())
        )
        return cls({k: tensors[k] for k in keys})

    def tensors(self) -> dict[str, np.ndarray]:
        return dict(self.t)

    @property
    def heads(self) -> int:
        return self.t["entry_key"].shape[1]

    @property
    def rank(self) -> int:
        return self.t["entry_key"].shape[2]

    @property
    def hidden(self) -> int:
        return self.t["mlp_in"].shape[0] if "mlp_in" in self.t else 0

    @property
    def window(self) -> int:
        """Neighbours on each side of a match in the windowed attention (0: none)."""
        return len(self.t["window_offset_bias"]) // 2 if "entry_window" in self.t else 0

    @property
    def window_rank(self) -> int:
        return self.t["entry_window"].shape[2] if "entry_window" in self.t else 0

    def check(self, n_entries: int, dim: int) -> None:
        heads, r, h = self.heads, self.rank, self.hidden
        expected = {
            "entry_weight": (n_entries,),
            "entry_key": (n_entries, heads, r),
            "entry_query": (n_entries, heads, r),
            "weight": (dim, heads * dim),
            "bias": (dim,),
            "special_weight": (dim, heads * dim),
            "special_bias": (dim,),
        }
        if h:
            expected |= {
                "mlp_in": (h, heads * dim),
                "mlp_in_bias": (h,),
                "mlp_out": (dim, h),
                "mlp_out_bias": (dim,),
            }
        if self.window:
            k = self.window_rank
            expected |= {
                "entry_window": (n_entries, 4, k),
                "window_offset_bias": (2 * self.window,),
                "window_weight": (dim, k),
                "window_bias": (dim,),
            }
        _check_shapes(self.name, self.t, expected)

    def flops(self, matches: float, dim: int) -> float:
        """Multiply-adds per text, given matches per text."""
        heads = self.heads
        return (
            3 * matches * heads * (self.rank + 1)
            + heads * matches * dim
            + 2 * heads * dim * dim
            + 2 * heads * dim * self.hidden
            + matches * (4 * self.window + 2) * self.window_rank
            + dim * self.window_rank
        )

    def forward(self, batch: Batch) -> np.ndarray:
        """(texts, dim), not normalized."""
        t, matches, heads = self.t, batch.matches, self.heads
        w = base = t["entry_weight"][matches.entry]
        if self.rank:
            # q_th: the w-weighted mean of the entry queries of text t; then each match's score q_th . k_eh.
            weights = batch.weight_matrix(w)
            u = len(batch.entries)
            q = weights @ t["entry_query"][batch.entries].reshape(u, -1)
            q /= np.maximum(weights.sum(axis=1, keepdims=True), 1e-12)
            q = q.reshape(len(q), heads, self.rank).transpose(1, 0, 2)  # (H, texts, r)
            keys = t["entry_key"][batch.entries].transpose(1, 2, 0)  # (H, r, u)
            score = np.matmul(q, keys)[:, matches.text, batch.column]  # (H, matches)
            # The score is bounded by the projections' scale; subtracting each text's max keeps exp finite anyway.
            w = np.stack([w * np.exp(s - per_text_max(s, matches.text)) for s in score])
        else:
            w = np.broadcast_to(w, (heads, len(w)))
        m = pool(batch, w)  # (texts, H * dim)
        lengths = batch.lengths
        body = np.maximum(np.asarray(lengths, dtype=np.float32) - 2, 1)[:, None]
        maps = self.by_input
        out = m @ maps["weight"] + t["bias"] + (m @ maps["special_weight"] + t["special_bias"]) / body
        if self.hidden:
            out += gelu(m @ maps["mlp_in"] + t["mlp_in_bias"]) @ maps["mlp_out"] + t["mlp_out_bias"]
        if self.window:
            z = per_text_sum(self._window_features(batch) * base[:, None], matches.text, matches.n_texts)
            z /= np.maximum(per_text_sum(base, matches.text, matches.n_texts), 1e-12)[:, None]
            out += z @ maps["window_weight"] + t["window_bias"]
        return out

    def _window_features(self, batch: Batch) -> np.ndarray:
        """(matches, k): ``z_i``, each match after attending to the ``K`` matches before and after it in its text."""
        matches, k = batch.matches, self.window_rank
        a, b, c, g = self.t["entry_window"][batch.entries].transpose(1, 0, 2)[:, batch.column]  # (matches, k) each
        i = np.arange(len(matches))
        offsets = np.r_[-self.window : 0, 1 : self.window + 1]
        near = i[:, None] + offsets  # (matches, 2K)
        ok = (near >= 0) & (near < len(matches))
        near = np.clip(near, 0, max(len(matches) - 1, 0))
        ok &= matches.text[near] == matches.text[:, None]
        score = np.einsum("mk,mjk->mj", a, b[near]) / np.sqrt(k) + self.t["window_offset_bias"]
        score = np.where(ok, score, -np.inf)
        top = score.max(axis=1, keepdims=True, initial=-np.inf)
        alpha = np.where(ok, np.exp(score - np.where(np.isfinite(top), top, 0)), 0)
        alpha /= np.maximum(alpha.sum(axis=1, keepdims=True), 1e-30)  # a match without neighbours mixes nothing
        return gelu(g + np.einsum("mj,mjk->mk", alpha, c[near]))


ARCHITECTURES = {WeightedMean.name: WeightedMean, ContextPool.name: ContextPool}


class StudentModel:
    """A trained vocabert model: ``StudentModel.load(path).encode(texts)``."""

    def __init__(self, config: dict, tokenizer_text: str, store: VocabularyStore, network: WeightedMean | ContextPool):
        self.config = config
        self.tokenizer_text = tokenizer_text
        self.text_tokenizer = TextTokenizer(tokenizer_text, int(config["max_length"]))
        self.tokenizer = self.text_tokenizer.hf  # the teacher's tokenizers.Tokenizer, truncating as encode does
        self.store = store
        self.network = network
        self.index = EntryIndex(np.asarray(store.patterns), int(config["vocab_size"]))
        self.path: Path | None = None
        # Multi-threaded BLAS on small matrices is ~50x slower than one thread on this kind of CPU.
        self._blas = ThreadpoolController()
        self.threads = available_cores()  # encode_batch splits a batch across this many threads
        self._pool: ThreadPoolExecutor | None = None
        self._pool_size = 0

    @property
    def dim(self) -> int:
        return self.store.dim

    def get_sentence_embedding_dimension(self) -> int:
        return self.dim

    # ------------------------------------------------------------------------------------ encode

    def encode(
        self,
        texts: Sequence[str] | str | None = None,
        batch_size: int = 64,
        show_progress_bar: bool | None = None,
        *,
        output_value: str | None = "sentence_embedding",
        precision: str = "float32",
        convert_to_numpy: bool = True,
        convert_to_tensor: bool = False,
        device: str | None = None,
        normalize_embeddings: bool = False,
        truncate_dim: int | None = None,
        prompt: str | None = None,
        prompt_name: str | None = None,
        long_texts: str = "truncate",
        **kwargs: Any,
    ) -> Any:
        """Embeddings of ``texts``: float32, L2-normalized rows, shape (len(texts), dim).

        ``SentenceTransformer.encode``'s arguments, with its meaning, so a vocabert model can stand in
        for one (see :mod:`vocabert.encoding`):

        - a single string gives a single vector; ``sentences=`` / ``inputs=`` name ``texts`` too;
        - ``show_progress_bar``: None shows it when the ``vocabert`` logger's level is INFO or DEBUG;
        - ``precision``: ``float32``, ``int8``, ``uint8``, ``binary`` or ``ubinary``, as
          :func:`vocabert.encoding.quantize_embeddings` (int8/uint8 ranges come from this call's
          embeddings, as in sentence-transformers: one text cannot be quantized that way);
        - ``convert_to_tensor``: one torch tensor; ``convert_to_numpy=False``: a list of row tensors
          (both need torch; numpy needs nothing);
        - ``normalize_embeddings``: rows are unit length anyway (the model ends in a normalization,
          as all-MiniLM-L6-v2 ends in its Normalize module, whose vectors are unit length under
          ``normalize_embeddings=False`` too); it only changes rows that ``truncate_dim`` cut short;
        - ``truncate_dim``: keep the first ``truncate_dim`` dimensions;
        - ``prompt``: a string put before every text; ``prompt_name``: one of the model's prompts
          (a vocabert model has none);
        - ``device``: None or ``"cpu"``; ``pool``, other devices, ``task``, ``processing_kwargs`` and
          ``output_value`` other than ``"sentence_embedding"``: ValueError; ``chunk_size`` is ignored
          (it only applies to a pool); any other keyword: TypeError.

        ``long_texts``: ``"truncate"`` (the default) truncates texts at the teacher's maximum length
        (256 tokens), as the teacher does; ``"chunk"`` embeds a longer text window by window (each
        window of at most the maximum length, with its own ``[CLS]`` and ``[SEP]``) and takes the
        token-weighted mean of the windows' vectors, normalized. Shorter texts get the same vector
        either way. An empty text gets the vector of a text with no words (defined, never NaN).
        """
        from vocabert import encoding

        if texts is None:
            texts = kwargs.pop("sentences", kwargs.pop("inputs", None))
            if texts is None:
                raise TypeError("encode() needs the texts to encode")
        if kwargs:
            encoding.check_extra_arguments(kwargs)
        if output_value != "sentence_embedding":
            raise ValueError(
                f"output_value={output_value!r}: a vocabert model has sentence embeddings only (no token embeddings)"
            )
        if precision != "float32":
            encoding.check_precision(precision)
        if long_texts not in encoding.LONG_TEXTS:
            raise ValueError(f"long_texts must be one of {encoding.LONG_TEXTS}, got {long_texts!r}")
        if device is not None:
            encoding.check_device(device)
        if truncate_dim is not None and not (isinstance(truncate_dim, int) and 1 <= truncate_dim <= self.dim):
            raise ValueError(f"truncate_dim must be an integer from 1 to {self.dim}, got {truncate_dim!r}")
        if batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        if prompt is not None or prompt_name is not None:
            prompt = encoding.resolve_prompt(prompt, prompt_name, self.config.get("prompts"))
        single = isinstance(texts, str)
        texts = [texts] if single else list(texts)
        for t in texts:
            if not isinstance(t, str):
                raise TypeError(f"encode expects strings, got {type(t).__name__}")
        if prompt:
            texts = [prompt + t for t in texts]
        if show_progress_bar is None:
            show_progress_bar = encoding.default_progress_bar()

        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        starts = range(0, len(texts), batch_size)
        if show_progress_bar:  # even a disabled tqdm costs ~0.1 ms, a tenth of a one-text call
            starts = tqdm(starts, desc="encoding", unit="batch")
        for start in starts:
            batch = texts[start : start + batch_size]
            if long_texts == "chunk":
                out[start : start + len(batch)] = encoding.embed_long(self, batch, batch_size)
            else:
                out[start : start + len(batch)] = self.encode_batch(batch)

        if truncate_dim is not None:
            out = out[:, :truncate_dim]
        if normalize_embeddings and truncate_dim is not None:
            out = normalize(out)  # the model's rows are unit length already: only cut rows change
        if precision != "float32":
            out = encoding.quantize_embeddings(out, precision)
        if convert_to_tensor or not convert_to_numpy:
            out = encoding.convert_output(out, convert_to_numpy, convert_to_tensor)
        return out[0] if single else out

    def encode_batch(self, texts: list[str], timings: dict[str, float] | None = None) -> np.ndarray:
        """One batch, split across ``self.threads`` threads; with ``timings`` (one thread), adds the seconds
        spent in each step to it."""
        parts = 1 if timings is not None else min(self.threads, len(texts) // MIN_TEXTS_PER_THREAD)
        with self.one_blas_thread():  # process-wide, so it holds in our threads too
            if parts <= 1:
                return self._encode_part(texts, timings)
            bounds = np.linspace(0, len(texts), parts + 1).astype(int)
            chunks = [texts[lo:hi] for lo, hi in zip(bounds[:-1], bounds[1:], strict=True)]
            return np.concatenate(list(self._executor().map(self._encode_part, chunks)))

    def one_blas_thread(self):
        """A context in which BLAS runs one thread (process-wide): on encode's small matrices its threads
        cost more than they give."""
        return self._blas.limit(limits=1, user_api="blas")

    def _executor(self) -> ThreadPoolExecutor:
        if self._pool is None or self._pool_size != self.threads:
            self._pool = ThreadPoolExecutor(max_workers=self.threads, thread_name_prefix="vocabert")
            self._pool_size = self.threads
        return self._pool

    def _encode_part(self, texts: list[str], timings: dict[str, float] | None = None) -> np.ndarray:
        t0 = time.perf_counter()
        ids, offsets = self.tokenize(texts)
        if timings is not None:
            timings["tokenize"] = timings.get("tokenize", 0.0) + time.perf_counter() - t0
        return self.embed_ids(ids, offsets, timings)

    def tokenize(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """Token ids of ``texts`` as the teacher tokenizes them, flattened, with ``offsets`` (len(texts) + 1)."""
        try:
            return self.text_tokenizer.encode_ids(texts)
        except (TypeError, ValueError):
            # Lone surrogates (from undecodable bytes) cannot cross into the tokenizer: replace them.
            return self.text_tokenizer.encode_ids([t.encode("utf-8", "replace").decode("utf-8") for t in texts])

    def embed_ids(self, ids: np.ndarray, offsets: np.ndarray, timings: dict[str, float] | None = None) -> np.ndarray:
        """Embeddings of tokenized texts (:meth:`tokenize`): match, look up, pool; L2-normalized float32."""
        ids, offsets = np.asarray(ids, dtype=np.int64), np.asarray(offsets, dtype=np.int64)
        n = len(offsets) - 1
        out = np.zeros((n, self.dim), dtype=np.float32)
        for lo in range(0, n, MICRO_BATCH):
            hi = min(n, lo + MICRO_BATCH)
            part = offsets[lo : hi + 1]
            out[lo:hi] = self._embed_micro_batch(ids[part[0] : part[-1]], part - part[0], timings)
        return out

    def _embed_micro_batch(self, ids: np.ndarray, offsets: np.ndarray, timings: dict[str, float] | None) -> np.ndarray:
        t1 = time.perf_counter()
        matches = self.index.match(ids, offsets)
        t2 = time.perf_counter()
        entries, column = np.unique(matches.entry, return_inverse=True)
        batch = Batch(matches, entries, column.reshape(-1), self.store.vectors(entries), np.diff(offsets))
        t3 = time.perf_counter()
        out = normalize(self.network.forward(batch))
        t4 = time.perf_counter()
        if timings is not None:
            for step, seconds in (("match", t2 - t1), ("lookup", t3 - t2), ("network", t4 - t3)):
                timings[step] = timings.get(step, 0.0) + seconds
        return out

    # ------------------------------------------------------------------------------- save / load

    def folder_config(self) -> dict:
        """``config.json`` as saved: the config with the facts of this model filled in."""
        from vocabert import __version__

        return {
            **self.config,
            "format_version": FORMAT_VERSION,
            "vocabert_version": __version__,
            "architecture": self.network.name,
            "dim": self.dim,
            "entries": len(self.store),
            "dtype": "int8" if self.store.scales is not None else str(np.dtype(self.store.embeddings.dtype)),
        }

    def write_files(self, directory: str | Path, vocabulary_listing: str | None = None) -> None:
        """The files :meth:`load` reads, and ``vocabulary.tsv``, into an existing ``directory`` (no card)."""
        directory = Path(directory)
        write_json(directory / "config.json", self.folder_config())
        write_text(directory / "tokenizer.json", self.tokenizer_text)
        tensors = self.store.tensors()
        tensors.update({STUDENT_PREFIX + k: v for k, v in self.network.tensors().items()})
        metadata = {**{k: str(v) for k, v in self.store.metadata.items()}, "format_version": str(FORMAT_VERSION)}
        save_safetensors(directory / "model.safetensors", tensors, {**metadata, "architecture": self.network.name})
        if vocabulary_listing is None and self.path is not None and (self.path / "vocabulary.tsv").is_file():
            vocabulary_listing = (self.path / "vocabulary.tsv").read_text(encoding="utf-8")
        if vocabulary_listing is not None:
            write_text(directory / "vocabulary.tsv", vocabulary_listing)

    def save(self, path: str | Path, vocabulary_listing: str | None = None) -> Path:
        """Write the model folder (all files into a temporary folder, then one rename).

        The model card is written from the config; the evaluation section of the card already in
        ``path`` (or else of the folder this model was loaded from) is kept.
        """
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        evaluation = read_evaluation(path, self.path)
        tmp = temporary_dir(path.parent, f".{path.name}.")
        try:
            self.write_files(tmp, vocabulary_listing)
            write_text(tmp / "README.md", model_card(self.folder_config(), evaluation))
            # sentence-transformers: one module, ours, at the folder's root (SentenceTransformer(path) loads it).
            write_json(tmp / "modules.json", [{"idx": 0, "name": "0", "path": "", "type": ST_MODULE}])
            write_json(tmp / "config_sentence_transformers.json", sentence_transformers_config())
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
        self.path = path
        return path

    @classmethod
    def load(cls, path: str | Path) -> StudentModel:
        """Load a model folder; memory-maps the entry vectors (rows are read when a text needs them)."""
        path = Path(path)
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
        config = read_json(path / "config.json", "model config")
        if not isinstance(config, dict):
            raise VocabertError(f"model config {path / 'config.json'} is not a JSON object")
        for key, kind in (("architecture", str), ("max_length", int), ("vocab_size", int), ("provenance", dict)):
            if not isinstance(config.get(key), kind):
                raise VocabertError(f"model config {path / 'config.json'} lacks {key!r} (a {kind.__name__})")
        if not isinstance(config.get("format_version", FORMAT_VERSION), int):
            raise VocabertError(f"model config {path / 'config.json'}: format_version is not a number")
        if config.get("format_version", FORMAT_VERSION) > FORMAT_VERSION:
            raise VocabertError(
                f"{path} was written by a newer vocabert (format {config['format_version']}); upgrade vocabert"
            )
        tokenizer_text = (path / "tokenizer.json").read_text(encoding="utf-8")
        try:
            found = tokenizer_fingerprint(tokenizer_text)
        except json.JSONDecodeError:
            raise VocabertError(f"{path / 'tokenizer.json'} is not valid JSON") from None
        expected = config["provenance"].get("tokenizer")
        if found != expected:
            raise VocabertError(
                f"{path / 'tokenizer.json'} is tokenizer {found}, but the vocabulary was built for tokenizer "
                f"{expected} ({config['provenance'].get('tokenizer_source', '?')})"
            )
        arch = ARCHITECTURES.get(config["architecture"])
        if arch is None:
            raise VocabertError(f"unknown architecture {config['architecture']!r} in {path / 'config.json'}")
        weights = path / "model.safetensors"
        tensors, metadata = load_safetensors(weights, "model weights")
        student = {k.removeprefix(STUDENT_PREFIX): v for k, v in tensors.items() if k.startswith(STUDENT_PREFIX)}
        entries = {k: v for k, v in tensors.items() if not k.startswith(STUDENT_PREFIX)}
        store = VocabularyStore.from_tensors(entries, metadata, f"model weights {weights}")
        try:
            network = arch.from_tensors(student)
        except KeyError as e:
            raise VocabertError(f"model weights {weights} lack tensor {STUDENT_PREFIX}{e.args[0]}") from None
        network.check(len(store), store.dim)
        model = cls(config, tokenizer_text, store, network)
        model.path = path
        return model


def sentence_transformers_config() -> dict:
    """``config_sentence_transformers.json``: cosine similarity, and vocabert as a requirement, so that
    sentence-transformers says what to install where vocabert is missing."""
    from vocabert import __version__

    return {
        "model_type": "SentenceTransformer",
        "prompts": {},
        "default_prompt_name": None,
        "similarity_fn_name": "cosine",
        "requirements": {"vocabert": f">={__version__}"},
    }


def load(path: str | Path) -> StudentModel:
    """Load a vocabert model directory: ``vocabert.load(path).encode(texts)``."""
    return StudentModel.load(path)
