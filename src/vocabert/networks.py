"""The student's two networks, in numpy: what maps a batch's matched entries to sentence vectors.

Both read their tensors by name (``student.*`` in a model folder's ``model.safetensors``, the prefix
removed) and share one interface (:class:`Network`): ``from_tensors``, ``tensors``, ``check``,
``forward`` and ``flops``. ``weighted_mean`` is a learned weighted mean and a linear map;
``context_pool`` weighs each match by its context, in several heads (see :class:`ContextPool`).
The torch twins that train them live in :mod:`vocabert.distill.training`.

Per-entry tables (one row per vocabulary entry, ``ENTRY_TABLES``) are kept as they are stored, memory-mapped
when read from a model folder: a batch gathers the rows of its entries and casts only those to float32
(:func:`entry_rows`). ``context_pool``'s attention keys and queries are held and stored in int8 with one
float32 scale per entry (``INT8``; ``entry_key_scale``, ``entry_query_scale``); folders written before
store them in float32, and load and encode as they always did.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from vocabert.artifacts import VocabertError
from vocabert.matching import Matches
from vocabert.store import half_to_float, quantize_rows

SCALE = "_scale"  # an int8 table's scales: one per entry, named after the table


@dataclass
class Batch:
    """A batch of tokenized texts after matching and lookup: what a network pools.

    ``vectors[column[i]]`` is the vector of match ``i``; ``entries`` are the batch's distinct entries.
    """

    matches: Matches
    entries: np.ndarray  # (u,) int64, sorted
    column: np.ndarray  # (matches,) int64, each match's row in entries / vectors
    vectors: np.ndarray  # (u, dim) float32
    lengths: np.ndarray  # (texts,) tokens per text, not counting those the tokenizer adds ([CLS], [SEP])

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


def entry_rows(table: np.ndarray, rows: np.ndarray, scale: np.ndarray | None = None) -> np.ndarray:
    """Rows ``rows`` of a per-entry table (float32, float16, or int8 with one ``scale`` per entry; memory-mapped
    or not), as float32: only the rows asked for are read and cast, never the whole table."""
    out = table[rows]
    if out.dtype == np.float16:
        return half_to_float(out)
    out = out.astype(np.float32, copy=False)
    if scale is not None:
        out *= scale[rows].reshape(-1, *(1,) * (out.ndim - 1))
    return out


def gelu(x: np.ndarray) -> np.ndarray:
    """GELU in its tanh form (as trained). In place on one buffer: ``x**3`` and the temporaries of the
    one-line form took 3x as long, which the per-match context features pay on every match."""
    y = x * x
    y *= x
    y *= 0.044715
    y += x
    y *= 0.7978845608
    np.tanh(y, out=y)
    y += 1
    y *= x
    y *= 0.5
    return y


# The activation of a teacher's last Dense layer, which the student applies to its output (the model
# config's ``output_activation``; ``identity`` for teachers without a Dense layer).
ACTIVATIONS = {
    "identity": lambda x: x,
    "tanh": np.tanh,
    "relu": lambda x: np.maximum(x, 0),
    "sigmoid": lambda x: 1 / (1 + np.exp(-x)),
}


class Network(ABC):
    """What both networks share: their tensors by name (``t``) and their linear maps by input.

    Every tensor is float32 but the per-entry tables (``ENTRY_TABLES``) and their scales, which stay as
    stored (float32, float16, or int8 with ``<name>_scale``), memory-mapped when read from a folder (see
    :func:`entry_rows`). ``INT8`` names the tables a network holds and stores in int8, one float32 scale per
    entry: a table given in float is quantized, unless it is given ``as_stored`` (what :meth:`from_tensors`
    reads from a folder: an older folder's float32 tables are used as they are, without a copy, and
    :meth:`tensors` quantizes them when the model is saved again).

    A linear map is stored (out, in), as torch's ``Linear`` holds it; each network applies its maps
    (``MAPS``) to per-text rows as ``x @ M.T``. ``x @ M.T`` reads ``M`` against its layout, so each map is
    held as a contiguous ``M.T`` (``by_input[name]``; the once-per-text maps run ~20% faster) and ``t[name]``
    is its transposed view: one copy in memory.
    """

    name: ClassVar[str]
    MAPS: ClassVar[tuple[str, ...]]
    ENTRY_TABLES: ClassVar[tuple[str, ...]] = ()
    INT8: ClassVar[tuple[str, ...]] = ()

    def __init__(self, tensors: dict[str, np.ndarray], as_stored: bool = False):
        stored = {*self.ENTRY_TABLES, *(k + SCALE for k in self.INT8)}  # kept as given: no whole-table copy
        self.t = {k: v if k in stored else np.asarray(v, dtype=np.float32) for k, v in tensors.items()}
        if not as_stored:
            for k in self.ENTRY_TABLES:
                if k in self.t and self.t[k].dtype != np.int8:
                    self.t.update(_entry_table(k, self.t[k], k in self.INT8))
        self.by_input = {}
        for k in self.MAPS:
            if k in self.t:
                self.by_input[k] = np.ascontiguousarray(self.t[k].T)
                self.t[k] = self.by_input[k].T

    @classmethod
    @abstractmethod
    def from_tensors(cls, tensors: dict[str, np.ndarray]) -> Network:
        """The network stored in ``tensors``; a KeyError names a tensor it needs that is missing."""

    def tensors(self) -> dict[str, np.ndarray]:
        """The tensors to store, by name (what :meth:`from_tensors` reads back): the ``INT8`` tables in int8
        with their scales (so an older folder loaded and saved again is written in today's layout)."""
        out = dict(self.t)
        for k in self.INT8:
            if k in out and out[k].dtype != np.int8:
                out.update(_entry_table(k, out[k], True))
        return out

    def entry_rows(self, name: str, rows: np.ndarray) -> np.ndarray:
        """Rows ``rows`` of the per-entry table ``name``, float32 (see :func:`entry_rows`)."""
        return entry_rows(self.t[name], rows, self.t.get(name + SCALE))

    @abstractmethod
    def shapes(self, n_entries: int, dim: int) -> dict[str, tuple[int, ...]]:
        """The shape each tensor must have for a store of ``n_entries`` vectors of ``dim``."""

    def check(self, n_entries: int, dim: int) -> None:
        """VocabertError unless every tensor fits a store of ``n_entries`` vectors of ``dim``."""
        for key in self.ENTRY_TABLES:
            if key not in self.t:
                continue
            dtype, scale = self.t[key].dtype, self.t.get(key + SCALE)
            if dtype not in (np.float16, np.float32, np.int8):
                raise VocabertError(
                    f"student weights ({self.name}): {key} must be float32, float16 or int8, not {dtype}"
                )
            if (dtype == np.int8) != (scale is not None):  # int8 rows mean nothing without their scales
                raise VocabertError(
                    f"student weights ({self.name}): an int8 {key} needs a float32 {key}{SCALE}, and only it has one"
                )
            if scale is not None and scale.dtype != np.float32:
                raise VocabertError(f"student weights ({self.name}): {key}{SCALE} must be float32, not {scale.dtype}")
        shapes = self.shapes(n_entries, dim)
        shapes |= {k + SCALE: (n_entries,) for k in self.ENTRY_TABLES if k + SCALE in self.t}
        for key, shape in shapes.items():
            found = self.t[key].shape
            if found != shape:
                needs = shape if len(found) == len(shape) else f"{len(shape)} axes"
                raise VocabertError(
                    f"student weights ({self.name}) do not fit the store: {key} has shape {found}, needs {needs}"
                )

    @abstractmethod
    def flops(self, matches: float, dim: int) -> float:
        """Multiply-adds per text, given matches per text."""

    @abstractmethod
    def forward(self, batch: Batch) -> np.ndarray:
        """(texts, dim), not normalized."""


def _entry_table(name: str, table: np.ndarray, int8: bool) -> dict[str, np.ndarray]:
    """A per-entry table given in float, as a network holds it: int8 with one scale per entry
    (``{name: q, name_scale: scales}``) where ``int8`` says so, else float16 or float32 as given (float32
    for other dtypes)."""
    if int8:
        return dict(zip((name, name + SCALE), quantize_rows(np.asarray(table, dtype=np.float32)), strict=True))
    return {name: table if table.dtype in (np.float16, np.float32) else np.asarray(table, dtype=np.float32)}


def mlp_keys(name: str) -> tuple[str, str, str, str]:
    """The tensors of a two-layer GELU MLP called ``name`` (``mlp``, ``special``): in, in bias, out, out bias."""
    return f"{name}_in", f"{name}_in_bias", f"{name}_out", f"{name}_out_bias"


def _size(tensor: np.ndarray, axis: int) -> int:
    """``tensor.shape[axis]``, or -1 where it has no such axis (a shape :meth:`Network.check` then refuses)."""
    return tensor.shape[axis] if tensor.ndim > axis else -1


class WeightedMean(Network):
    """Learned weighted mean of the matched entries' vectors, then a linear map to the teacher's space.

    ``out = W @ (sum_e w_e v_e / sum_e w_e) + b`` with one positive weight ``w_e`` per entry.
    """

    name = "weighted_mean"
    MAPS = ("weight",)

    def __init__(self, entry_weight: np.ndarray, weight: np.ndarray, bias: np.ndarray):
        super().__init__({"entry_weight": entry_weight, "weight": weight, "bias": bias})

    @classmethod
    def from_tensors(cls, tensors: dict[str, np.ndarray]) -> WeightedMean:
        return cls(tensors["entry_weight"], tensors["weight"], tensors["bias"])

    def shapes(self, n_entries: int, dim: int) -> dict[str, tuple[int, ...]]:
        return {"entry_weight": (n_entries,), "weight": (dim, dim), "bias": (dim,)}

    def flops(self, matches: float, dim: int) -> float:
        return matches * dim + dim * dim

    def forward(self, batch: Batch) -> np.ndarray:
        return pool(batch, self.t["entry_weight"][batch.matches.entry]) @ self.by_input["weight"] + self.t["bias"]


class ContextPool(Network):
    """Context-aware pooling: each match's weight depends on the text it is in, in ``H`` heads.

    - weight of match ``e`` in text ``t`` in head ``h``: ``w_e * exp(q_th . k_eh)``, where ``k_eh``
      (entry key) and ``p_eh`` (entry query) are rank-``r`` projections of the entry's vector, stored per
      entry and head, and ``q_th`` is the ``w``-weighted mean of the ``p_eh`` of the text: O(H r) per
      match, no d x d work;
    - each head pools the matched vectors with its weights into ``m_h``; ``m`` is the heads' pooled
      vectors side by side (``H d``). It goes through a linear map to the teacher's space, plus a term for
      the teacher's [CLS] and [SEP] vectors (whatever tokens its tokenizer adds), which depend on the whole
      text and weigh ``2 / (n + 2)`` in its mean over ``n`` tokens: ``(S m + s) / n``;
    - plus a residual MLP on ``m`` (``hidden`` units, GELU), where ``hidden > 0``;
    - plus a windowed attention over the matches, where ``window = K > 0``: the text's matches in order of
      position (then entry), each attending to the ``K`` before and after it with rank-``k`` scores
      ``a_i . b_j / sqrt(k) + o_(j-i)``, mixing their values ``c_j`` and adding its own ``g_i``
      (``a, b, c, g``: per-entry rank-``k`` projections, ``entry_window``); ``z_i = gelu(g_i + sum_j
      alpha_ij c_j)`` sees its neighbours, which no pooling weight can. The ``w``-weighted mean of the
      ``z_i`` goes to the teacher's space through ``V`` (d x k), once per text: O(K k) per match.

    - the [CLS]/[SEP] term gains a nonlinear part where ``special_hidden > 0``:
      ``(S m + s + S' gelu(A' m + a') + s') / n``;
    - plus context features, where ``context = R > 0``: each match's entry, read in the light of the whole
      text, ``f_i = gelu(x_e + C m + c)`` (``x_e``: a per-entry rank-``R`` projection, ``entry_context``;
      ``C m``: the text's pooled vectors, once per text). Their ``w``-weighted mean goes to the teacher's
      space through ``U`` (d x R), once per text: a nonlinear function of (entry, text) pairs at O(R) per
      match, which no map of the pooled vector can express.

    ``out = W m + b + (S m + s) / n + B gelu(A m + a) + c + V mean_w(z) + v + U mean_w(f) + u`` with ``n`` the
    text's tokens but those its tokenizer adds. Everything d x d happens once per text. ``entry_key`` and
    ``entry_query`` are (entries, H, r), int8 with one scale per entry (float32 in folders written before);
    models of one head written before heads existed store them as (entries, r). A batch reads the rows of its
    own entries only (:func:`entry_rows`).
    """

    name = "context_pool"
    KEYS = ("entry_weight", "entry_key", "entry_query", "weight", "bias", "special_weight", "special_bias")
    MLP_KEYS = mlp_keys("mlp")
    WINDOW_KEYS = ("entry_window", "window_offset_bias", "window_weight", "window_bias")
    CONTEXT_KEYS = ("entry_context", "context_in", "context_in_bias", "context_out", "context_out_bias")
    SPECIAL_KEYS = mlp_keys("special")
    MAPS = (
        "weight",
        "special_weight",
        "mlp_in",
        "mlp_out",
        "window_weight",
        "context_in",
        "context_out",
        "special_in",
        "special_out",
    )
    ENTRY_TABLES = ("entry_key", "entry_query", "entry_window", "entry_context")
    # int8 (per-entry scales) moved no held-out mean cosine of the default model by more than 1e-5.
    INT8 = ("entry_key", "entry_query", "entry_context")

    def __init__(self, tensors: dict[str, np.ndarray], as_stored: bool = False):
        super().__init__(tensors, as_stored)
        for name in ("entry_key", "entry_query"):
            if self.t[name].ndim == 2:
                self.t[name] = self.t[name][:, None, :]

    @classmethod
    def from_tensors(cls, tensors: dict[str, np.ndarray]) -> ContextPool:
        keys = (
            cls.KEYS
            + (cls.MLP_KEYS if "mlp_in" in tensors else ())
            + (cls.WINDOW_KEYS if "entry_window" in tensors else ())
            + (cls.CONTEXT_KEYS if "entry_context" in tensors else ())
            + (cls.SPECIAL_KEYS if "special_in" in tensors else ())
        )
        keys += tuple(k + SCALE for k in cls.INT8 if k + SCALE in tensors)
        return cls({k: tensors[k] for k in keys}, as_stored=True)

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
    def special_hidden(self) -> int:
        """Units of the nonlinear part of the [CLS]/[SEP] term (0: none)."""
        return self.t["special_in"].shape[0] if "special_in" in self.t else 0

    @property
    def window(self) -> int:
        """Neighbours on each side of a match in the windowed attention (0: none)."""
        return len(self.t["window_offset_bias"]) // 2 if "entry_window" in self.t else 0

    @property
    def window_rank(self) -> int:
        return self.t["entry_window"].shape[2] if "entry_window" in self.t else 0

    @property
    def context(self) -> int:
        """Rank of the context features (0: none)."""
        return self.t["entry_context"].shape[1] if "entry_context" in self.t else 0

    def shapes(self, n_entries: int, dim: int) -> dict[str, tuple[int, ...]]:
        # The sizes come from the tensors themselves: read them so that a tensor of too few axes gets a
        # shape that does not fit (and a message), not an IndexError.
        t = self.t
        heads, r = _size(t["entry_key"], 1), _size(t["entry_key"], 2)
        expected = {
            "entry_weight": (n_entries,),
            "entry_key": (n_entries, heads, r),
            "entry_query": (n_entries, heads, r),
            "weight": (dim, heads * dim),
            "bias": (dim,),
            "special_weight": (dim, heads * dim),
            "special_bias": (dim,),
        }
        for name in ("mlp", "special"):  # each MLP reads the heads' pooled vectors
            if f"{name}_in" in t:
                units = _size(t[f"{name}_in"], 0)
                shapes = ((units, heads * dim), (units,), (dim, units), (dim,))
                expected |= dict(zip(mlp_keys(name), shapes, strict=True))
        if "entry_window" in t:
            k, window = _size(t["entry_window"], 2), _size(t["window_offset_bias"], 0) // 2
            expected |= {
                "entry_window": (n_entries, 4, k),
                "window_offset_bias": (2 * window,),
                "window_weight": (dim, k),
                "window_bias": (dim,),
            }
        if "entry_context" in t:
            rank = _size(t["entry_context"], 1)
            expected |= {
                "entry_context": (n_entries, rank),
                "context_in": (rank, heads * dim),
                "context_in_bias": (rank,),
                "context_out": (dim, rank),
                "context_out_bias": (dim,),
            }
        return expected

    def flops(self, matches: float, dim: int) -> float:
        heads = self.heads
        return (
            3 * matches * heads * (self.rank + 1)
            + heads * matches * dim
            + 2 * heads * dim * dim
            + 2 * heads * dim * self.hidden
            + matches * (4 * self.window + 2) * self.window_rank
            + dim * self.window_rank
            + 2 * matches * self.context
            + (heads + 1) * dim * self.context
            + (heads + 1) * dim * self.special_hidden
        )

    def forward(self, batch: Batch) -> np.ndarray:
        t, matches, heads = self.t, batch.matches, self.heads
        w = base = t["entry_weight"][matches.entry]
        if self.rank:
            # q_th: the w-weighted mean of the entry queries of text t; then each match's score q_th . k_eh.
            weights = batch.weight_matrix(w)
            u = len(batch.entries)
            q = weights @ self.entry_rows("entry_query", batch.entries).reshape(u, heads * self.rank)
            q /= np.maximum(weights.sum(axis=1, keepdims=True), 1e-12)
            q = q.reshape(len(q), heads, self.rank).transpose(1, 0, 2)  # (H, texts, r)
            keys = self.entry_rows("entry_key", batch.entries).transpose(1, 2, 0)  # (H, r, u)
            score = np.matmul(q, keys)[:, matches.text, batch.column]  # (H, matches)
            # The score is bounded by the projections' scale; subtracting each text's max keeps exp finite anyway.
            w = np.stack([w * np.exp(s - per_text_max(s, matches.text)) for s in score])
        else:
            w = np.broadcast_to(w, (heads, len(w)))
        m = pool(batch, w)  # (texts, H * dim)
        lengths = batch.lengths
        body = np.maximum(np.asarray(lengths, dtype=np.float32), 1)[:, None]
        maps = self.by_input
        special = m @ maps["special_weight"] + t["special_bias"]
        if self.special_hidden:
            special += self._mlp("special", m)
        out = m @ maps["weight"] + t["bias"] + special / body
        if self.hidden:
            out += self._mlp("mlp", m)
        if self.window:
            z = per_text_sum(self._window_features(batch) * base[:, None], matches.text, matches.n_texts)
            z /= np.maximum(per_text_sum(base, matches.text, matches.n_texts), 1e-12)[:, None]
            out += z @ maps["window_weight"] + t["window_bias"]
        if self.context:
            text = matches.text
            f = self.entry_rows("entry_context", batch.entries)[batch.column]  # (matches, R)
            f += (m @ maps["context_in"] + t["context_in_bias"])[text]
            f = per_text_sum(gelu(f) * base[:, None], text, matches.n_texts)
            f /= np.maximum(per_text_sum(base, text, matches.n_texts), 1e-12)[:, None]
            out += f @ maps["context_out"] + t["context_out_bias"]
        return out

    def _mlp(self, name: str, m: np.ndarray) -> np.ndarray:
        """The two-layer GELU MLP ``name`` on the pooled vectors ``m``."""
        w_in, b_in, w_out, b_out = mlp_keys(name)
        return gelu(m @ self.by_input[w_in] + self.t[b_in]) @ self.by_input[w_out] + self.t[b_out]

    def _window_features(self, batch: Batch) -> np.ndarray:
        """(matches, k): ``z_i``, each match after attending to the ``K`` matches before and after it in its text."""
        matches, k = batch.matches, self.window_rank
        a, b, c, g = self.entry_rows("entry_window", batch.entries).transpose(1, 0, 2)[:, batch.column]
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


ARCHITECTURES: dict[str, type[Network]] = {WeightedMean.name: WeightedMean, ContextPool.name: ContextPool}
