"""Dask client helpers: a LocalCluster sized to the machine by default, or any scheduler address."""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from typing import Any

from patchsieve.errors import ClusterError

logger = logging.getLogger(__name__)

__all__ = ["default_cluster_kwargs", "get_client"]


def default_cluster_kwargs() -> dict[str, Any]:
    """LocalCluster settings for this machine.

    Decode-and-reduce work releases the GIL (codecs, numpy, the numba kernels), so threads beat
    processes on small machines: up to 8 cores one in-process worker with a thread per core;
    above, one process per 4 cores, each with an equal share of 80 % of the memory.
    """
    import psutil

    ncores = os.cpu_count() or 1
    n_workers = max(1, ncores // 4)
    threads = max(1, ncores // n_workers)
    mem = int(psutil.virtual_memory().total * 0.8 / n_workers)
    return {
        "n_workers": n_workers,
        "threads_per_worker": threads,
        "memory_limit": mem,
        # up to 8 cores one in-process worker (threads) is as fast and needs no
        # `if __name__ == "__main__":` guard in user scripts; bigger machines get processes
        "processes": ncores > 8,
        "host": "127.0.0.1",
        "dashboard_address": ":0",
    }


@contextlib.contextmanager
def get_client(
    scheduler: str | None = None,
    client: Any = None,
    *,
    n_workers: int | None = None,
    threads_per_worker: int | None = None,
    processes: bool | None = None,
    timeout: float = 30.0,
) -> Iterator[Any]:
    """Yield a ``distributed.Client``: the given one, one connected to ``scheduler``, or a new LocalCluster.

    Parameters
    ----------
    scheduler : str, optional
        Address of a running scheduler, e.g. ``"tcp://10.0.0.5:8786"``.
    client : distributed.Client, optional
        An existing client; used as is and not closed.
    n_workers, threads_per_worker, processes : optional
        Overrides for the default LocalCluster (:func:`default_cluster_kwargs`).
    timeout : float
        Seconds to wait for the scheduler and for at least one worker.

    Raises
    ------
    ClusterError
        The scheduler is unreachable, or it has no workers within ``timeout``.
    """
    from distributed import Client, LocalCluster

    if client is not None:
        _require_workers(client, timeout, str(getattr(client, "scheduler", "client")))
        yield client
        return
    if scheduler is not None:
        try:
            c = Client(scheduler, timeout=timeout, set_as_default=False)
        except (OSError, TimeoutError) as err:
            raise ClusterError(
                f"scheduler {scheduler!r} is unreachable ({type(err).__name__}). Fix: check the "
                "address (tcp://HOST:PORT) and that `dask scheduler` is running, or omit "
                "--scheduler to use a local cluster."
            ) from err
        try:
            _require_workers(c, timeout, scheduler)
            yield c
        finally:
            c.close()
        return
    kwargs = default_cluster_kwargs()
    for key, value in (("n_workers", n_workers), ("threads_per_worker", threads_per_worker),
                       ("processes", processes)):
        if value is not None:
            kwargs[key] = value
    if kwargs["n_workers"] < 1:
        raise ClusterError(f"n_workers must be >= 1; got {kwargs['n_workers']}. Fix: pass 1 or more.")
    if not kwargs["processes"]:  # threads in this process: in-process comms, no host binding
        kwargs.pop("memory_limit", None)
        kwargs.pop("host", None)
    with LocalCluster(**kwargs) as cluster, Client(cluster, set_as_default=False) as c:
        logger.info("local Dask cluster: %d worker(s) x %d thread(s); dashboard %s",
                    kwargs["n_workers"], kwargs["threads_per_worker"], c.dashboard_link)
        yield c


def _require_workers(client: Any, timeout: float, where: str) -> None:
    try:
        client.wait_for_workers(1, timeout=timeout)
    except (TimeoutError, OSError) as err:
        raise ClusterError(
            f"the Dask scheduler at {where} has no workers (waited {timeout:.0f} s). Fix: start "
            "workers with `dask worker <address>` or use a local cluster."
        ) from err
