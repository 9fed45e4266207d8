"""The filter pass itself: :func:`compute` and :func:`ensure_sidecar` (private module)."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Mapping, Sequence
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
        Show a progress bar (rich).
    cluster : mapping, optional
        Overrides for the default LocalCluster (``n_workers``, ``threads_per_worker``,
        ``processes``) and ``timeout`` (seconds to reach a scheduler and find a worker).

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
        _fill(writer, cl, volume, geom, configs, meta, border, seed, storage_options, progress)
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
          storage_options: Mapping[str, Any] | None, progress: bool) -> None:
    """Compute the missing region-stat blocks, cell blocks and the percentile sample, then
    derive the cell statistics (mean, std, mask coverage) from the cell partials.

    All jobs are submitted as one graph so each source chunk is read once.
    """
    # the graphs need dask, xarray and the kernels: imported here, not with ``import patchsieve``
    from patchsieve.filterpass._jobs import (
        _cells_job,
        _derive_cell_stats,
        _record_fill,
        _stats_job,
    )
    from patchsieve.filterpass._plan import CELL_SETS, _cell_plan, _Plan
    from patchsieve.filterpass._scheduler import (
        _Job,
        _progress_bar,
        _run_jobs,
        _stack_object_blocks,
    )

    stats = list(meta["stats"])
    status = dict(meta.get("status", {}))
    region_todo, derived_todo, cell_sets = _cell_plan(stats, volume.dtype, status)
    need_pct = status.get("percentiles") != "complete"
    if not region_todo and not derived_todo and not cell_sets and not need_pct:
        return
    plan = _Plan(volume, geom, region_todo, cell_sets, configs, border, seed, storage_options)
    jobs: list[_Job] = []
    with writer.writing():
        if region_todo:
            jobs.append(_stats_job(writer, plan, geom, region_todo))
        if cell_sets:
            jobs.append(_cells_job(writer, plan, geom))
    samples: list[np.ndarray] = []
    if need_pct and plan.pct_blocks:
        jobs.append(_Job("percentile sample", _stack_object_blocks(plan.pct_blocks),
                         [(i,) for i in range(len(plan.pct_blocks))],
                         lambda idx, v: samples.append(v), lambda: None))
    with _progress_bar(progress) as p:
        # waves only pay off for the halo'd region blocks; cell blocks stream chunk by chunk
        _run_jobs(client, jobs, p, writer.writing,
                  source=volume.data if region_todo else None)
    with writer.writing():
        for k in cell_sets:
            status[CELL_SETS[k]] = "complete"
        _derive_cell_stats(writer, geom, derived_todo, plan.stat_chunks, border, volume.dtype)
        _record_fill(writer, meta, status, region_todo + derived_todo, need_pct, samples, plan,
                     geom, seed)


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
