"""The student at inference time: numpy, tokenizers and safetensors only (no torch).

``encode`` tokenizes a batch, finds every vocabulary entry in it (:mod:`vocabert.matching`), reads
the entries' teacher vectors from the memory-mapped store (:mod:`vocabert.store`), and runs the small
network (:mod:`vocabert.networks`). :mod:`vocabert.model_folder` writes and reads the model folder;
:mod:`vocabert.encoding` holds sentence-transformers' ``encode`` options around it.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
from threadpoolctl import ThreadpoolController

import vocabert.encoding as encoding
import vocabert.model_folder as model_folder
from vocabert.matching import EntryIndex
from vocabert.networks import ACTIVATIONS, Batch, Network
from vocabert.store import VocabularyStore
from vocabert.tokenizer import TextTokenizer, added_tokens

# Texts pooled as one (texts x distinct entries) matrix: larger batches are cut into these, whose matrices stay
# small (the distinct entries grow with the texts, so the matrix grows as their square).
MICRO_BATCH = 32
MIN_TEXTS_PER_THREAD = 16  # below this a thread's hand-off costs more than it saves


def normalize(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length; an all-zero row stays zero (never NaN)."""
    x = np.asarray(x, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def available_cores() -> int:
    """CPU cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


class StudentModel:
    """A trained vocabert model: ``StudentModel.load(path).encode(texts)``."""

    def __init__(self, config: dict, tokenizer_text: str, store: VocabularyStore, network: Network):
        self.config = config
        self.tokenizer_text = tokenizer_text
        self.text_tokenizer = TextTokenizer(tokenizer_text, int(config["max_length"]))
        self.tokenizer = self.text_tokenizer.hf  # the teacher's tokenizers.Tokenizer, truncating as encode does
        self.store = store
        self.network = network
        self.index = EntryIndex(np.asarray(store.patterns), int(config["vocab_size"]))
        self.added_per_text = sum(map(len, added_tokens(self.tokenizer)))  # [CLS] and [SEP] for BERT
        self.activation = ACTIVATIONS[config.get("output_activation", "identity")]
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
        if truncate_dim is not None and not (encoding.is_integer(truncate_dim) and 1 <= truncate_dim <= self.dim):
            raise ValueError(f"truncate_dim must be an integer from 1 to {self.dim}, got {truncate_dim!r}")
        batch_size = encoding.check_batch_size(batch_size)
        if prompt is None and prompt_name is None:
            prompt_name = self.config.get("default_prompt_name")  # as sentence-transformers does
        if prompt is not None or prompt_name is not None:
            prompt = encoding.resolve_prompt(prompt, prompt_name, self.config.get("prompts"))
        texts, single = encoding.text_list(texts)
        if prompt:
            texts = [prompt + t for t in texts]
        if show_progress_bar is None:
            show_progress_bar = encoding.default_progress_bar()

        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        starts = range(0, len(texts), batch_size)
        if show_progress_bar:  # even a disabled tqdm costs ~0.1 ms, a tenth of a one-text call
            from tqdm.auto import tqdm  # only here: importing it costs ~9 MB of RSS

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
        lengths = np.diff(offsets) - self.added_per_text
        batch = Batch(matches, entries, column.reshape(-1), self.store.vectors(entries), lengths)
        t3 = time.perf_counter()
        out = normalize(self.activation(self.network.forward(batch)))
        t4 = time.perf_counter()
        if timings is not None:
            for step, seconds in (("match", t2 - t1), ("lookup", t3 - t2), ("network", t4 - t3)):
                timings[step] = timings.get(step, 0.0) + seconds
        return out

    # ------------------------------------------------------------------------------- save / load

    def parts(self) -> model_folder.ModelParts:
        """What the model folder stores: ``StudentModel(*model.parts())`` is this model again."""
        return model_folder.ModelParts(self.config, self.tokenizer_text, self.store, self.network)

    def write_files(self, directory: str | Path, vocabulary_listing: str | None = None) -> None:
        """The files :meth:`load` reads, and ``vocabulary.tsv``, into an existing ``directory`` (no card)."""
        model_folder.write_files(directory, self.parts(), vocabulary_listing, self.path)

    def save(self, path: str | Path, vocabulary_listing: str | None = None) -> Path:
        """Write the model folder (all files into a temporary folder, then one rename).

        The model card is written from the config; the evaluation section of the card already in
        ``path`` (or else of the folder this model was loaded from) is kept.
        """
        self.path = model_folder.write(path, self.parts(), vocabulary_listing, self.path)
        return self.path

    @classmethod
    def load(cls, path: str | Path) -> StudentModel:
        """Load a model folder; memory-maps the entry vectors (rows are read when a text needs them)."""
        model = cls(*model_folder.read(path))
        model.path = Path(path)
        return model


def load(path: str | Path) -> StudentModel:
    """Load a vocabert model directory: ``vocabert.load(path).encode(texts)``."""
    return StudentModel.load(path)
