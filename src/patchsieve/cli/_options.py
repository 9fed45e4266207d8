"""Option parsing shared by the commands (private to :mod:`patchsieve.cli`): patch sizes,
storage options, filter configs from flags, and the one way a command fails."""

from __future__ import annotations

import json
from typing import Annotated, Any, Optional

import typer

from patchsieve.errors import ConfigError

FILTER_CHOICES = ("max", "mean_std", "meanstd", "shannon", "mask")
SO_HELP = "fsspec options as JSON (credentials, endpoint), never stored."

# options several commands share (typer reads the Annotated metadata)
StorageOptions = Annotated[Optional[str], typer.Option(help=SO_HELP)]  # noqa: UP007
EndpointUrl = Annotated[Optional[str], typer.Option(help="S3 endpoint URL.")]  # noqa: UP007
JsonOut = Annotated[bool, typer.Option("--json", help="Print a JSON result.")]
Dpi = Annotated[int, typer.Option(help="Resolution of the PNG (dots per inch).")]


def fail(err: Exception) -> None:
    """Print ``error: <message>`` on stderr and exit with status 2."""
    typer.echo(f"error: {err}", err=True)
    raise typer.Exit(code=2)


def parse_patch(text: str) -> tuple[int, ...]:
    """``"64,64"`` (or ``"64x64"``) -> ``(64, 64)``."""
    try:
        return tuple(int(v) for v in text.replace("x", ",").split(",") if v.strip())
    except ValueError as err:
        raise ConfigError(
            f"--patch must be comma-separated integers like 64,64 or 16,64,64; got {text!r}."
        ) from err


def storage_options(text: str | None, endpoint: str | None) -> dict[str, Any] | None:
    """fsspec options from ``--storage-options`` (JSON) and ``--endpoint-url``."""
    opts: dict[str, Any] = {}
    if text:
        try:
            opts.update(json.loads(text))
        except ValueError as err:
            raise ConfigError("--storage-options must be a JSON object, e.g. "
                              "'{\"anon\": true}'") from err
    if endpoint:
        opts["endpoint_url"] = endpoint
    return opts or None


def build_filter_config(kind: str, *, threshold: float | None, std_threshold: float | None,
                        coverage: float | None, ref_channel: int, filtered_patch_prob: float,
                        mask: str | None) -> Any:
    """Build one filter config from CLI flags (shared by `compute` and `plot`)."""
    from patchsieve.config import (
        MaskPatchFilterConfig,
        MaxPatchFilterConfig,
        MeanStdPatchFilterConfig,
        ShannonPatchFilterConfig,
    )

    kind = kind.lower().replace("-", "_")
    common = {"ref_channel": ref_channel, "filtered_patch_prob": filtered_patch_prob}
    if kind != "mask" and threshold is None:
        raise ConfigError(f"--threshold is required for --filter {kind}. Fix: e.g. --threshold 7.5.")
    if kind == "max":
        return MaxPatchFilterConfig(threshold=threshold, coverage=coverage, **common)
    if kind in ("mean_std", "meanstd"):
        return MeanStdPatchFilterConfig(mean_threshold=threshold, std_threshold=std_threshold,
                                        **common)
    if kind == "shannon":
        return ShannonPatchFilterConfig(threshold=threshold, **common)
    if kind == "mask":
        if mask is None:
            raise ConfigError("--mask is required for --filter mask. Fix: --mask path/to/mask.zarr")
        return MaskPatchFilterConfig(mask=mask, coverage=0.25 if coverage is None else coverage,
                                     **common)
    raise ConfigError(f"--filter must be one of {', '.join(FILTER_CHOICES)}; got {kind!r}.")
