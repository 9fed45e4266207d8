"""Running a pipeline spec: resolve sources and filters, run the filter pass on each source
(private to :mod:`patchsieve.pipeline`)."""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from patchsieve.analysis import brief_summary
from patchsieve.errors import ConfigError
from patchsieve.pipeline._env import _check_url, _env_refs, _expand_options, expand_env
from patchsieve.pipeline._spec import PipelineConfig

logger = logging.getLogger(__name__)


def _resolved_sources(cfg: PipelineConfig) -> list[dict[str, Any]]:
    from patchsieve.volume import strip_credentials

    out = []
    for i, src in enumerate(cfg.sources):
        where = "source" if len(cfg.sources) == 1 else f"source.{i}"
        path = expand_env(src.path, f"{where}.path")
        try:
            _check_url(path)
        except ValueError as err:
            raise ConfigError(f"{where}.path (after ${{...}} expansion): {err}") from None
        output = src.output if src.output is not None else cfg.output
        if output is not None:
            output = expand_env(output, f"{where}.output").replace("{name}", src.stem)
        out.append({
            "path": path,
            "label": strip_credentials(path),
            "name": src.stem,
            "axes": src.axes,
            "level": src.level,
            "storage_options": _expand_options(src.storage_options, f"{where}.storage_options")
            or None,
            "output": output,
        })
    return out


def _resolved_filters(cfg: PipelineConfig) -> dict[str, Any]:
    out = {}
    for i, (key, f) in enumerate(cfg.filter_configs().items()):
        if f.name == "mask" and isinstance(f.mask, str):
            f = f.model_copy(update={"mask": expand_env(f.mask, f"filters.{i}.mask")})
        out[key] = f
    return out


def _epoch_estimate(cfg: PipelineConfig, sidecars: Sequence[Any],
                    filter_name: str) -> dict[str, Any] | None:
    ds = cfg.dataset
    if ds is None:
        return None
    name = ds.filter or filter_name
    per_epoch = sum(int(sc.sample_totals(name)["n_patches_per_epoch"].sum()) for sc in sidecars)
    n = (ds.epoch_length or per_epoch) if ds.mode == "with_replacement" else per_epoch
    batches = n // ds.batch_size if ds.drop_last else math.ceil(n / ds.batch_size)
    return {**ds.model_dump(mode="json"), "filter": name, "expected_epoch_size": n,
            "batches_per_epoch": batches}


def _dry_run(cfg: PipelineConfig, spec_label: str) -> dict[str, Any]:
    from patchsieve.volume import strip_credentials

    refs = sorted(_env_refs(cfg.model_dump(mode="json")))
    missing = [v for v in refs if v not in os.environ]
    return {
        "spec": spec_label,
        "name": cfg.name,
        "valid": True,
        "dry_run": True,
        "sources": [strip_credentials(s.path) for s in cfg.sources],
        "filters": {k: v.model_dump(mode="json") for k, v in cfg.filter_configs().items()},
        "patch_size": cfg.patch_size,
        "cluster": cfg.cluster.model_dump(mode="json"),
        "env_required": refs,
        "env_missing": missing,
        "dataset": cfg.dataset.model_dump(mode="json") if cfg.dataset else None,
    }


def run_pipeline(
    spec: str | os.PathLike[str] | Mapping[str, Any] | PipelineConfig,
    overrides: Iterable[str] = (),
    dry_run: bool = False,
    client: Any = None,
    *,
    progress: bool = False,
) -> dict[str, Any]:
    """Validate a pipeline spec and run its filter pass(es).

    Parameters
    ----------
    spec : path, mapping or PipelineConfig
        A YAML file, an already parsed mapping or a validated config.
    overrides : iterable of str
        ``key.path=value`` overrides (YAML-typed values), applied before validation.
    dry_run : bool
        Validate only: report the resolved spec and the environment variables it needs.
    client : distributed.Client, optional
        Run on this client instead of the spec's ``cluster``.
    progress : bool
        Show compute's progress bar.

    Returns
    -------
    dict
        JSON-able summary: ``sidecars`` (paths), ``results`` (per source: side-car, source URL
        without credentials, per-filter regions / background / background_fraction /
        patches_per_epoch, seconds), ``background_fraction`` (per filter, over all sources),
        ``dataset`` (with ``expected_epoch_size``) and ``timings``. Credentials never appear.

    Raises
    ------
    ConfigError
        Invalid spec or override (the message names the key path and the fix), or an unset
        environment variable the spec references.
    PatchsieveError
        Whatever :func:`patchsieve.compute` raises (unreachable scheduler, missing source ...).
    """
    t0 = time.perf_counter()
    if isinstance(spec, PipelineConfig):
        if overrides:
            cfg = PipelineConfig.from_dict(spec.model_dump(), overrides, origin="spec")
        else:
            cfg = spec
        label = "<PipelineConfig>"
    elif isinstance(spec, Mapping):
        cfg, label = PipelineConfig.from_dict(spec, overrides), "<mapping>"
    else:
        cfg, label = PipelineConfig.from_yaml(spec, overrides), str(spec)
    if dry_run:
        return _dry_run(cfg, label)
    sources = _resolved_sources(cfg)
    filters = _resolved_filters(cfg)
    out_opts = None
    if cfg.output_storage_options is not None:
        out_opts = _expand_options(cfg.output_storage_options, "output_storage_options")
    scheduler = expand_env(cfg.cluster.scheduler, "cluster.scheduler") \
        if cfg.cluster.scheduler else None
    results, sidecars = _run_sources(cfg, sources, filters, out_opts, scheduler or None, client,
                                     progress)
    first = next(iter(filters))
    fractions = {}
    for name in filters:
        regions = sum(r["filters"][name]["regions"] for r in results)
        bg = sum(r["filters"][name]["background"] for r in results)
        fractions[name] = bg / regions if regions else 0.0
    total = time.perf_counter() - t0
    return {
        "spec": label,
        "name": cfg.name,
        "sidecars": [r["sidecar"] for r in results],
        "background_fraction": fractions,
        "results": results,
        "dataset": _epoch_estimate(cfg, sidecars, first),
        "cluster": scheduler or ("<client>" if client is not None else "local"),
        "timings": {"total_s": round(total, 3),
                    "compute_s": round(sum(r["seconds"] for r in results), 3)},
    }


def _run_sources(cfg: PipelineConfig, sources: Sequence[Mapping[str, Any]],
                 filters: Mapping[str, Any], out_opts: Mapping[str, Any] | None,
                 scheduler: str | None, client: Any,
                 progress: bool) -> tuple[list[dict[str, Any]], list[Any]]:
    from patchsieve.cluster import get_client
    from patchsieve.filterpass import compute

    c = cfg.cluster
    results, sidecars = [], []
    local = {} if (client is not None or scheduler) else {
        "n_workers": c.n_workers, "threads_per_worker": c.threads_per_worker,
        "processes": c.processes}
    with get_client(scheduler, client, timeout=c.timeout, **local) as cl:
        for src in sources:
            t = time.perf_counter()
            logger.info("pipeline %s: filtering %s", cfg.name or "", src["label"])
            sc = compute(
                src["path"], filters, cfg.patch_size, src["output"], client=cl,
                overwrite=cfg.overwrite, storage_options=src["storage_options"],
                output_storage_options=out_opts, axes=src["axes"], level=src["level"],
                border=cfg.border, labels=cfg.labels, seed=cfg.seed, progress=progress,
            )
            summary = brief_summary(sc)
            summary["name"] = src["name"]
            summary["seconds"] = round(time.perf_counter() - t, 3)
            results.append(summary)
            sidecars.append(sc)
            for name, s in summary["filters"].items():
                logger.info("  %s: %d/%d regions background (%.1f %%)", name, s["background"],
                            s["regions"], 100 * s["background_fraction"])
    return results, sidecars
