"""Where the heavy work of a stage runs: in this process (``--engine local``, the default) or on Ray
(``--engine ray``): the teacher pass and the counting part of mining.

Ray is an optional extra (``pip install 'vocabert[ray]'``): nothing imports it unless ``--engine
ray`` is asked for. With ``--ray-address ADDR`` (or ``RAY_ADDRESS``, Ray's own convention) the
command joins that cluster; otherwise it starts a local Ray on this machine's cores and stops it
when it is done. Either way the results are the same files as the local path's: the Ray jobs run
the same per-batch and per-shard functions (see :mod:`vocabert.distill.ray_jobs`).
"""

from __future__ import annotations

import logging
import os
import resource
import time
from dataclasses import dataclass
from typing import Any

from vocabert.artifacts import VocabertError

ENGINES = ("local", "ray")


@dataclass(frozen=True)
class EngineSettings:
    """Where ``mine`` and ``embed`` run (every default lives here); not part of any artifact's key:
    every engine writes the same artifacts."""

    engine: str = "local"  # local: this process; ray: Ray tasks and actors
    ray_address: str | None = None  # an existing cluster (default: $RAY_ADDRESS, else a local Ray started here)
    ray_workers: int | None = None  # teacher workers (actors); default: as many as the cluster's CPUs (or GPUs) hold
    ray_worker_cpus: float = 1.0  # CPUs of one teacher worker (its torch threads)
    ray_worker_gpus: float = 0.0  # GPUs of one teacher worker; above 0 the teacher runs on CUDA


def require_ray() -> Any:
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError:
        raise VocabertError(
            "--engine ray needs Ray, which is not installed: pip install 'vocabert[ray]' (or 'ray[data]>=2.9')"
        ) from None
    return ray


def peak_rss_mib() -> float:
    """This process's peak resident memory so far, in MiB."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class Engine:
    """The engine of one command. On Ray it connects (or starts a local Ray) on first use, and
    :meth:`close` (or leaving the ``with`` block) stops what it started."""

    def __init__(self, settings: EngineSettings | None = None):
        self.settings = settings or EngineSettings()
        if self.settings.engine not in ENGINES:
            raise VocabertError(f"unknown engine {self.settings.engine!r}: use {' or '.join(ENGINES)}")
        if self.is_ray:
            require_ray()  # before any work: a missing extra is a one-line error, not a failure halfway
            if self.settings.ray_worker_cpus <= 0 or self.settings.ray_worker_gpus < 0:
                raise VocabertError("--ray-worker-cpus must be above 0 and --ray-worker-gpus at least 0")
        self._ray = None
        self._started = False
        self.start_seconds = 0.0  # starting or joining Ray

    @property
    def is_ray(self) -> bool:
        return self.settings.engine == "ray"

    def ray(self) -> Any:
        """The ``ray`` module, connected."""
        if self._ray is not None:
            return self._ray
        ray = require_ray()
        started = time.perf_counter()
        if not ray.is_initialized():
            from vocabert.distill.workspace import log
            from vocabert.model import available_cores

            quiet = {"log_to_driver": False, "logging_level": logging.WARNING}
            address = self.settings.ray_address or os.environ.get("RAY_ADDRESS")
            if address:
                log(f"ray: joining the cluster at {address}")
                try:
                    ray.init(address=address, **quiet)
                except ConnectionError as e:
                    raise VocabertError(
                        f"cannot join the Ray cluster at {address} ({e}); is it running, and does it want a token "
                        "(Ray's RAY_AUTH_MODE=token)?"
                    ) from None
            else:
                cores = available_cores()
                log(f"ray: starting a local Ray with {cores} CPUs")
                ray.init(num_cpus=cores, include_dashboard=False, **quiet)
            self._started = True
        context = ray.data.DataContext.get_current()
        context.enable_progress_bars = False  # the stages draw their own
        logging.getLogger("ray.data").setLevel(logging.WARNING)
        logging.getLogger("ray.data._internal.progress").setLevel(logging.ERROR)  # "progress bars disabled"
        self._ray = ray
        self.start_seconds = time.perf_counter() - started
        return ray

    def workers(self) -> int:
        """Teacher workers: as asked, else as many as the cluster's CPUs (or GPUs) hold."""
        if self.settings.ray_workers:
            return self.settings.ray_workers
        resources = self.ray().cluster_resources()
        if self.settings.ray_worker_gpus > 0:
            count = resources.get("GPU", 0) // self.settings.ray_worker_gpus
            if count < 1:
                raise VocabertError("--ray-worker-gpus asks for GPUs, but the Ray cluster has none")
        else:
            count = resources.get("CPU", 1) // self.settings.ray_worker_cpus
        return max(1, int(count))

    def close(self) -> None:
        if self._started and self._ray is not None:
            self._ray.shutdown()
        self._ray, self._started = None, False

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
