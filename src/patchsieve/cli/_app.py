"""The typer app and its main commands (private to :mod:`patchsieve.cli`)."""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path
from typing import Any, Optional

import typer

from patchsieve._version import __version__
from patchsieve.cli._options import build_filter_config, fail, parse_patch, storage_options
from patchsieve.cli.thresholds import register as register_threshold_tools
from patchsieve.errors import PatchsieveError

app = typer.Typer(
    name="patchsieve",
    help="CAREamics-compatible patch filtering and patch sampling for huge microscopy volumes.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
logger = logging.getLogger("patchsieve")

class _StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to whatever ``sys.stderr`` is at emit time (safe across repeated invocations)."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property  # type: ignore[override]
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, value: Any) -> None:
        pass


def _version_callback(value: bool) -> None:
    if value:
        typer.echo(f"patchsieve {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    version: Optional[bool] = typer.Option(  # noqa: UP007 - typer needs Optional
        None, "--version", callback=_version_callback, is_eager=True, help="Show the version and exit."
    ),
    verbose: int = typer.Option(0, "--verbose", "-v", count=True, help="More log output (-vv debug)."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Only warnings and errors."),
) -> None:
    """patchsieve: score regions, persist a side-car, stream weighted patches."""
    level = logging.WARNING if quiet else (logging.INFO if verbose == 1 else
                                           logging.DEBUG if verbose > 1 else logging.INFO)
    root = logging.getLogger()
    if not root.handlers:  # embedding apps / pytest keep their own handlers
        handler = _StderrHandler()
        handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
        root.addHandler(handler)
    root.setLevel(level)
    import distributed  # noqa: F401 - configures its loggers on import; override them after

    for noisy in ("distributed", "werkzeug", "botocore", "aiobotocore", "s3fs", "fsspec"):
        logging.getLogger(noisy).setLevel(max(level, logging.WARNING))


@app.command()
def compute(
    source: str = typer.Argument(..., help="Volume: OME-Zarr/Zarr/TIFF path or fsspec URL."),
    filter: list[str] = typer.Option(["shannon"], "--filter", "-f",  # noqa: A002
                                     help="Filter: max, mean_std, shannon or mask (repeatable)."),
    threshold: Optional[list[float]] = typer.Option(  # noqa: UP007
        None, "--threshold", "-t", help="Threshold per --filter (mean threshold for mean_std)."),
    std_threshold: Optional[float] = typer.Option(None, help="std threshold (mean_std)."),  # noqa: UP007
    coverage: Optional[float] = typer.Option(None, help="Max/Mask coverage (default 0.5**ndim / 0.25)."),  # noqa: UP007
    patch: str = typer.Option(..., "--patch", "-p", help="Patch size, e.g. 64,64 or 16,64,64."),
    ref_channel: int = typer.Option(0, "--ref-channel", help="Reference channel index."),
    filtered_patch_prob: float = typer.Option(0.1, help="Sampling weight of background regions."),
    mask: Optional[str] = typer.Option(None, help="Mask Zarr/TIFF for --filter mask."),  # noqa: UP007
    output: Optional[str] = typer.Option(None, "--output", "-o", help="Side-car location."),  # noqa: UP007
    axes: Optional[str] = typer.Option(None, help="Axes for plain Zarr/TIFF, e.g. SYX."),  # noqa: UP007
    level: int = typer.Option(0, help="OME-Zarr pyramid level to filter on; --patch stays in "
                              "level-0 pixels and is scaled by the level's factors."),
    scheduler: Optional[str] = typer.Option(None, help="Dask scheduler address tcp://HOST:PORT."),  # noqa: UP007
    n_workers: Optional[int] = typer.Option(None, help="Local cluster: worker processes."),  # noqa: UP007
    threads_per_worker: Optional[int] = typer.Option(None, help="Local cluster: threads each."),  # noqa: UP007
    overwrite: bool = typer.Option(False, help="Replace a side-car made for other params/source."),
    labels: bool = typer.Option(False, help="Also write full-resolution OME-Zarr labels."),
    border: str = typer.Option("careamics", help="careamics (zero-padded) or valid."),
    storage_options_json: Optional[str] = typer.Option(  # noqa: UP007
        None, "--storage-options", help="fsspec options as JSON."),
    endpoint_url: Optional[str] = typer.Option(None, help="S3 endpoint URL."),  # noqa: UP007
    json_out: bool = typer.Option(False, "--json", help="Print a JSON summary."),
    progress: bool = typer.Option(True, help="Show a progress bar."),
) -> None:
    """Run the filter pass and write the side-car (resumable; rerun to complete)."""
    from patchsieve.filterpass import compute as run_compute

    try:
        thresholds = list(threshold or [])
        configs: dict[str, Any] = {}
        for i, kind in enumerate(filter):
            thr = thresholds[i] if i < len(thresholds) else (thresholds[-1] if thresholds else None)
            cfg = build_filter_config(kind, threshold=thr, std_threshold=std_threshold,
                                      coverage=coverage, ref_channel=ref_channel,
                                      filtered_patch_prob=filtered_patch_prob, mask=mask)
            name = cfg.name if cfg.name not in configs else f"{cfg.name}-{i}"
            configs[name] = cfg
        so = storage_options(storage_options_json, endpoint_url)
        patch_size: Any = parse_patch(patch)
        if level > 0:
            from patchsieve.analysis import level_patch_size

            patch_size = tuple(level_patch_size(source, patch_size, level, storage_options=so,
                                                axes=axes).values())
        sc = run_compute(source, configs, patch_size, output, scheduler=scheduler,
                         overwrite=overwrite, storage_options=so,
                         axes=axes, level=level, border=border, labels=labels,
                         progress=progress and not json_out,
                         cluster={"n_workers": n_workers, "threads_per_worker": threads_per_worker})
    except PatchsieveError as err:
        fail(err)
        return
    except KeyboardInterrupt:
        # the pass wrote every block handed back before the interrupt, with its marker
        typer.echo("interrupted: the side-car is incomplete; run the same command again to "
                   "resume (blocks already written are not computed again).", err=True)
        raise typer.Exit(code=130) from None
    _report_sidecar(sc, json_out)


def _report_sidecar(sc: Any, json_out: bool) -> None:
    from patchsieve.analysis import brief_summary

    summary = brief_summary(sc)
    if json_out:
        typer.echo(json.dumps(summary, indent=1))
        return
    typer.echo(f"side-car: {sc.path}")
    for name, s in summary["filters"].items():
        typer.echo(f"  {name}: {s['background']}/{s['regions']} regions background "
                   f"({100 * s['background_fraction']:.1f} %), "
                   f"{s['patches_per_epoch']} patches per epoch")


@app.command("demo-data")
def demo_data(
    out: Optional[Path] = typer.Argument(  # noqa: UP007
        None, help="Folder to write the demo datasets into (not with --virtual)."),
    size: str = typer.Option("full", help="full or small."),
    virtual: Optional[str] = typer.Option(  # noqa: UP007
        None, "--virtual", help="Print the URL of a procedural volume of this shape instead "
        "(e.g. 4096x40960x32768: 11 TB, nothing written)."),
    chunks: Optional[str] = typer.Option(  # noqa: UP007
        None, help="--virtual: chunk shape, e.g. 16x256x256."),
    dtype: str = typer.Option("uint16", help="--virtual: data type."),
    seed: int = typer.Option(0, help="--virtual: which volume of that shape."),
    axes: Optional[str] = typer.Option(None, help="--virtual: dims, e.g. zyx."),  # noqa: UP007
) -> None:
    """Write the deterministic synthetic demo datasets (OME-Zarr), or print a procedural URL."""
    try:
        if virtual is not None:
            from patchsieve.demo import describe_procedural, procedural_url

            url = procedural_url(parse_patch(virtual), parse_patch(chunks) if chunks else None,
                                 dtype=dtype, seed=seed, axes=axes)
            info = describe_procedural(url)
            typer.echo(url)
            size = next(f"{info['nbytes'] / 10**e:.3g} {u}" for e, u in
                        ((12, "TB"), (9, "GB"), (6, "MB"), (0, "B")) if info["nbytes"] >= 10**e
                        or u == "B")
            typer.echo(f"# {size}, {info['n_chunks']:,} chunks of "
                       f"{'x'.join(map(str, info['chunks']))} {info['dtype']} ({info['axes']})",
                       err=True)
            return
        if out is None:
            from patchsieve.errors import ConfigError

            raise ConfigError("demo-data needs an output folder (or --virtual SHAPE). Fix: "
                              "patchsieve demo-data demo-data/")
        from patchsieve.demo import write_demo_data

        paths = write_demo_data(out, size=size)
    except PatchsieveError as err:
        fail(err)
        return
    for name, path in paths.items():
        typer.echo(f"{name}: {path}")


@app.command()
def demo(
    data: Path = typer.Option(Path("demo-data"), help="Where the demo datasets go."),
    output: Path = typer.Option(Path("demo-output"), help="Where side-cars and plots go."),
    size: str = typer.Option("full", help="full or small."),
) -> None:
    """Generate the demo data and run the main job on it (what `make demo` runs)."""
    from patchsieve.cli._demo_job import run_demo

    try:
        lines = run_demo(data, output, size=size)
    except PatchsieveError as err:
        fail(err)
        return
    for line in lines:
        typer.echo(line)


@app.command()
def run(
    spec: Path = typer.Argument(..., help="Pipeline spec (YAML), e.g. pipelines/seed-tutorial.yaml."),
    set_: Optional[list[str]] = typer.Option(  # noqa: UP007
        None, "--set", help="Override a spec value: key.path=value (repeatable)."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Validate and print the spec; run nothing."),
    json_out: bool = typer.Option(False, "--json", help="Print a JSON summary."),
) -> None:
    """Run a YAML pipeline spec (validated; see pipelines/)."""
    from patchsieve.pipeline import run_pipeline

    try:
        result = run_pipeline(spec, overrides=set_ or [], dry_run=dry_run)
    except PatchsieveError as err:
        fail(err)
        return
    if json_out:
        typer.echo(json.dumps(result, indent=1, default=str))
    else:
        for key, value in result.items():
            typer.echo(f"{key}: {value}")


@app.command()
def sample(
    sidecar: str = typer.Argument(..., help="A completed side-car (*.patchsieve.zarr)."),
    audit: bool = typer.Option(True, "--audit/--no-audit", help="Print the sampling audit."),
    n: int = typer.Option(256, "-n", help="Patches to read (measures bytes/patch, cache hits)."),
    mode: str = typer.Option("per_epoch", help="per_epoch, with_replacement or fixed_subset."),
    filter_name: Optional[str] = typer.Option(None, "--filter", help="Filter of the side-car."),  # noqa: UP007
    epochs: int = typer.Option(1, help="Epochs the audit covers."),
    seed: int = typer.Option(0, help="Sampling seed."),
    storage_options_json: Optional[str] = typer.Option(  # noqa: UP007
        None, "--storage-options", help="fsspec options as JSON."),
    endpoint_url: Optional[str] = typer.Option(None, help="S3 endpoint URL."),  # noqa: UP007
    json_out: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Draw patches as PatchDataset does and audit the sampling (background share, reads)."""
    from patchsieve.dataset import PatchDataset

    try:
        so = storage_options(storage_options_json, endpoint_url)
        ds = PatchDataset(sidecar=sidecar, mode=mode, filter_name=filter_name, seed=seed,
                          storage_options=so)
        for i, _ in enumerate(ds):
            if i + 1 >= n:
                break
        report = ds.audit(epochs=epochs) if audit else {}
    except PatchsieveError as err:
        fail(err)
        return
    if json_out:
        typer.echo(json.dumps(report, indent=1, default=str))
        return
    for key, value in report.items():
        typer.echo(f"{key}: {value}")


register_threshold_tools(app)


def main() -> None:
    """Console-script entry point."""
    os.environ.setdefault("PYTHONWARNINGS", "ignore::DeprecationWarning")
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
