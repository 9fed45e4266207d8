"""Previews of what the sampler draws: the first patches of an epoch of
:class:`~patchsieve.dataset.PatchDataset`, background patches framed differently."""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

from patchsieve.analysis._common import BACKGROUND_COLOUR, KEPT_COLOUR, _as_sidecar, _check_channel
from patchsieve.errors import ConfigError, DataError

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["plot_preview", "preview_patches"]


def preview_patches(
    sidecar: Any,
    n: int = 64,
    *,
    mode: str = "per_epoch",
    seed: int = 0,
    epoch: int = 0,
    channel: int | None = None,
    filter: str | None = None,  # noqa: A002 - CLI name
    storage_options: Mapping[str, Any] | None = None,
    on_progress: Callable[[int, int], None] | None = None,
) -> dict[str, Any]:
    """The first ``n`` patches of an epoch, drawn by :class:`~patchsieve.dataset.PatchDataset`.

    Returns
    -------
    dict
        ``patches`` (n, Y, X) float32 (3D: the middle z slice of each patch; multichannel: the
        chosen channel, default the reference channel), ``background`` (n,) bool, ``samples``,
        ``origins``, ``realized_background_fraction`` (of these n), ``expected_background_fraction``
        (of the sampling mode), ``epoch_length``, ``display_range`` (p0.1, p99.9 of the channel),
        ``epoch`` and ``last_epoch`` (an epoch shorter than ``n`` is followed by the next ones).
    """
    from patchsieve.dataset import PatchDataset

    sc = _as_sidecar(sidecar, storage_options)
    if int(n) < 1:
        raise ConfigError(f"n must be >= 1; got {n}.")
    name = sc.resolve_filter(filter)
    n_ch = sc.n_channels
    _check_channel(n_ch, channel)
    ch = sc.ref_channel if channel is None else int(channel)
    ds = PatchDataset(sidecar=sc, filter_name=name, mode=mode, seed=seed, channels=[ch],
                      return_metadata=True, storage_options=storage_options)
    if len(ds) == 0:
        raise DataError(f"side-car {sc.path!r} gives an empty epoch; nothing to preview.")
    take = int(n)
    patches, bg, samples, origins = [], [], [], []
    last = int(epoch)
    while len(patches) < take:  # epochs shorter than n: continue with the next epochs
        ds.set_epoch(last)
        for x, meta in ds:
            a = x.numpy()[0]
            patches.append(a[a.shape[0] // 2] if a.ndim == 3 else a)
            bg.append(bool(meta["is_background"]))
            samples.append(int(meta["sample"]))
            origins.append([int(v) for v in meta["origin"].tolist()])
            if on_progress is not None:
                on_progress(len(patches), take)
            if len(patches) >= take:
                break
        else:
            last += 1
    bg_arr = np.array(bg, bool)
    norm = sc.normalization()
    stack = np.stack(patches).astype(np.float32)
    try:
        rng = (float(norm["p0.1"][ch]), float(norm["p99.9"][ch]))
    except (KeyError, IndexError, TypeError):
        rng = tuple(float(v) for v in np.percentile(stack, [0.1, 99.9]))  # type: ignore[assignment]
    return {"filter": name, "mode": mode, "seed": seed, "epoch": epoch, "last_epoch": last,
            "channel": ch,
            "patches": stack, "background": bg_arr, "samples": samples, "origins": origins,
            "realized_background_fraction": float(bg_arr.mean()),
            "expected_background_fraction": float(ds.sampler.expected_background_fraction()),
            "epoch_length": int(ds.sampler.epoch_length), "display_range": rng,
            "source": sc.source, "n_channels": n_ch, "ndim": len(sc.spatial_dims)}


def _preview_view(preview: Mapping[str, Any]) -> str:
    parts = [f"channel {preview['channel']}"] if preview.get("n_channels", 1) > 1 else []
    if preview.get("ndim", 2) == 3:
        parts.append("middle z of each patch")
    return "".join(f", {p}" for p in parts)


def plot_preview(preview: Mapping[str, Any], out: str | os.PathLike[str] | None = None, *,
                 dpi: int = 100) -> Figure:
    """Grid of the previewed patches; background patches framed orange, kept ones blue."""
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    pats, bg = preview["patches"], preview["background"]
    n = len(pats)
    ncols = math.ceil(math.sqrt(n))
    nrows = math.ceil(n / ncols)
    fig, axs = plt.subplots(nrows, ncols, figsize=(max(1.3 * ncols + 0.4, 7.0),
                                                   1.3 * nrows + 1.3), squeeze=False)
    lo, hi = preview["display_range"]
    for i, ax in enumerate(axs.ravel()):
        ax.set_xticks([])
        ax.set_yticks([])
        if i >= n:
            ax.axis("off")
            continue
        ax.imshow(pats[i], "gray", vmin=lo, vmax=hi if hi > lo else lo + 1)
        for sp in ax.spines.values():
            sp.set_edgecolor(BACKGROUND_COLOUR if bg[i] else KEPT_COLOUR)
            sp.set_linewidth(3.5 if bg[i] else 1.5)
    k = int(np.sum(bg))
    ep = f" {preview['epoch']}" if preview.get("last_epoch", preview["epoch"]) == \
        preview["epoch"] else f"s {preview['epoch']}-{preview['last_epoch']}"
    fig.suptitle(
        f"First {n} patches of epoch{ep} ({preview['mode']}, seed {preview['seed']}, "
        f"filter {preview['filter']}{_preview_view(preview)})\n"
        f"{k} background = {k / max(n, 1):.1%} realized; "
        f"{preview['expected_background_fraction']:.1%} expected "
        f"({preview['epoch_length']} patches per epoch)",
        fontsize=10)
    fig.legend(handles=[Patch(facecolor="none", edgecolor=KEPT_COLOUR, lw=2, label="kept region"),
                        Patch(facecolor="none", edgecolor=BACKGROUND_COLOUR, lw=3,
                              label="background region")],
               loc="lower center", ncol=2, fontsize=9, frameon=False)
    fig.subplots_adjust(left=0.02, right=0.98, bottom=0.8 / (1.3 * nrows + 1.3) + 0.02,
                        top=1 - 0.75 / (1.3 * nrows + 1.3), wspace=0.08, hspace=0.08)
    if out is not None:
        fig.savefig(out, dpi=dpi)
    return fig
