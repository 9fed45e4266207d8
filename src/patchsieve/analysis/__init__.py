"""Look at and tune a side-car without reading the volume (was ``patchsieve.inspect``).

The library side of the ``patchsieve inspect``, ``plot``, ``suggest-threshold`` and ``preview``
commands (the CLI only parses and prints):

* :mod:`~patchsieve.analysis.summary` -- :func:`summarize`: source, geometry, configs,
  kept/background fractions overall and per sample, patches per epoch and expected background
  share under every sampling mode, storage size, completeness, agreement with side-cars of other
  pyramid levels; :func:`brief_summary`, what ``compute`` and ``run`` report.
* :mod:`~patchsieve.analysis.thresholds` -- :func:`suggest_threshold` from the stored region
  statistics (Otsu or a target background fraction), :func:`plot_threshold_histogram`,
  :func:`apply_threshold` (rewrites the decisions through the side-car writer).
* :mod:`~patchsieve.analysis.figures` -- :func:`plot_filter_maps`, CAREamics'
  ``plot_filter_map`` look for every filter, keep mask outlined; 2D, 3D and multichannel.
* :mod:`~patchsieve.analysis.preview` -- :func:`preview_patches` / :func:`plot_preview`: the
  first patches an epoch of :class:`~patchsieve.dataset.PatchDataset` yields.
* :mod:`~patchsieve.analysis.levels` -- filtering on a coarser pyramid level:
  :func:`level_patch_size`, :func:`level0_geometry`, :func:`region_index_map`,
  :func:`decisions_at`, :func:`decisions_at_level0`, :func:`level_agreement`.

matplotlib (and torch, for previews) are imported inside the functions that need them.
"""

from __future__ import annotations

from patchsieve.analysis.figures import plot_filter_maps
from patchsieve.analysis.levels import (
    decisions_at,
    decisions_at_level0,
    level0_geometry,
    level_agreement,
    level_patch_size,
    region_index_map,
)
from patchsieve.analysis.preview import plot_preview, preview_patches
from patchsieve.analysis.summary import (
    brief_summary,
    find_level_sidecars,
    sidecar_nbytes,
    summarize,
)
from patchsieve.analysis.thresholds import (
    ThresholdSuggestion,
    apply_threshold,
    plot_threshold_histogram,
    suggest_threshold,
    threshold_field,
)

__all__ = [
    "ThresholdSuggestion",
    "apply_threshold",
    "brief_summary",
    "decisions_at",
    "decisions_at_level0",
    "find_level_sidecars",
    "level0_geometry",
    "level_agreement",
    "level_patch_size",
    "plot_filter_maps",
    "plot_preview",
    "plot_threshold_histogram",
    "preview_patches",
    "region_index_map",
    "sidecar_nbytes",
    "suggest_threshold",
    "summarize",
    "threshold_field",
]
