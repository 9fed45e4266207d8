"""The block scheduler of the filter pass: groups of blocks submitted lazily to a Dask client with
a bounded number of tasks in flight, results handed back group by group (private to the filter
pass).

Nothing proportional to the volume is built: the groups come from a generator (the plan's tile
walk), at most ``window`` tasks (:data:`TASKS_PER_THREAD` per worker thread) are submitted at a
time and each is released as soon as its results are handed back, so the client and the scheduler
hold a few dozen small tasks whatever the chunk count. On a cluster of several workers the halo'd
passes walk one stream of tiles per worker and ask the scheduler to run a stream's tasks on its
worker (``allow_other_workers``: a lost worker's tasks run elsewhere), so each worker's cache
of decoded chunks sees the neighbours its blocks need.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

logger = logging.getLogger(__name__)

#: tasks in flight per worker thread
TASKS_PER_THREAD = 4
#: seconds between refreshes of the worker list (streams follow workers that come and go)
WORKERS_REFRESH_S = 5.0


@dataclass
class StreamStats:
    """What a streaming run did (logged, and kept in the side-car's ``timing`` attrs)."""

    groups: int = 0
    blocks: int = 0
    window: int = 0
    max_in_flight: int = 0
    workers: int = 0
    threads: int = 0
    streams: int = 1
    seconds: float = 0.0
    in_flight_samples: list[int] = field(default_factory=list)

    def as_attrs(self) -> dict[str, Any]:
        return {"groups": self.groups, "blocks": self.blocks, "window": self.window,
                "max_tasks_in_flight": self.max_in_flight, "workers": self.workers,
                "threads": self.threads, "streams": self.streams,
                "seconds": round(self.seconds, 3),
                "blocks_per_s": round(self.blocks / self.seconds, 2) if self.seconds else None}


def cluster_threads(client: Any) -> tuple[list[str], dict[str, int]]:
    """Worker addresses (sorted) and their threads."""
    try:
        nthreads = dict(client.nthreads())
    except Exception:  # noqa: BLE001 - a client that cannot tell: one thread
        nthreads = {}
    return sorted(nthreads), {k: int(v) for k, v in nthreads.items()}


def run_stream(client: Any, streams: Sequence[Iterator[tuple[int, list[Any]]]],
               submit: Callable[[list[Any], str | None], Any],
               handle: Callable[[list[Any], list[Any]], None], *,
               affinity: bool = False, on_done: Callable[[int], None] | None = None
               ) -> StreamStats:
    """Submit the groups of ``streams`` with a bounded window; hand each result to ``handle``.

    Parameters
    ----------
    client : distributed.Client
    streams : sequence of iterators of ``(unit, group)``
        One per worker when ``affinity`` (stream ``k`` runs on the ``k``-th worker), else one.
    submit : callable ``(group, worker or None) -> Future``
    handle : callable ``(group, results)``
        Called in the client's thread, in completion order.
    on_done : callable ``(n_blocks)``, optional
        Called after each handled group.

    Raises
    ------
    BaseException
        A task's error (or KeyboardInterrupt) after the tasks in flight are cancelled; the
        groups handled before stay handled.
    """
    from distributed import as_completed

    stats = StreamStats(streams=len(streams))
    workers, nthreads = cluster_threads(client)
    stats.workers, stats.threads = len(workers), max(1, sum(nthreads.values()))
    stats.window = TASKS_PER_THREAD * stats.threads
    per_stream = max(1, stats.window // max(1, len(streams)))
    refreshed = time.monotonic()
    ac = as_completed(loop=client.loop)
    owner: dict[Any, tuple[int, list[Any]]] = {}
    futures: dict[Any, Any] = {}
    in_flight = [0] * len(streams)
    live = list(range(len(streams)))
    t0 = time.monotonic()

    def worker_of(k: int) -> str | None:
        return workers[k % len(workers)] if affinity and workers else None

    def top_up() -> None:
        while live and sum(in_flight) < stats.window:
            k = min(live, key=lambda i: in_flight[i])
            if in_flight[k] >= per_stream and len(live) > 1:
                break
            nxt = next(streams[k], None)
            if nxt is None:
                live.remove(k)
                continue
            group = nxt[1]
            fut = submit(group, worker_of(k))
            owner[fut.key] = (k, group)
            futures[fut.key] = fut
            in_flight[k] += 1
            ac.add(fut)
        n = sum(in_flight)
        stats.max_in_flight = max(stats.max_in_flight, n)

    try:
        top_up()
        for fut in ac:
            k, group = owner.pop(fut.key)
            futures.pop(fut.key, None)
            in_flight[k] -= 1
            results = fut.result()
            fut.release()
            handle(group, results)
            stats.groups += 1
            stats.blocks += len(group)
            if on_done is not None:
                on_done(len(group))
            if affinity and time.monotonic() - refreshed > WORKERS_REFRESH_S:
                workers = cluster_threads(client)[0] or workers
                refreshed = time.monotonic()
            if stats.groups % 64 == 0:
                stats.in_flight_samples.append(sum(in_flight))
            top_up()
    except BaseException:
        pending = list(futures.values())
        if pending:
            try:
                client.cancel(pending)
            except Exception:  # noqa: BLE001 - the cluster may be gone
                logger.debug("could not cancel %d tasks", len(pending))
        raise
    finally:
        stats.seconds = time.monotonic() - t0
    logger.info("filter pass: %d blocks in %d tasks, %.1f blocks/s, at most %d tasks in flight "
                "(window %d = %d x %d worker threads, %d worker(s), %d stream(s))",
                stats.blocks, stats.groups, stats.blocks / stats.seconds if stats.seconds else 0.0,
                stats.max_in_flight, stats.window, TASKS_PER_THREAD, stats.threads,
                stats.workers, stats.streams)
    return stats


class _NullBar:
    def start(self, total: int) -> None:
        return None

    def advance(self, n: int) -> None:
        return None

    def __enter__(self) -> _NullBar:
        return self

    def __exit__(self, *exc: Any) -> None:
        return None


class _RichBar:
    """Blocks done / to do, blocks per second and the time left (rich, on stderr)."""

    def __init__(self) -> None:
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            ProgressColumn,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )
        from rich.text import Text

        class _Rate(ProgressColumn):  # type: ignore[misc]
            def render(self, task: Any) -> Text:
                speed = task.finished_speed or task.speed
                return Text("-- blocks/s" if speed is None else f"{speed:,.1f} blocks/s")

        self.progress = Progress(TextColumn("[progress.description]{task.description}"),
                                 BarColumn(), MofNCompleteColumn(), _Rate(), TimeElapsedColumn(),
                                 TextColumn("ETA"), TimeRemainingColumn(),
                                 console=Console(stderr=True), transient=False)
        self.task: Any = None

    def start(self, total: int) -> None:
        self.task = self.progress.add_task("filter pass", total=total)

    def advance(self, n: int) -> None:
        if self.task is not None:
            self.progress.advance(self.task, n)

    def __enter__(self) -> _RichBar:
        self.progress.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.progress.__exit__(*exc)


def progress_bar(enabled: bool) -> Any:
    """A progress display of blocks (rich) or a no-op."""
    return _RichBar() if enabled else _NullBar()
