"""CLI commands to choose and trust thresholds: ``inspect``, ``plot``, ``suggest-threshold``, ``preview``.

Mounted on the main app by ``register(app)``. The commands parse, draw progress and print; the
work happens in :mod:`patchsieve.analysis`. Human output is a
rich table on stdout; ``--json`` prints one JSON document, ``--quiet`` one line per result.
Progress and status go to stderr so that stdout stays parseable.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any, Optional

import typer

from patchsieve.cli._options import (
    Dpi,
    EndpointUrl,
    JsonOut,
    StorageOptions,
    build_filter_config,
    fail,
    parse_patch,
)
from patchsieve.cli._options import storage_options as _options
from patchsieve.errors import ConfigError, PatchsieveError

logger = logging.getLogger(__name__)

__all__ = ["register"]

def _use_agg() -> None:
    import matplotlib

    matplotlib.use("Agg", force=True)


@contextmanager
def _status(text: str, enabled: bool) -> Iterator[None]:
    """A spinner on stderr while a step runs (nothing with --quiet/--json)."""
    if not enabled:
        yield
        return
    from rich.console import Console

    with Console(stderr=True).status(text):
        yield


def _console() -> Any:
    from rich.console import Console

    return Console(soft_wrap=False)


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f} %"


def _size(n: int) -> str:
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000  # type: ignore[assignment]
    return str(n)  # pragma: no cover


def _config_text(cfg: Mapping[str, Any]) -> str:
    """Thresholds first, then p (filtered_patch_prob); the channel is shown elsewhere."""
    skip = ("name", "mask_sha256", "ref_channel", "filtered_patch_prob")
    parts = [f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}"
             for k, v in cfg.items() if k not in skip and v is not None]
    return "\n".join([*parts, f"p={cfg.get('filtered_patch_prob')}"])


# ------------------------------------------------------------------------------ inspect
def _head_table(s: Mapping[str, Any]) -> Any:
    from rich.markup import escape
    from rich.table import Table

    g = s["geometry"]
    head = Table(title=escape(f"side-car {s['sidecar']}"), show_header=False,
                 title_justify="left")
    head.add_column(style="bold")
    head.add_column()
    state = "[green]complete[/]" if s["complete"] else "[red]INCOMPLETE[/] (rerun compute)"
    rows = [
        ("status", f"{state}; format {s['format_version']}, patchsieve {s['patchsieve_version']}"),
        ("source", escape(f"{s['source']} [{s['array_path'] or '-'}], level {s['level']}")),
        ("volume", f"dims {tuple(g['dims'])}, shape {g['shape']}, {g['dtype']}, "
                   f"chunks {g['chunks']}"),
        ("samples", f"{g['n_samples']} ({', '.join(g['sample_dims']) or 'single image'})"),
        ("patch / grid", f"patch {g['patch_size']}, region grid {tuple(g['grid_shape'])} = "
                         f"{g['regions_per_sample']} regions per sample, border {g['border']}"),
        ("channels", f"{g['n_channels']} (filters on channel {g['ref_channel']})"),
        ("storage", f"{_size(s['storage']['bytes'])} in {s['storage']['files']} objects"),
        ("created / updated", f"{s['created']} / {s['updated']}"),
    ]
    for key, pr in s.get("progress", {}).items():
        if pr["done"] < pr["total"]:
            rows.append((escape(key), f"{pr['done']}/{pr['total']} blocks written"))
    for k, v in rows:
        head.add_row(k, v)
    return head


def _filter_tables(s: Mapping[str, Any]) -> tuple[Any, Any]:
    from rich.markup import escape
    from rich.table import Table

    filt = Table(title="filters (region counts over all samples)", title_justify="left")
    filt.add_column("filter", min_width=15, overflow="fold")
    for col in ("regions", "kept", "background", "background per sample", "patches/epoch"):
        filt.add_column(col, justify="left" if col == "background per sample" else "right")
    modes = Table(title="sampling modes: expected per epoch (share weighted by selectable "
                        "area; in region units)", title_justify="left")
    for col in ("filter", "mode", "patches/epoch", "background share", "(region units)"):
        modes.add_column(col, justify="left" if col in ("filter", "mode") else "right")
    for name, f in s["filters"].items():
        label = f"[bold]{escape(name)}[/]\n{escape(_config_text(f['config']))}"
        if f.get("incomplete"):
            filt.add_row(label, "-", "-", "pending", "-", "-")
            continue
        ps = f["per_sample"]
        bf = ps["background_fraction"]
        spread = (f"{_pct(bf['min'])} (#{bf['min_sample']}) to {_pct(bf['max'])} "
                  f"(#{bf['max_sample']}); median {_pct(bf['median'])}") if ps["n"] > 1 else "-"
        filt.add_row(label, str(f["n_regions"]), _pct(f["kept_fraction"]),
                     f"{f['n_background']} ({_pct(f['background_fraction'])})", spread,
                     str(f["patches_per_epoch_careamics"]))
        for mode, m in f["modes"].items():
            modes.add_row(name, mode, str(m["patches_per_epoch"]),
                          _pct(m["expected_background_fraction"]),
                          _pct(m["expected_background_fraction_region_units"]))
    return filt, modes


def _sample_tables(s: Mapping[str, Any]) -> list[Any]:
    from rich.table import Table

    tables = []
    for name, f in s["filters"].items():
        rows = f.get("per_sample", {}).get("rows")
        if not rows or len(rows) < 2:
            continue
        t = Table(title=f"{name}: per sample ({', '.join(f['per_sample']['dims'])})",
                  title_justify="left")
        for col in ("sample", "index", "background", "patches/epoch"):
            t.add_column(col, justify="right")
        for r in rows:
            t.add_row(str(r["sample"]), str(tuple(r["index"])),
                      f"{r['n_background']}/{r['n_regions']} ({_pct(r['background_fraction'])})",
                      str(r["patches_per_epoch"]))
        tables.append(t)
    return tables


def _level_tables(s: Mapping[str, Any]) -> list[Any]:
    from rich.markup import escape
    from rich.table import Table

    tables: list[Any] = []
    for lv in s["levels"]:
        if "error" in lv:
            tables.append(escape(f"level {lv['level']} side-car {lv['sidecar']}: not "
                                 f"comparable ({lv['error']})"))
            continue
        t = Table(title=escape(f"decisions vs level {lv['level']} side-car {lv['sidecar']}"),
                  title_justify="left")
        for col in ("filter", "levels", "regions", "identical decisions",
                    "background fine / coarse", "identical at matched share"):
            t.add_column(col, justify="left" if col in ("filter", "levels") else "right")
        for name, a in lv["filters"].items():
            t.add_row(name, f"{a['fine_level']} vs {a['coarse_level']}", str(a["n_regions"]),
                      _pct(a["agreement"]),
                      f"{_pct(a['background_fraction_fine'])} / "
                      f"{_pct(a['background_fraction_coarse'])}",
                      _pct(a["agreement_at_matched_fraction"]))
        tables.append(t)
    return tables


def _print_summary(s: Mapping[str, Any]) -> None:
    con = _console()
    con.print(_head_table(s))
    for table in (*_filter_tables(s), *_sample_tables(s), *_level_tables(s)):
        con.print(table)


def inspect_cmd(
    sidecar: str = typer.Argument(..., help="Side-car path or URL (*.patchsieve.zarr)."),
    reference: Optional[list[str]] = typer.Option(  # noqa: UP007 - typer needs Optional
        None, "--reference", "-r",
        help="Side-car of another pyramid level to compare decisions with (repeatable)."),
    find_references: bool = typer.Option(
        True, help="Also compare with side-cars of other levels found beside this one."),
    seed: int = typer.Option(0, help="Sampling seed (fixed_subset draws its subset from it)."),
    json_out: bool = typer.Option(False, "--json", help="Print the summary as JSON."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="One line per filter."),
    storage_options: StorageOptions = None,
    endpoint_url: EndpointUrl = None,
) -> None:
    """Summarise a side-car: geometry, filters, kept/background shares, sampling modes, levels."""
    from patchsieve.analysis import summarize

    try:
        so = _options(storage_options, endpoint_url)
        with _status("reading side-car", not (quiet or json_out)):
            s = summarize(sidecar, storage_options=so, references=reference or [],
                          find_references=find_references, seed=seed)
    except PatchsieveError as err:
        fail(err)
        return
    if json_out:
        typer.echo(json.dumps(s, indent=1, default=str))
    elif quiet:
        for name, f in s["filters"].items():
            if f.get("incomplete"):
                typer.echo(f"{name}: INCOMPLETE (decisions not written yet)")
                continue
            typer.echo(f"{name}: {f['n_background']}/{f['n_regions']} background "
                       f"({_pct(f['background_fraction'])}), "
                       f"{f['patches_per_epoch_careamics']} patches per epoch, "
                       f"{'complete' if s['complete'] else 'INCOMPLETE'}")
    else:
        _print_summary(s)


# ------------------------------------------------------------------------------ plot
def plot_cmd(
    source: str = typer.Argument(..., help="Side-car (*.patchsieve.zarr) or volume."),
    output: str = typer.Option("filter-maps.png", "--output", "-o", help="PNG to write."),
    sample: int = typer.Option(0, "--sample", "-s", help="Flat sample index (s/t dims)."),
    z: Optional[int] = typer.Option(None, "--z", help="z slice (3D; default middle)."),  # noqa: UP007
    channel: Optional[int] = typer.Option(  # noqa: UP007
        None, "--channel", "-c", help="Channel shown (default the reference channel)."),
    filter: Optional[list[str]] = typer.Option(  # noqa: A002, UP007
        None, "--filter", "-f",
        help="Side-car: filter names (default all). Volume: max, mean_std, shannon (repeatable)."),
    threshold: Optional[list[float]] = typer.Option(  # noqa: UP007
        None, "--threshold", "-t",
        help="Volume only: threshold per --filter, to draw the keep mask."),
    patch: Optional[str] = typer.Option(  # noqa: UP007
        None, "--patch", "-p", help="Volume only: patch size, e.g. 64,64."),
    coverage: Optional[float] = typer.Option(  # noqa: UP007
        None, help="Volume only: Max coverage (with --threshold)."),
    ref_channel: int = typer.Option(0, help="Volume only: channel the filters score."),
    axes: Optional[str] = typer.Option(None, help="Axes of a plain Zarr/TIFF, e.g. SYX."),  # noqa: UP007
    level: int = typer.Option(0, help="Volume only: pyramid level."),
    dpi: Dpi = 100,
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Print only the PNG path."),
    json_out: JsonOut = False,
    storage_options: StorageOptions = None,
    endpoint_url: EndpointUrl = None,
) -> None:
    """Plot image + filter map + keep mask for every filter (one panel per filter)."""
    from patchsieve.analysis import plot_filter_maps
    from patchsieve.sidecar import is_sidecar

    _use_agg()
    try:
        so = _options(storage_options, endpoint_url)
        is_sc = is_sidecar(source, so)
        filters: list[Any] | None = list(filter or []) or None
        patch_size = None
        if not is_sc:
            if patch is None:
                raise _config_error("--patch is required to plot a volume, e.g. --patch 64,64.")
            patch_size = parse_patch(patch)
            kinds = filters or ["max", "mean_std", "shannon"]
            thr = list(threshold or [])
            if thr and len(thr) != len(kinds):
                raise _config_error(f"give one --threshold per --filter ({len(kinds)} filters, "
                                    f"{len(thr)} thresholds).")
            if thr:
                filters = [build_filter_config(k, threshold=t, std_threshold=None,
                                               coverage=coverage, ref_channel=ref_channel,
                                               filtered_patch_prob=0.1, mask=None)
                           for k, t in zip(kinds, thr)]
            else:  # maps only (no keep mask)
                filters = list(kinds)
        with _status("drawing filter maps", not (quiet or json_out)):
            plot_filter_maps(source, output, sample=sample, z=z, channel=channel,
                             filters=filters, patch_size=patch_size, axes=axes, level=level,
                             storage_options=so, dpi=dpi)
    except PatchsieveError as err:
        fail(err)
        return
    if json_out:
        typer.echo(json.dumps({"output": output, "source": source, "sample": sample, "z": z,
                               "channel": channel}))
    else:
        typer.echo(output if quiet else f"wrote {output}")


def _config_error(msg: str) -> Exception:
    return ConfigError(msg)


# ------------------------------------------------------------------------------ suggest
def suggest_cmd(
    sidecar: str = typer.Argument(..., help="Side-car path or URL."),
    filter: Optional[str] = typer.Option(  # noqa: A002, UP007
        None, "--filter", "-f", help="Filter name in the side-car (default: the only one)."),
    background_fraction: Optional[float] = typer.Option(  # noqa: UP007
        None, "--background-fraction", "-b", help="Target share of background regions (0-1)."),
    method: Optional[str] = typer.Option(  # noqa: UP007
        None, "--method", "-m", help="otsu (default) or quantile (with --background-fraction)."),
    stat: Optional[str] = typer.Option(None, help="mean_std only: mean (default) or std."),  # noqa: UP007
    output: Optional[str] = typer.Option(  # noqa: UP007
        None, "--output", "-o", help="Histogram PNG (default threshold-<filter>.png)."),
    apply: bool = typer.Option(
        False, "--apply", help="Write the threshold and its decisions into the side-car."),
    dpi: Dpi = 100,
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Print only the threshold."),
    json_out: JsonOut = False,
    storage_options: StorageOptions = None,
    endpoint_url: EndpointUrl = None,
) -> None:
    """Suggest a threshold from the stored region statistics (histogram PNG; --apply writes it)."""
    from patchsieve.analysis import apply_threshold, plot_threshold_histogram, suggest_threshold

    _use_agg()
    try:
        so = _options(storage_options, endpoint_url)
        with _status("reading region statistics", not (quiet or json_out)):
            sg = suggest_threshold(sidecar, filter, background_fraction=background_fraction,
                                   method=method, stat=stat, storage_options=so)
            out = output or f"threshold-{sg.filter}.png"
            plot_threshold_histogram(sidecar, sg, out, storage_options=so, dpi=dpi)
        if apply:
            with _status("rewriting decisions", not (quiet or json_out)):
                apply_threshold(sidecar, sg.filter, sg.threshold, field=sg.field,
                                storage_options=so)
    except PatchsieveError as err:
        fail(err)
        return
    if json_out:
        typer.echo(json.dumps({**sg.to_dict(), "histogram": out, "applied": apply}, default=str))
    elif quiet:
        typer.echo(f"{sg.threshold:.6g}")
    else:
        cur = "" if sg.current_threshold is None else (
            f" (current {sg.current_threshold:g}: {_pct(sg.current_background_fraction)} "
            "background)")
        typer.echo(f"{sg.filter}: {sg.field} = {sg.threshold:.6g} by {sg.method} over "
                   f"{sg.n_regions} regions -> kept {_pct(sg.kept_fraction)}, background "
                   f"{_pct(sg.background_fraction)}{cur}")
        typer.echo(f"histogram: {out}")
        if apply:
            typer.echo(f"applied: {sidecar} now uses {sg.field} = {sg.threshold:.6g}")
        else:
            typer.echo("(use --apply to write it into the side-car)")


# ------------------------------------------------------------------------------ preview
def preview_cmd(
    sidecar: str = typer.Argument(..., help="Side-car path or URL."),
    n: int = typer.Option(64, "-n", help="Number of patches."),
    output: str = typer.Option("preview.png", "--output", "-o", help="PNG to write."),
    mode: str = typer.Option("per_epoch", help="per_epoch, with_replacement or fixed_subset."),
    seed: int = typer.Option(0, help="Sampling seed."),
    epoch: int = typer.Option(0, help="First epoch drawn."),
    channel: Optional[int] = typer.Option(None, "--channel", "-c", help="Channel shown."),  # noqa: UP007
    filter: Optional[str] = typer.Option(None, "--filter", "-f", help="Filter name."),  # noqa: A002, UP007
    dpi: Dpi = 100,
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Print only the PNG path."),
    json_out: JsonOut = False,
    storage_options: StorageOptions = None,
    endpoint_url: EndpointUrl = None,
) -> None:
    """Grid of patches as the dataset samples them; background patches framed orange."""
    from patchsieve.analysis import plot_preview, preview_patches

    _use_agg()
    try:
        so = _options(storage_options, endpoint_url)
        if quiet or json_out:
            res = preview_patches(sidecar, n, mode=mode, seed=seed, epoch=epoch, channel=channel,
                                  filter=filter, storage_options=so)
        else:
            from rich.progress import Progress

            with Progress(transient=True, console=_stderr_console()) as bar:
                task = bar.add_task("drawing patches", total=n)
                res = preview_patches(
                    sidecar, n, mode=mode, seed=seed, epoch=epoch, channel=channel,
                    filter=filter, storage_options=so,
                    on_progress=lambda done, total: bar.update(task, completed=done))
        plot_preview(res, output, dpi=dpi)
    except PatchsieveError as err:
        fail(err)
        return
    k = int(res["background"].sum())
    if json_out:
        typer.echo(json.dumps({"output": output, "n": len(res["patches"]), "n_background": k,
                               "realized_background_fraction": res["realized_background_fraction"],
                               "expected_background_fraction": res["expected_background_fraction"],
                               "mode": mode, "seed": seed, "epochs": [epoch, res["last_epoch"]],
                               "samples": res["samples"], "origins": res["origins"]}))
    elif quiet:
        typer.echo(output)
    else:
        typer.echo(f"wrote {output}: {len(res['patches'])} patches, {k} background "
                   f"({_pct(res['realized_background_fraction'])}; expected "
                   f"{_pct(res['expected_background_fraction'])} per epoch in mode {mode})")


def _stderr_console() -> Any:
    from rich.console import Console

    return Console(stderr=True)


def register(app: typer.Typer) -> None:
    """Add ``inspect``, ``plot``, ``suggest-threshold`` and ``preview`` to ``app``."""
    app.command("inspect")(inspect_cmd)
    app.command("plot")(plot_cmd)
    app.command("suggest-threshold")(suggest_cmd)
    app.command("preview")(preview_cmd)
