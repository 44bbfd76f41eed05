"""What :meth:`StudentModel.encode` adds around the model: sentence-transformers' ``encode`` options,
quantization, and long texts. numpy only; torch is imported only when a tensor is asked for.

- :func:`quantize_embeddings` is sentence-transformers' ``quantize_embeddings``, for numpy arrays:
  ``int8``/``uint8`` map each dimension's range (per-dimension min and max, computed from the
  embeddings themselves unless ``ranges`` or ``calibration_embeddings`` are given) onto 256 buckets;
  ``binary``/``ubinary`` keep the sign bits, packed 8 to a byte by ``np.packbits`` (``binary``: the
  packed byte minus 128, as int8).
- :func:`embed_long` embeds texts longer than the teacher's maximum length window by window (each
  window wrapped in ``[CLS]`` ... ``[SEP]``, as the teacher would see a text of that length) and
  pools the windows' vectors, weighted by their token counts.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from vocabert.model import StudentModel

logger = logging.getLogger("vocabert")

PRECISIONS = ("float32", "int8", "uint8", "binary", "ubinary")
LONG_TEXTS = ("truncate", "chunk")

# sentence-transformers' encode arguments that do not change what a vocabert model computes.
_IGNORED = ("chunk_size",)  # only means something with a multi-process pool


# ------------------------------------------------------------------------------------ quantization


def check_precision(precision: str) -> str:
    if precision not in PRECISIONS:
        raise ValueError(f"Precision {precision!r} is not supported, must be one of {PRECISIONS}")
    return precision


def quantized_dtype(precision: str) -> np.dtype:
    """dtype of the embeddings :func:`quantize_embeddings` returns for ``precision``."""
    check_precision(precision)
    if precision == "float32":
        return np.dtype(np.float32)
    return np.dtype(np.uint8 if precision.startswith("u") else np.int8)


def quantized_width(dim: int, precision: str) -> int:
    """Columns of the quantized embeddings: ``dim``, or ``ceil(dim / 8)`` bytes for the binary precisions."""
    check_precision(precision)
    return (dim + 7) // 8 if precision.endswith("binary") else dim


def quantization_ranges(
    embeddings: np.ndarray, precision: str = "int8", calibration_embeddings: np.ndarray | None = None
) -> np.ndarray:
    """(2, dim): per-dimension min and max, of ``calibration_embeddings`` if given, else of ``embeddings``.

    As sentence-transformers: one embedding cannot give ranges (ValueError), fewer than 100 give a warning.
    """
    if calibration_embeddings is None:
        if embeddings.ndim == 1 or embeddings.shape[0] == 1:
            raise ValueError(
                f"Cannot compute {precision} quantization ranges from a single embedding. "
                "Call `quantize_embeddings` with `ranges` or `calibration_embeddings` "
                "from a representative set of embeddings instead."
            )
        if embeddings.shape[0] < 100:
            logger.warning(
                f"Computing {precision} quantization buckets based on {len(embeddings)} embeddings. "
                f"{precision} quantization is more stable with `ranges` calculated from more embeddings "
                "or a `calibration_embeddings` that can be used to calculate the buckets."
            )
        calibration_embeddings = embeddings
    return np.vstack((np.min(calibration_embeddings, axis=0), np.max(calibration_embeddings, axis=0)))


def quantize_embeddings(
    embeddings: np.ndarray,
    precision: str,
    ranges: np.ndarray | None = None,
    calibration_embeddings: np.ndarray | None = None,
) -> np.ndarray:
    """``embeddings`` (float, (n, dim) or (dim,)) at ``precision``: sentence-transformers' ``quantize_embeddings``.

    - ``float32``: as float32;
    - ``int8`` / ``uint8``: ``floor((x - min) / step)`` clipped to 0..255 with ``step = (max - min) / 255``
      per dimension (``int8``: minus 128); ``ranges`` (2, dim) gives min and max, else they are taken from
      ``calibration_embeddings``, else from ``embeddings`` themselves (so the result depends on what else
      is in the call: pass ``ranges`` to quantize several calls alike);
    - ``binary`` / ``ubinary``: ``x > 0`` packed 8 bits to a byte (``np.packbits``, last axis); ``binary``
      is the byte minus 128 as int8, ``ubinary`` the byte as uint8.

    Bit-for-bit what sentence-transformers returns for the same numpy input.
    """
    check_precision(precision)
    embeddings = np.asarray(embeddings)
    if embeddings.dtype in (np.uint8, np.int8):
        raise ValueError("Embeddings to quantize must be float rather than int8 or uint8.")
    if embeddings.ndim == 2 and embeddings.shape[0] == 0:
        return np.zeros((0, quantized_width(embeddings.shape[1], precision)), dtype=quantized_dtype(precision))
    if precision == "float32":
        return embeddings.astype(np.float32)
    if precision.endswith("int8"):
        if ranges is None:
            ranges = quantization_ranges(embeddings, precision, calibration_embeddings)
        ranges = np.asarray(ranges).astype(np.float32, copy=False)
        starts = ranges[0, :]
        steps = (ranges[1, :] - starts) / 255
        steps = np.where(steps == 0, 1, steps)
        q = np.clip(np.floor((embeddings - starts) / steps), 0, 255)
        return q.astype(np.uint8) if precision == "uint8" else (q - 128).astype(np.int8)
    packed = np.packbits(embeddings > 0, axis=-1)
    return packed if precision == "ubinary" else (packed.astype(np.int16) - 128).astype(np.int8)


class RangeTracker:
    """Running per-dimension min and max over batches: :func:`quantization_ranges` of a stream."""

    def __init__(self) -> None:
        self.low: np.ndarray | None = None
        self.high: np.ndarray | None = None
        self.count = 0

    def update(self, embeddings: np.ndarray) -> None:
        if not len(embeddings):
            return
        low, high = embeddings.min(axis=0), embeddings.max(axis=0)
        self.low = low if self.low is None else np.minimum(self.low, low)
        self.high = high if self.high is None else np.maximum(self.high, high)
        self.count += len(embeddings)

    def ranges(self, precision: str = "int8") -> np.ndarray:
        if self.count < 2:
            raise ValueError(f"Cannot compute {precision} quantization ranges from {self.count} embedding(s).")
        if self.count < 100:
            logger.warning(
                f"Computing {precision} quantization buckets based on {self.count} embeddings. "
                f"{precision} quantization is more stable with ranges calculated from more embeddings."
            )
        return np.vstack((self.low, self.high))


# ------------------------------------------------------------------ sentence-transformers' arguments


def default_progress_bar() -> bool:
    """``show_progress_bar=None``, as in sentence-transformers: on when the ``vocabert`` logger's level is INFO or
    DEBUG (off by default: Python's default level is WARNING)."""
    return logger.getEffectiveLevel() in (logging.INFO, logging.DEBUG)


def is_integer(value: Any) -> bool:
    """An int or a numpy integer, and not a bool (which Python counts as an int)."""
    return isinstance(value, int | np.integer) and not isinstance(value, bool | np.bool_)


def check_batch_size(batch_size: Any) -> int:
    """``batch_size`` as an int, if it is a positive integer; else TypeError (not an integer) or ValueError."""
    if not is_integer(batch_size):
        raise TypeError(f"batch_size must be a positive integer, got {batch_size!r} ({type(batch_size).__name__})")
    if batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    return int(batch_size)


def text_list(texts: Any) -> tuple[list[str], bool]:
    """``texts`` as a list of strings, and whether it was one string; TypeError for anything but text."""
    if isinstance(texts, str):
        return [texts], True
    if isinstance(texts, bytes | bytearray | memoryview):  # else iterated as ints
        raise TypeError("encode expects text (str), got bytes: decode them first, e.g. texts.decode('utf-8')")
    try:
        texts = list(texts)
    except TypeError:
        raise TypeError(f"encode expects a string or a sequence of strings, got {type(texts).__name__}") from None
    for t in texts:
        if not isinstance(t, str):
            hint = ": decode them first" if isinstance(t, bytes | bytearray) else ""
            raise TypeError(f"encode expects strings, got {type(t).__name__}{hint}")
    return texts, False


def check_device(device: Any) -> None:
    """None or the CPU (a string or a ``torch.device``); anything else cannot be honoured."""
    if device is None or str(device) == "cpu":
        return
    if isinstance(device, list | tuple):
        raise ValueError(f"device={device!r}: vocabert does not encode in several processes; pass device=None or 'cpu'")
    raise ValueError(f"device={device!r}: vocabert encodes on the CPU with numpy; pass device=None or 'cpu'")


def resolve_prompt(prompt: str | None, prompt_name: str | None, prompts: dict | None) -> str | None:
    """sentence-transformers' prompt resolution: ``prompt`` wins; ``prompt_name`` must name one of ``prompts``."""
    if prompt is not None:
        if not isinstance(prompt, str):
            raise TypeError(f"prompt must be a string, got {type(prompt).__name__}")
        if prompt_name is not None:
            logger.warning(
                "Provide either a `prompt`, a `prompt_name`, or neither, but not both. Ignoring `prompt_name`."
            )
        return prompt
    if prompt_name is not None:
        prompts = prompts or {}
        if prompt_name not in prompts:
            raise ValueError(
                f"Prompt name {prompt_name!r} not found in the configured prompts dictionary with keys "
                f"{list(prompts)!r} (a vocabert model has none unless its config.json lists 'prompts')"
            )
        return prompts[prompt_name]
    return None


def check_extra_arguments(kwargs: dict[str, Any]) -> None:
    """sentence-transformers' arguments that vocabert cannot honour, and names neither library knows."""
    if kwargs.get("pool") is not None:
        raise ValueError("pool: vocabert does not encode in several processes; call encode without a pool")
    for name in ("task", "processing_kwargs"):
        if kwargs.get(name) is not None:
            raise ValueError(
                f"{name}: vocabert's encode has no tasks or per-call tokenizer settings (texts are truncated "
                "at the teacher's maximum length unless long_texts='chunk')"
            )
    unknown = sorted(set(kwargs) - {"pool", "task", "processing_kwargs", *_IGNORED})
    if unknown:
        raise TypeError(f"encode() got unexpected keyword argument(s): {', '.join(map(repr, unknown))}")


def convert_output(embeddings: np.ndarray, convert_to_numpy: bool, convert_to_tensor: bool) -> Any:
    """numpy (the default), one torch tensor (``convert_to_tensor``) or a list of row tensors (neither)."""
    if not convert_to_tensor and convert_to_numpy:
        return embeddings
    try:
        import torch
    except ImportError:
        wanted = "convert_to_tensor=True" if convert_to_tensor else "convert_to_numpy=False"
        raise ImportError(
            f"{wanted} returns torch tensors and needs torch (pip install torch); vocabert itself encodes "
            "without it: leave convert_to_numpy=True for numpy arrays"
        ) from None
    tensor = torch.from_numpy(np.ascontiguousarray(embeddings))
    return tensor if convert_to_tensor else list(tensor)


# ----------------------------------------------------------------------------------------- long texts


def _encode_with_overflow(tokenizer, texts: list[str]):
    try:
        return tokenizer.encode_batch_fast(texts)
    except (TypeError, ValueError):  # lone surrogates, as in StudentModel.tokenize
        return tokenizer.encode_batch_fast([t.encode("utf-8", "replace").decode("utf-8") for t in texts])


def long_text_windows(model: StudentModel, texts: Sequence[str]) -> list[list[np.ndarray]]:
    """Token ids of every window of each text: the truncated text as :meth:`StudentModel.tokenize` gives it,
    then the rest in windows of at most ``max_length`` tokens, each wrapped in the teacher's special tokens
    (``[CLS]`` ... ``[SEP]``). A text within the maximum length has one window."""
    texts = list(texts)
    ids, offsets = model.tokenize(texts)
    windows = [[ids[offsets[i] : offsets[i + 1]]] for i in range(len(texts))]
    for i, extra in _overflow(model, texts, np.diff(offsets)).items():
        windows[i].extend(extra)
    return windows


def _max_length(model: StudentModel) -> int | None:
    truncation = model.tokenizer.truncation
    return int(truncation["max_length"]) if truncation else None


def _overflow(model: StudentModel, texts: list[str], lengths: np.ndarray) -> dict[int, list[np.ndarray]]:
    """``{text index: ids of its windows after the first}`` for the texts the tokenizer truncated."""
    max_length = _max_length(model)
    if max_length is None:
        return {}
    full = np.flatnonzero(lengths >= max_length)  # only these can have been cut
    if not len(full):
        return {}
    # The tokenizer splits a truncated text into windows itself (stride 0: no token repeats), and adds
    # the special tokens to each: its ``overflowing`` encodings are the windows after the first.
    encodings = _encode_with_overflow(model.tokenizer, [texts[i] for i in full])
    return {
        int(i): [np.asarray(o.ids, dtype=np.int64) for o in e.overflowing]
        for i, e in zip(full, encodings, strict=True)
        if e.overflowing
    }


def embed_long(model: StudentModel, texts: list[str], batch_size: int = 64) -> np.ndarray:
    """Embeddings of ``texts`` where a text longer than the maximum length is embedded window by window.

    Each window is embedded as a text of its own (with ``[CLS]`` and ``[SEP]``); a text's vector is the
    mean of its windows' vectors weighted by the tokens each window holds (special tokens not counted),
    L2-normalized. A text within the maximum length gets exactly the vector ``encode`` gives it.
    """
    out = model.encode_batch(texts)  # the first window of every text (the truncated text), as encode does
    lengths = np.diff(model.tokenize(texts)[1])
    extra = _overflow(model, texts, lengths)
    if not extra:
        return out
    out = out.copy()
    n_special = len(model.tokenizer.encode("").ids)
    owners = [i for i, windows in extra.items() for _ in windows]
    windows = [w for ws in extra.values() for w in ws]
    vectors = np.zeros((len(windows), out.shape[1]), dtype=np.float32)
    with model.one_blas_thread():  # as encode_batch
        for start in range(0, len(windows), batch_size):  # the windows of one long text can be many
            group = windows[start : start + batch_size]
            group_lengths = np.fromiter(map(len, group), dtype=np.int64, count=len(group))
            offsets = np.concatenate([[0], np.cumsum(group_lengths)])
            vectors[start : start + len(group)] = model.embed_ids(np.concatenate(group), offsets)
    weights = np.fromiter((len(w) - n_special for w in windows), dtype=np.float64, count=len(windows))
    rows = sorted(extra)
    pooled = out[rows].astype(np.float64) * (lengths[rows] - n_special)[:, None]
    position = {row: k for k, row in enumerate(rows)}
    np.add.at(pooled, [position[i] for i in owners], vectors * weights[:, None])
    pooled /= np.maximum(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12)
    out[rows] = pooled.astype(np.float32)
    return out
