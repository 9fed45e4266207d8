"""The filter pass itself: :func:`compute` and :func:`ensure_sidecar` (private module)."""

from __future__ import annotations

import contextlib
import logging
import os
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np

from patchsieve.errors import ConfigError, SidecarIncompleteError
from patchsieve.grid import VolumeGeometry
from patchsieve.sidecar import (
    Sidecar,
    SidecarWriter,
    canonical_hash,
    check_not_inside,
    default_output,
    open_sidecar,
    require_writable,
    source_fingerprint,
)

logger = logging.getLogger(__name__)


def compute(
    source: Any,
    filters: Any,
    patch_size: Any,
    output: str | os.PathLike[str] | None = None,
    *,
    client: Any = None,
    scheduler: str | None = None,
    overwrite: bool = False,
    storage_options: Mapping[str, Any] | None = None,
    output_storage_options: Mapping[str, Any] | None = None,
    axes: str | None = None,
    level: int = 0,
    border: str = "careamics",
    labels: bool = False,
    seed: int = 0,
    progress: bool = False,
    cluster: Mapping[str, Any] | None = None,
    on_progress: Callable[[int, int], None] | None = None,
) -> Sidecar:
    """Run the filter pass and write (or complete) a side-car.

    Parameters
    ----------
    source : str, path, numpy/dask array or xarray.DataArray
        The volume (see :func:`patchsieve.open_volume`).
    filters : config, sequence of configs, or mapping {name: config}
        ``*PatchFilterConfig`` objects (or dicts). Names default to the config's ``name``.
    patch_size : sequence or mapping
        Patch size per spatial dim (CAREamics order, e.g. ``(64, 64)`` or ``(16, 64, 64)``).
    output : str or path, optional
        Side-car location; default see :func:`patchsieve.sidecar.default_output`.
    client, scheduler : optional
        An existing ``distributed.Client`` or a scheduler address; default a LocalCluster.
    overwrite : bool
        Replace a side-car made for another source or other parameters.
    storage_options, output_storage_options : mapping, optional
        fsspec options for the source and for the side-car (default: the source's). Never stored.
    axes, level : optional
        Passed to :func:`patchsieve.open_volume`.
    border : {"careamics", "valid"}
        "careamics" zero-pads edge regions exactly as CAREamics does; "valid" uses in-image pixels.
    labels : bool
        Also write a full-resolution OME-Zarr label image per filter (large).
    seed : int
        Seed of the chunk sample for percentiles.
    progress : bool
        Show a progress bar (rich, on stderr): blocks done, blocks per second, time left.
    cluster : mapping, optional
        Overrides for the default LocalCluster (``n_workers``, ``threads_per_worker``,
        ``processes``) and ``timeout`` (seconds to reach a scheduler and find a worker).
    on_progress : callable ``(done, total)``, optional
        Called after each group of blocks with the blocks done and to do in this run.

    Notes
    -----
    The pass streams: a *block* is one source chunk (its regions and cells, read with the
    one-patch halo), blocks are walked lazily in tiles and submitted with at most a few tasks
    per worker thread in flight, and each block's results and marker are written as they come
    back. Start-up and memory do not grow with the volume (``docs/scaling.md``). Interrupted
    (Ctrl-C, SIGKILL, a storage error), the same call resumes: blocks with a marker are not
    computed again.

    Returns
    -------
    Sidecar
        The completed side-car.

    Examples
    --------
    >>> import numpy as np, patchsieve as ps, tempfile, os
    >>> img = np.random.default_rng(0).poisson(5.0, (2, 64, 64)).astype("uint16")
    >>> out = os.path.join(tempfile.mkdtemp(), "img.patchsieve.zarr")
    >>> sc = ps.compute(img, ps.MeanStdPatchFilterConfig(mean_threshold=5.0), (16, 16), out,
    ...                 axes="SYX", cluster={"processes": False, "n_workers": 1})
    >>> sc.filter_out("mean_std").shape
    (2, 4, 4)
    """
    from patchsieve.cluster import get_client
    from patchsieve.regions import required_stats
    from patchsieve.volume import open_volume

    configs = _configs_by_name(filters)
    volume = source if _is_dataarray(source) else open_volume(
        source, axes=axes, level=level, storage_options=storage_options)
    ref = next((int(c.ref_channel) for c in configs.values() if c.name != "mask"), 0)
    geom = VolumeGeometry.from_volume(volume, patch_size, ref_channel=ref, border=border)
    stats = sorted({s for c in configs.values() for s in required_stats(c, geom.ndim)})
    src_url = str(volume.attrs.get("source", "<numpy>"))
    src_fp = source_fingerprint(volume, storage_options)
    out_opts = output_storage_options if output_storage_options is not None else storage_options
    if output is None:
        output = default_output(src_url, src_fp, storage_options=out_opts,
                                level=int(volume.attrs.get("level", level) or 0))
    output = str(output)
    check_not_inside(output, src_url)
    require_writable(output, out_opts)
    params = {"geometry": {"patch_size": geom.patch_by_dim, "ref_channel": geom.ref_channel},
              "border": border, "level": int(volume.attrs.get("level", level)),
              "array_path": volume.attrs.get("array_path", "")}
    fingerprint = {"source": src_fp, "params": canonical_hash(params)}
    opts = {k: v for k, v in (cluster or {}).items() if v is not None}
    # connect first: an unreachable scheduler leaves no trace in the output
    with get_client(scheduler, client, **opts) as cl, SidecarWriter(output, out_opts) as writer:
        with writer.writing():
            meta = writer.begin(volume, geom, configs, stats, fingerprint, seed=seed,
                                overwrite=overwrite)
        _fill(writer, cl, volume, geom, configs, meta, border, seed, storage_options, progress,
              axes=axes if not _is_dataarray(source) else None, on_progress=on_progress)
        with writer.writing():
            writer.finalize(volume, configs, labels)
    return open_sidecar(output, storage_options=out_opts)


def _is_dataarray(x: Any) -> bool:
    try:
        import xarray as xr
    except ImportError:  # pragma: no cover
        return False
    return isinstance(x, xr.DataArray)


def _configs_by_name(filters: Any) -> dict[str, Any]:
    """``{name: config}`` from a config, a sequence of configs or a mapping of them."""
    from pydantic import TypeAdapter

    from patchsieve.config import PatchFilterConfig

    if filters is None:
        raise ConfigError("filters is empty. Fix: pass at least one filter config, e.g. "
                          "ShannonPatchFilterConfig(threshold=7.5).")
    adapter: TypeAdapter[Any] = TypeAdapter(PatchFilterConfig)
    if isinstance(filters, Mapping) and "name" not in filters:
        items = list(filters.items())
    else:
        seq = [filters] if not isinstance(filters, Sequence) or isinstance(filters, Mapping) \
            else list(filters)
        items = [(c.name, c) for c in (adapter.validate_python(cfg) for cfg in seq)]
    out: dict[str, Any] = {}
    for name, cfg in items:
        if name in out:
            raise ConfigError(
                f"two filters share the name {name!r}. Fix: pass a mapping {{name: config}} with "
                "distinct names, e.g. {'shannon-7.5': ..., 'shannon-8': ...}.")
        out[name] = adapter.validate_python(cfg)
    if not out:
        raise ConfigError("filters is empty. Fix: pass at least one filter config.")
    refs = {int(c.ref_channel) for c in out.values() if c.name != "mask"}
    if len(refs) > 1:
        raise ConfigError(
            f"filters use different ref_channel values {sorted(refs)}; one side-car has one "
            "reference channel. Fix: use the same ref_channel, or compute two side-cars.")
    return out


def _fill(writer: SidecarWriter, client: Any, volume: Any, geom: VolumeGeometry,
          configs: Mapping[str, Any], meta: dict[str, Any], border: str, seed: int,
          storage_options: Mapping[str, Any] | None, progress: bool,
          axes: str | None = None,
          on_progress: Callable[[int, int], None] | None = None) -> None:
    """Compute the missing blocks (region statistics and cell partials, one source chunk each)
    and the percentile sample, then derive the cell statistics (mean, std, mask coverage).

    Blocks are walked lazily in tiles and submitted with a bounded number of tasks in flight
    (:mod:`patchsieve.filterpass._scheduler`); each result is written with its marker by a
    :class:`patchsieve.sidecar.BlockLog`. An interrupted run (Ctrl-C, a task's error) keeps
    every block handed back before it.
    """
    # the scheduler and the kernels need dask and numba: imported here, not at import
    from patchsieve.filterpass._jobs import (
        CellsJob,
        StatsJob,
        derive_cell_stats,
        percentiles,
        record_fill,
    )
    from patchsieve.filterpass._plan import CELL_SETS, BlockPlan, _cell_plan
    from patchsieve.filterpass._scheduler import progress_bar, run_stream
    from patchsieve.filterpass._source import Source

    stats = list(meta["stats"])
    status = dict(meta.get("status", {}))
    region_todo, derived_todo, cell_sets = _cell_plan(stats, volume.dtype, status)
    need_pct = status.get("percentiles") != "complete"
    if not region_todo and not derived_todo and not cell_sets and not need_pct:
        return
    plan = BlockPlan(volume, geom, region_todo, cell_sets, seed)
    src = Source(client, volume, storage_options, axes)
    with writer.writing():
        jobs: list[Any] = []
        if region_todo:
            jobs.append(StatsJob(writer, plan, geom, region_todo))
        if cell_sets:
            jobs.append(CellsJob(writer, plan, geom))
    run = _Run(client, plan, src, jobs, geom, border, configs, volume, storage_options, axes,
               seed if need_pct else None)
    total = int(np.count_nonzero(run.pending))
    done = [0]
    with progress_bar(progress and total > 0) as bar:
        bar.start(total)

        def tick(n: int) -> None:
            done[0] += n
            bar.advance(n)
            if on_progress is not None:
                on_progress(done[0], total)

        try:
            pass_stats = run_stream(client, run.streams(), run.submit, run.handle,
                                    affinity=run.affinity, on_done=tick)
        except BaseException:
            with contextlib.suppress(Exception):  # keep what is done; the error propagates
                run.flush(writer)
            raise
        run.flush(writer)
    if need_pct:
        # the picks whose blocks were done before this run are read on their own
        missing = [j for j in range(len(plan.pct_picks)) if j not in run.samples]
        run.samples.update(_percentile_reads(client, src, plan, seed, missing))
        meta["percentiles"] = percentiles([run.samples[j] for j in sorted(run.samples)],
                                          geom.n_channels, plan, seed)
        status["percentiles"] = "complete"
    with writer.writing():
        for k in cell_sets:
            status[CELL_SETS[k]] = "complete"
        derive_cell_stats(writer, plan, geom, derived_todo, border, volume.dtype)
        record_fill(writer, meta, status, region_todo + derived_todo,
                    {"pass": {**pass_stats.as_attrs(), "tile": list(plan.tile),
                              "group": plan.group, "source": src.kind}})


class _Run:
    """One streaming run: the pending blocks, their tasks and where their results go."""

    def __init__(self, client: Any, plan: Any, src: Any, jobs: list[Any], geom: VolumeGeometry,
                 border: str, configs: Mapping[str, Any], volume: Any,
                 storage_options: Mapping[str, Any] | None, axes: str | None,
                 pct_seed: int | None):
        from patchsieve.filterpass._plan import (
            CACHE_BYTES,
            PERCENTILE_VALUES_PER_CHUNK,
            _open_mask,
        )
        from patchsieve.filterpass._scheduler import cluster_threads
        from patchsieve.filterpass._source import Source

        self.client, self.plan, self.src, self.jobs = client, plan, src, jobs
        self.stats_job = next((j for j in jobs if hasattr(j, "stats")), None)
        self.cells_job = next((j for j in jobs if not hasattr(j, "stats")), None)
        shape = plan.numblocks
        self.stats_missing = self.stats_job.log.missing() if self.stats_job else \
            np.zeros(shape, bool)
        self.cells_missing = self.cells_job.log.missing() if self.cells_job else \
            np.zeros(shape, bool)
        self.pending = self.stats_missing | self.cells_missing
        self.mask_src = None
        if "mask" in plan.cell_sets:
            cfg = next(c for c in configs.values() if c.name == "mask")
            mask = _open_mask(cfg, volume, storage_options)
            self.mask_src = Source(client, mask, storage_options,
                                   "".join(mask.dims).upper() if isinstance(cfg.mask, str)
                                   else None)
        self.spec = {"patch_size": tuple(geom.patch_size), "stats": tuple(plan.stats),
                     "border": border, "n_sample_dims": len(geom.sample_dims),
                     "block_dims": plan.block_dims, "c_axis": plan.c_axis,
                     "ref": geom.ref_channel, "cell_sets": tuple(plan.cell_sets),
                     "n_spatial": geom.ndim, "halo": plan.halo, "cache_bytes": CACHE_BYTES,
                     "seed": pct_seed or 0, "pct_n": PERCENTILE_VALUES_PER_CHUNK}
        # dask sources hand a task its blocks' pixels only: their picks are read on their own
        self.want_pct = pct_seed is not None and src.kind != "dask"
        self.samples: dict[int, np.ndarray] = {}
        workers = cluster_threads(client)[0]
        self.affinity = bool(plan.halo and src.reader is not None and len(workers) > 1)
        self.n_streams = len(workers) if self.affinity else 1
        self.token = f"patchsieve-block-{uuid.uuid4().hex[:12]}"
        self.spec["run"] = self.token
        self.n = 0

    def streams(self) -> list[Iterator[tuple[int, list[Any]]]]:
        def blocks(k: int) -> Iterator[tuple[int, list[Any]]]:
            units = range(k, self.plan.n_units, self.n_streams)
            for u, group in self.plan.walk(self.pending, units):
                yield u, [self.plan.block(i, stats=bool(self.stats_missing[i]),
                                          cells=bool(self.cells_missing[i]),
                                          pct=self.want_pct) for i in group]

        return [blocks(k) for k in range(self.n_streams)]

    def submit(self, blocks: list[Any], worker: str | None) -> Any:
        from patchsieve.filterpass._blocks import run_group

        self.n += 1
        kwargs: dict[str, Any] = {}
        pixels = self.src.pixels([b.read for b in blocks])
        if pixels is not None:
            kwargs["pixels"] = pixels
        if self.mask_src is not None:
            kwargs["mask"] = self.mask_src.arg
            mask_regions = [_mask_region(b, self.plan) for b in blocks]
            mp = self.mask_src.pixels(mask_regions)
            if mp is not None:
                kwargs["mask_pixels"] = mp
        if worker:
            kwargs.update(workers=[worker], allow_other_workers=True)
        return self.client.submit(run_group, self.src.arg, self.spec, blocks, **kwargs,
                                  key=f"{self.token}-{self.n}", pure=False)

    def handle(self, blocks: list[Any], results: list[Any]) -> None:
        for blk, res in zip(blocks, results):
            self.samples.update(res.get("pct", {}))
            if self.stats_job is not None and self.stats_missing[blk.index]:
                self.stats_job.put(blk, res)
            if self.cells_job is not None and self.cells_missing[blk.index]:
                self.cells_job.put(blk, res)

    def flush(self, writer: SidecarWriter) -> None:
        with writer.writing():
            for job in self.jobs:
                job.log.flush()


def _mask_region(block: Any, plan: Any) -> tuple[slice, ...]:
    """The mask pixels of a block's cells (block dims, no channel)."""
    read = [s for i, s in enumerate(block.read) if i != plan.c_axis]
    if block.cells_local is None:
        return tuple(slice(s.start, s.start) for s in read)
    return tuple(slice(r.start + c.start, r.start + c.stop)
                 for r, c in zip(read, block.cells_local))


def _percentile_reads(client: Any, src: Any, plan: Any, seed: int,
                      picks: Sequence[int]) -> dict[int, np.ndarray]:
    """The percentile samples of ``picks`` (chunks no block of this run read), as tasks."""
    from patchsieve.filterpass._blocks import percentile_task
    from patchsieve.filterpass._plan import PERCENTILE_VALUES_PER_CHUNK

    if not picks:
        return {}
    regions = [plan.pct_regions[j] for j in picks]
    pixels = src.pixels(regions) or [None] * len(regions)
    futs = [client.submit(percentile_task, src.arg, r, seed + j, PERCENTILE_VALUES_PER_CHUNK,
                          plan.c_axis, pixels=p, pure=False)
            for j, r, p in zip(picks, regions, pixels)]
    return dict(zip(picks, client.gather(futs)))


def ensure_sidecar(
    source: Any,
    patch_filter_config: Any,
    patch_size: Any,
    *,
    storage_options: Mapping[str, Any] | None = None,
    axes: str | None = None,
    level: int = 0,
    client: Any = None,
    rank: int = 0,
    world_size: int = 1,
    timeout: float = 3600.0,
) -> Sidecar:
    """A complete side-car of ``source`` with this filter and patch size, at the default location:
    reused when one is there, else computed (on rank 0; other ranks wait for it).

    Parameters
    ----------
    source, storage_options, axes, level
        The volume, as for :func:`compute`.
    patch_filter_config : PatchFilterConfig
        The filter.
    patch_size : sequence or mapping
        The patch size.
    client : distributed.Client, optional
        Client of the filter pass when it runs.
    rank, world_size : int
        DDP rank and world size: ranks other than 0 wait up to ``timeout`` seconds for rank 0's
        side-car.

    Raises
    ------
    SidecarIncompleteError
        A non-zero rank waited ``timeout`` seconds in vain.
    """
    from patchsieve.volume import open_volume

    volume = open_volume(source, axes=axes, level=level, storage_options=storage_options)
    url = str(volume.attrs.get("source", "<numpy>"))
    path = default_output(url, source_fingerprint(volume, storage_options),
                          storage_options=storage_options)
    if rank != 0 and world_size > 1:
        sc = _wait_for_sidecar(path, storage_options, timeout)
        sc.resolve_filter(config=patch_filter_config)
        return sc
    try:
        sc = open_sidecar(path, storage_options=storage_options)
        sc.resolve_filter(config=patch_filter_config)
        sc.require_patch_size(patch_size)
        logger.info("reusing complete side-car %s", path)
        return sc
    except Exception as err:  # noqa: BLE001 - absent, incomplete or made for other parameters
        logger.info("running the filter pass (%s)", type(err).__name__)
    return compute(volume, [patch_filter_config], patch_size, path, client=client,
                   storage_options=storage_options, overwrite=True)


def _wait_for_sidecar(path: str, storage_options: Mapping[str, Any] | None,
                      timeout: float) -> Sidecar:
    deadline = time.monotonic() + timeout
    while True:
        try:
            return open_sidecar(path, storage_options=storage_options)
        except Exception as err:  # noqa: BLE001 - absent or incomplete while rank 0 computes
            if time.monotonic() > deadline:
                raise SidecarIncompleteError(
                    f"side-car {path!r} was not completed within timeout={timeout}s while rank 0 "
                    "computed it. Fix: compute it first (`patchsieve compute`) or raise the "
                    "timeout.") from err
            time.sleep(1.0)
