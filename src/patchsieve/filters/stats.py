"""Region statistics by name: input checks, stat names, the statistic dispatcher, ties, and the
CAREamics filter-map expansion.

Shared by the four filters and by the region graphs of :mod:`patchsieve.regions` (which
compute the same statistics block by block)."""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Mapping, Sequence
from typing import Literal

import numpy as np
from numpy.typing import ArrayLike, NDArray

from patchsieve.errors import ConfigError, DataError, PatchsieveWarning
from patchsieve.filters import _kernels as K
from patchsieve.filters._max_train import region_max_coverage_constant
from patchsieve.grid import BORDERS, Border, RegionGrid, check_border  # noqa: F401 - re-exported

logger = logging.getLogger(__name__)

Ties = Literal["careamics", "keep", "drop"]

TIES: tuple[str, ...] = ("careamics", "keep", "drop")


# --------------------------------------------------------------------------- validation
def check_ties(ties: str) -> Ties:
    """Validate the ``ties`` option."""
    if ties not in TIES:
        raise ConfigError(f"ties must be one of {TIES}; got {ties!r}.")
    return ties  # type: ignore[return-value]


def check_threshold(name: str, value: float | None, *, allow_none: bool = False) -> float | None:
    """A finite float threshold (``None`` passes only when ``allow_none``)."""
    if value is None:
        if allow_none:
            return None
        raise ConfigError(f"{name} is required; got None.")
    try:
        v = float(value)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"{name} must be a number; got {value!r}.") from err
    if math.isnan(v) or math.isinf(v):
        raise ConfigError(f"{name} must be a finite number; got {value!r}.")
    return v


def check_coverage(coverage: float, name: str = "coverage") -> float:
    """A coverage in ``[0, 1]``."""
    v = check_threshold(name, coverage)
    assert v is not None
    if not 0.0 <= v <= 1.0:
        raise ConfigError(f"{name} must be in [0, 1]; got {coverage!r}. Fix: use e.g. 0.25.")
    return v


def check_dtype(arr: np.ndarray, *, what: str, allow_bool: bool) -> None:
    """Reject dtypes CAREamics cannot filter: complex, object, strings, bool (data)."""
    k = arr.dtype.kind
    if k == "b" and not allow_bool:
        raise DataError(
            f"{what} has dtype bool; boolean data can only be used as a mask. "
            "Fix: use MaskPatchFilter, or cast the data to a numeric dtype."
        )
    if k not in "biuf":
        raise DataError(
            f"{what} has unsupported dtype {arr.dtype}; expected integer, float"
            f"{' or bool' if allow_bool else ''} data."
        )


def check_finite(x: NDArray[np.floating], *, what: str, dims: Sequence[str] = ()) -> None:
    """Raise :class:`DataError` naming the first NaN/inf pixel (policy: never filtered)."""
    if x.dtype.kind != "f":
        return
    if np.isfinite(x).all():
        return
    bad = np.argwhere(~np.isfinite(x))[0]
    where = ", ".join(
        f"{d}={int(i)}" for d, i in zip(dims or [f"axis{j}" for j in range(x.ndim)], bad)
    )
    raise DataError(
        f"{what} contains NaN or inf (first at {where}: {x[tuple(bad)]!r}); patchsieve does "
        "not filter non-finite data. Fix: replace them (e.g. np.nan_to_num) before filtering."
    )


def check_mask_values(m: np.ndarray, *, what: str = "mask") -> None:
    """A mask must hold only 0/1 (or bool)."""
    if m.dtype.kind == "b":
        return
    check_dtype(m, what=what, allow_bool=True)
    ok = (m == 0) | (m == 1)
    if not ok.all():
        bad = np.argwhere(~ok)[0]
        raise DataError(
            f"{what} must be binary (0/1 or bool); found {m[tuple(bad)]!r} at index "
            f"{tuple(int(i) for i in bad)}. Fix: pass mask > 0 or a boolean array."
        )


def as_image(
    image: ArrayLike, *, what: str = "image", mask: bool = False
) -> NDArray[np.float32]:
    """Validate a 2D (YX) / 3D (ZYX) image and return it as float32 (CAREamics' cast)."""
    arr = np.asarray(image)
    if arr.ndim not in (2, 3):
        raise DataError(
            f"{what} must be 2D (YX) or 3D (ZYX); got shape {arr.shape}. "
            "Fix: select one sample/channel, e.g. img[4]."
        )
    if arr.size == 0:
        raise DataError(f"{what} is empty (shape {arr.shape}).")
    check_dtype(arr, what=what, allow_bool=mask)
    if mask:
        check_mask_values(arr, what=what)
    with np.errstate(over="ignore", invalid="ignore"):
        out = arr.astype(np.float32, copy=False)
    check_finite(out, what=what, dims=("z", "y", "x")[-arr.ndim:])
    return out


def as_patch(patch: ArrayLike, *, mask: bool = False) -> np.ndarray:
    """Validate a region passed to ``filter_out``: non-empty, numeric (bool only for the
    Mask filter), finite; returned as an array (dtype unchanged, as CAREamics sees it)."""
    p = np.asarray(patch)
    if p.size == 0:
        raise DataError(f"patch is empty (shape {p.shape}). Fix: pass a non-empty region.")
    check_dtype(p, what="patch", allow_bool=mask)
    if mask:
        check_mask_values(p, what="patch")
    else:
        check_finite(p, what="patch")
    return p


def grid_for(image_shape: Sequence[int], patch_size: Sequence[int]) -> RegionGrid:
    """The region grid of an image, with one clear error for bad patch sizes."""
    if isinstance(patch_size, (int, np.integer)) or not hasattr(patch_size, "__len__"):
        raise ConfigError(
            f"patch_size must be a sequence with one entry per spatial dim of the image "
            f"(shape {tuple(image_shape)}); got {patch_size!r}."
        )
    return RegionGrid(image_shape, patch_size)


# --------------------------------------------------------------------------- stat names
def max_stat_name(coverage: float) -> str:
    """Stat name of the Max filter value at a coverage: ``"max_cov0.25"``."""
    return f"max_cov{float(coverage)!r}"


def max_train_stat_name(coverage: float) -> str:
    """Stat name of CAREamics' training-path Max value at a coverage: ``"max_train_cov0.25"``
    (``MaxPatchFilter.filter_out``'s constant-mode filter; quirk B10)."""
    return f"max_train_cov{float(coverage)!r}"


def parse_stat(name: str) -> tuple[str, float | None]:
    """Split a stat name into (kind, coverage)."""
    for kind in ("max_train_cov", "max_cov"):  # the longer prefix first
        if name.startswith(kind):
            try:
                cov = float(name[len(kind):])
            except ValueError as err:
                raise ConfigError(f"bad stat name {name!r}; expected e.g. '{kind}0.25'.") from err
            return kind, check_coverage(cov)
    if name in ("mean", "std", "entropy", "mask_coverage", "max"):
        return name, None
    raise ConfigError(
        f"unknown stat {name!r}; expected 'max_cov<coverage>', 'max_train_cov<coverage>', "
        "'mean', 'std', 'entropy', 'mask_coverage' or 'max'."
    )


def compute_stats(
    slab: NDArray[np.floating],
    patch_size: Sequence[int],
    n: Sequence[int],
    stats: Sequence[str],
    border: Border = "careamics",
) -> dict[str, NDArray[np.float64]]:
    """Compute the named region statistics of a slab (see :mod:`patchsieve.filters.kernels`)."""
    out: dict[str, NDArray[np.float64]] = {}
    # reflect-mode Max values first: the training-path ones reuse them
    parsed = sorted(((s, *parse_stat(s)) for s in stats), key=lambda t: t[1] == "max_train_cov")
    for name, kind, cov in parsed:
        if name in out:
            continue
        if kind == "max_cov":
            assert cov is not None
            out[name] = K.region_max_coverage(slab, patch_size, n, cov, border)
        elif kind in ("mean", "std"):
            m, s = K.region_mean_std(slab, patch_size, n, border)
            if "mean" in stats:
                out["mean"] = m
            if "std" in stats:
                out["std"] = s
        elif kind == "entropy":
            out[name] = K.region_entropy(slab, patch_size, n, border)
            _warn_float_entropy(slab, out[name], patch_size, border)
        elif kind == "mask_coverage":
            out[name] = K.region_count_nonzero(slab, patch_size, n, border)
        elif kind == "max":
            out[name] = K.region_max(slab, patch_size, n)
        elif kind == "max_train_cov":
            assert cov is not None
            reflect = out.get(max_stat_name(cov))  # computed first when both are asked for
            out[name] = region_max_coverage_constant(slab, patch_size, n, cov, border, reflect)
        else:  # pragma: no cover - parse_stat already rejects
            raise ConfigError(f"unknown stat {name!r}")
    return out


def _warn_float_entropy(slab, ent, patch_size, border) -> None:
    """Quirk B5: entropy of float data with all-unique values is ~log2(#pixels)."""
    if ent.size == 0 or K.is_integer_valued(slab):
        return
    full = math.log2(float(np.prod([2 * p for p in patch_size])))
    if float(np.max(ent)) >= full - 0.05:
        warnings.warn(
            "Shannon entropy on float data where nearly every value is unique: region "
            f"entropies reach {float(np.max(ent)):.3f} of a possible {full:.3f} bits, so "
            "the filter mostly measures zero padding (CAREamics quirk B5). Fix: round or "
            "quantise the data (e.g. np.rint) or use the Max/MeanStd filter.",
            PatchsieveWarning,
            stacklevel=3,
        )


def image_stats(
    image: NDArray[np.float32],
    patch_size: Sequence[int],
    stats: Sequence[str],
    border: Border = "careamics",
) -> dict[str, NDArray[np.float64]]:
    """Region statistics of one validated (Z)YX image, each of shape ``grid_shape``."""
    grid = grid_for(image.shape, patch_size)
    res = compute_stats(image[None], grid.patch_size, grid.grid_shape, stats, border)
    return {k: v[0] for k, v in res.items()}


# --------------------------------------------------------------------------- decisions
def keep_mask(values: ArrayLike, threshold: float, ties: Ties, *, strict_default: bool):
    """``values > thr`` or ``values >= thr``; CAREamics' choice is ``strict_default``."""
    v = np.asarray(values)
    strict = strict_default if ties == "careamics" else ties == "drop"
    return v > threshold if strict else v >= threshold


def expand_region_values(
    values: ArrayLike,
    image_shape: Sequence[int],
    patch_size: Sequence[int],
    out: NDArray[np.float64] | None = None,
) -> NDArray[np.float64]:
    """CAREamics' per-pixel filter map from region values.

    Each pixel gets the maximum of the values of the ``2**ndim`` regions covering its
    block; a region index outside the grid counts as 0 (CAREamics builds the map from
    zero-initialised layers), so pixels covered by fewer regions get ``max(..., 0)``
    and pixels covered by none stay 0.

    Parameters
    ----------
    values : array_like, shape ``grid_shape``
    image_shape : sequence of int
    patch_size : sequence of int
    out : numpy.ndarray of float64, optional
        Written in place when given (shape ``image_shape``).

    Returns
    -------
    numpy.ndarray of float64, shape ``image_shape``
    """
    v = np.asarray(values, dtype=np.float64)
    nd = len(patch_size)
    nblocks = tuple(-(-s // p) for s, p in zip(image_shape, patch_size))
    # padded values: index b + 1 holds region b; out-of-grid entries are 0
    padded = np.zeros(tuple(max(nb, g) + 2 for nb, g in zip(nblocks, v.shape)), np.float64)
    padded[tuple(slice(1, 1 + g) for g in v.shape)] = v
    blocks = None
    for o in np.ndindex(*(2,) * nd):
        # block b gets region b - o, i.e. padded index b - o + 1
        sl = tuple(slice(1 - oi, 1 - oi + nb) for oi, nb in zip(o, nblocks))
        blocks = padded[sl].copy() if blocks is None else np.maximum(blocks, padded[sl])
    assert blocks is not None
    # one broadcast write: (nb0, 1, nb1, 1, ...) -> (nb0, p0, nb1, p1, ...)
    full = tuple(nb * p for nb, p in zip(nblocks, patch_size))
    split = [x for nb, p in zip(nblocks, patch_size) for x in (nb, p)]
    src = blocks.reshape([x for nb in nblocks for x in (nb, 1)])
    if full == tuple(image_shape):
        res = np.empty(full, dtype=np.float64) if out is None else out
        res.reshape(split)[...] = src
        return res
    tmp = np.empty(full, dtype=np.float64)
    tmp.reshape(split)[...] = src
    crop = tmp[tuple(slice(0, s) for s in image_shape)]
    if out is None:
        return np.ascontiguousarray(crop)
    out[...] = crop
    return out


def stat_values(stats: Mapping[str, ArrayLike], name: str) -> NDArray[np.float64]:
    """Fetch a stat by name with a clear error when it is missing."""
    if name not in stats:
        raise ConfigError(
            f"region stats lack {name!r} (have {sorted(stats)}). Fix: compute it with "
            "region_stats(..., stats=required_stats(config, ndim))."
        )
    return np.asarray(stats[name], dtype=np.float64)


def threshold_map(filter_map: ArrayLike, threshold: float, ties: str) -> NDArray[np.bool_]:
    """The one-threshold ``apply_filter`` shared by Max, Shannon and Mask: ``filter_map > threshold``
    (CAREamics drops at equality; ``ties="keep"`` keeps)."""
    thr = check_threshold("threshold", threshold)
    if thr is None:  # pragma: no cover - check_threshold rejects None here
        raise ConfigError("threshold is required; got None.")
    return keep_mask(filter_map, thr, check_ties(ties), strict_default=True)
