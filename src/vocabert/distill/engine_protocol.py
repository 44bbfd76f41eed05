"""What a stage asks of an engine: the heavy loops of ``mine`` and ``embed``.

The stages own what is computed (their per-shard and per-batch functions), whether their output is
current, how it resumes and what it writes; an engine owns only where the loops run: in this process
(:class:`vocabert.distill.engine.LocalEngine`) or on Ray (:class:`vocabert.distill.ray_jobs.RayEngine`),
to the same files. The stages import this module and never an engine; the engines import the stages.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

import numpy as np

if TYPE_CHECKING:  # annotations only: the stages import this module, so it imports none of them
    from vocabert.distill.corpus import Corpus
    from vocabert.distill.embedding import PassJob
    from vocabert.distill.teacher_pass import TeacherPass
    from vocabert.distill.workspace import Workspace

# The entry sums of a share of the teacher pass: the entries found, the sums of their occurrence vectors,
# and their occurrences (embedding.batch_sums).
PartialSums = tuple[np.ndarray, np.ndarray, np.ndarray]


class Counting(Protocol):
    """Runs a per-shard counting function over the training split of every shard, and merges."""

    def total(self, name: str, fn: Callable[..., dict], kwargs: dict) -> dict[str, np.ndarray]:
        """The per-shard arrays, summed."""

    def frequent(
        self, name: str, fn: Callable[..., dict], kwargs: dict, min_count: int
    ) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """The per-shard counts merged (``mining.merge_counts``): keys (sorted) and counts of each counter."""

    def summary(self) -> str | None:
        """What the counting did, for the log once the vocabulary is written (None: nothing to add)."""


class Engine(Protocol):
    """Where ``mine`` counts and ``embed`` runs the teacher; a context manager that stops what it started."""

    def teacher_pass(self, ws: Workspace, job: PassJob) -> TeacherPass:
        """Run ``job`` (``embedding.PassJob``: the teacher pass into ``ws.teacher_dir``, or only the entry sums
        of a new vocabulary), checkpointed; resumes an interrupted one."""

    def isolated_vectors(
        self, ws: Workspace, patterns: np.ndarray, prefix: list[int], suffix: list[int], filler: int
    ) -> np.ndarray:
        """``embedding.isolated_vectors`` of ``patterns``: each alone through the teacher."""

    def counting(self, ws: Workspace, corpus: Corpus, key: dict, max_keys: int, force: bool) -> Counting:
        """The counting of a mining run with ``key`` (``force``: nothing of an earlier run reused)."""

    def close(self) -> None:
        """Stop what the engine started."""

    def __enter__(self) -> Engine: ...

    def __exit__(self, *exc: object) -> None: ...
