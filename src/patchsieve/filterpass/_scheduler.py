"""The block scheduler of the filter pass: groups of blocks computed on a Dask client in waves
of source chunk rows, results handed back block by block (private to the filter pass)."""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)


@dataclass
class _Job:
    label: str
    collection: Any
    todo: list[tuple[int, ...]]
    on_result: Callable[[tuple[int, ...], Any], None]
    finish: Callable[[], None]


def _group_shape(numblocks: Sequence[int], target: int) -> tuple[int, ...]:
    """Blocks per result group (last axes first), about ``target`` blocks per group."""
    g = [1] * len(numblocks)
    for a in reversed(range(len(numblocks))):
        need = math.ceil(target / math.prod(g))
        if need <= 1:
            break
        g[a] = min(int(numblocks[a]), need)
    return tuple(g)


#: bytes of source chunks a wave of the filter pass may read (at least one chunk plane)
WAVE_BYTES = 512 * 2**20


def _run_jobs(client: Any, jobs: list[_Job], progress: Any,
              writing: Callable[[], AbstractContextManager[None]], source: Any = None) -> None:
    """Compute the groups of missing blocks of all jobs; hand results back by block.

    Each block's result is tiny; returning thousands of them one by one costs a scheduler round
    trip each, so neighbouring blocks are returned in groups of up to 16 (a group with any
    missing block is recomputed whole: resume granularity stays small).

    With ``source`` (the volume's dask array), the groups are submitted in waves of consecutive
    chunk planes along the source's first blocked axis, each reading about
    :data:`WAVE_BYTES`: the region blocks' one-patch halo reaches into the next plane, and a
    scheduler handed the whole graph at once reads planes far ahead of the kernels (peak
    memory then grows with the volume). The chunks a wave shares with the next one are kept
    (as futures) until the next wave is done, so every chunk is still read once.
    """
    from distributed import as_completed

    jobs = [j for j in jobs if j.todo]
    if not jobs:
        return
    nthreads = max(1, sum(client.nthreads().values()) if hasattr(client, "nthreads") else 1)
    todo_delayed: list[Any] = []
    owner: dict[Any, tuple[_Job, tuple[int, ...], tuple[int, ...]]] = {}
    tasks = {}
    # no graph optimisation: dask's array optimisation inlines the chunk reads into their
    # dependents (per collection, even with dask.optimize(*colls)), so a chunk shared by the
    # region and cell jobs would be read twice; the scheduler runs only what the keys need
    for job in jobs:
        numblocks = job.collection.numblocks
        total = math.prod(numblocks)
        g = _group_shape(numblocks, max(1, min(16, total // (8 * nthreads))))
        coll = job.collection.rechunk(g) if math.prod(g) > 1 else job.collection
        groups = coll.to_delayed(optimize_graph=False)
        todo_groups = sorted({tuple(i // k for i, k in zip(idx, g)) for idx in job.todo})
        for gidx in todo_groups:
            d = groups[gidx]
            todo_delayed.append(d)
            owner[d.key] = (job, gidx, g)
        if progress is not None:
            tasks[job.label] = progress.add_task(job.label, total=len(todo_groups))
    waves = _waves(todo_delayed, source)
    held: dict[Any, Any] = {}  # carried chunk key -> (future, last wave that uses it)
    with client.as_current():
        for i, (wave, sub, carry) in enumerate(waves):
            if sub is None:
                futures = client.compute(wave, optimize_graph=False)
            else:
                # the wave's own culled graph: the full one would be shipped with every wave
                keys = [d.key for d in wave] + [k for k, _ in carry]
                futs = client.get(sub, keys, sync=False)
                futures = futs[: len(wave)]
                for (k, last), f in zip(carry, futs[len(wave):]):
                    held[k] = (f, last)
            for fut, result in as_completed(futures, with_results=True):
                job, gidx, g = owner[fut.key]
                with writing():
                    for off in np.ndindex(*result.shape):
                        idx = tuple(a * k + o for a, k, o in zip(gidx, g, off))
                        job.on_result(idx, result[off])
                fut.release()
                if progress is not None:
                    progress.advance(tasks[job.label])
            for k in [k for k, (_, last) in held.items() if last <= i]:
                held.pop(k)[0].release()
    for f, _ in held.values():
        f.release()
    with writing():
        for job in jobs:
            job.finish()


class _Deps:
    """Dependencies of a materialised task graph: the chunk keys of array ``name`` each key
    needs, and the sub-graph a set of keys needs."""

    def __init__(self, graph: Mapping[Any, Any], name: str):
        self.graph, self.name = graph, name
        self._deps: dict[Any, list[Any]] = {}
        self._loads: dict[Any, frozenset[Any]] = {}

    def deps(self, key: Any) -> list[Any]:
        from dask.core import get_dependencies

        d = self._deps.get(key)
        if d is None:
            d = self._deps[key] = [k for k in get_dependencies(self.graph, key)
                                   if k in self.graph]
        return d

    def loads(self, key: Any) -> frozenset[Any]:
        memo = self._loads
        stack = [key]  # iterative DFS (graphs are deep enough to hit the recursion limit)
        while stack:
            k = stack[-1]
            if k in memo:
                stack.pop()
            elif isinstance(k, tuple) and k and k[0] == self.name:
                memo[k] = frozenset([k])
                stack.pop()
            else:
                todo = [dk for dk in self.deps(k) if dk not in memo]
                if todo:
                    stack.extend(todo)
                    continue
                deps = self.deps(k)
                memo[k] = frozenset().union(*(memo[dk] for dk in deps)) if deps else frozenset()
                stack.pop()
        return memo[key]

    def subgraph(self, keys: Sequence[Any]) -> dict[Any, Any]:
        sub: dict[Any, Any] = {}
        stack = list(keys)
        while stack:
            k = stack.pop()
            if k not in sub:
                sub[k] = self.graph[k]
                stack.extend(self.deps(k))
        return sub


def _waves(delayed: list[Any], source: Any
           ) -> list[tuple[list[Any], dict[Any, Any] | None, list[tuple[Any, int]]]]:
    """Split ``delayed`` into waves of consecutive source chunk rows (see :func:`_run_jobs`).

    Groups are ordered by the chunk (plane, row) of the first two blocked axes of ``source``
    they start in and cut into waves reading about :data:`WAVE_BYTES` each. Each wave comes
    with its culled task graph and the source chunk keys it reads first that a later wave
    reads too, with the index of the last wave that needs them.
    """
    if source is None or not delayed:
        return [(delayed, None, [])]
    axes = [a for a, n in enumerate(source.numblocks) if n > 1][:2]
    if not axes:
        return [(delayed, None, [])]
    # the groups of one job share their collection's graph: merge each distinct graph once
    graphs = {id(g): g for g in (d.__dask_graph__() for d in delayed)}
    graph: dict[Any, Any] = {}
    for g in graphs.values():
        graph.update(g)
    dep = _Deps(graph, source.name)
    per = [(d, dep.loads(d.key)) for d in delayed]
    row = {d.key: min((tuple(k[1 + a] for a in axes) for k in ls), default=(0,) * len(axes))
           for d, ls in per}
    chunk_bytes = math.prod(c[0] for c in source.chunks) * source.dtype.itemsize
    per.sort(key=lambda t: row[t[0].key])
    waves: list[tuple[list[Any], set[Any]]] = []
    cur: list[Any] = []
    cur_loads: set[Any] = set()
    last_row = None
    for d, ls in per:
        r = row[d.key]
        if cur and r != last_row and len(cur_loads) * chunk_bytes >= WAVE_BYTES:
            waves.append((cur, cur_loads))
            cur, cur_loads = [], set()
        cur.append(d)
        cur_loads |= ls
        last_row = r
    if cur:
        waves.append((cur, cur_loads))
    first: dict[Any, int] = {}
    last: dict[Any, int] = {}
    for i, (_, ls) in enumerate(waves):
        for k in ls:
            first.setdefault(k, i)
            last[k] = i
    out = []
    for i, (ds, ls) in enumerate(waves):
        carry = [(k, last[k]) for k in sorted(ls) if first[k] == i and last[k] > i]
        # chunks carried from earlier waves are in the sub-graph too: the scheduler finds
        # them in memory under the same key and does not read them again
        out.append((ds, dep.subgraph([d.key for d in ds]), carry))
    logger.debug("filter pass in %d wave(s) of source chunk rows", len(out))
    return out


def _stack_object_blocks(blocks: list[Any]) -> Any:
    import dask.array as da

    flat = [b.reshape((1,)) for b in blocks]
    return da.concatenate(flat, axis=0)


class _NullBar:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: Any) -> None:
        return None


def _progress_bar(enabled: bool) -> Any:
    if not enabled:
        return _NullBar()
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

    return Progress("[progress.description]{task.description}", BarColumn(),
                    MofNCompleteColumn(), TimeRemainingColumn(), transient=False)
