"""Deterministic synthetic image generators (the demo data and the benchmark data share them).

Two families:

* the demo datasets of :func:`~patchsieve.demo.write_demo_data` (``hagen_*``: a Hagen-like 2D
  stack of camera counts; ``vol_*``: a two-channel 3D volume and its mask), generated block by
  block from seeded :class:`numpy.random.Generator` objects, with ``block_info`` signatures for
  ``dask.array.map_blocks``;
* the CAREamics reference data (:func:`reference_slices` is bit for bit the generator of
  ``shared/careamics_reference/make_data.py``'s ``hagen_like_2d.npy``, the anchor of the
  CAREamics comparisons), :func:`two_channel_volume` and :class:`BlobField` /
  :func:`blob_chunk` (large uint16 volumes generated chunk by chunk, seamless across chunks).

Background ~ Poisson(100) + read noise (sigma 5); bright blobby structures (amplitude 900).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence

import numpy as np
from scipy import ndimage as ndi

KIND_ID = {"hagen2d": 1, "vol3d2c": 2}
BG, AMP, READ_SIGMA = 100.0, 900.0, 5.0
#: structure fraction of the reference data (make_data.py)
REF_FRAC = 0.25


# ----------------------------------------------------------------------------- demo data
def _lowres_field(
    rng: np.random.Generator, small_shape: tuple[int, ...], sigma: float
) -> np.ndarray:
    """Smooth periodic Gaussian random field on a coarse grid."""
    return ndi.gaussian_filter(rng.standard_normal(small_shape), sigma, mode="wrap")


def _structure(
    small: np.ndarray, factors: tuple[int, ...], frac: float, region: tuple[slice, ...]
) -> np.ndarray:
    """Upsample ``small`` over ``region`` (linear, periodic) and map to blobs in [0, 1].

    About ``frac`` of the volume is > 0 (threshold = the (1 - frac) quantile of ``small``).
    Only ``region`` is computed, so blocks are independent of each other.
    """
    thr = np.quantile(small, 1.0 - frac)
    top = float(small.max()) - thr
    field = small
    for axis, (sl, f) in enumerate(zip(region, factors, strict=True)):
        weights = _linear_weights(small.shape[axis], f, sl)
        field = np.moveaxis(np.tensordot(weights, field, axes=([1], [axis])), 0, axis)
    return np.sqrt(np.clip(field - thr, 0.0, None) / top)


def _linear_weights(n_small: int, factor: int, sl: slice) -> np.ndarray:
    """Periodic linear-interpolation weights (rows: output pixels of ``sl``; cols: coarse grid).

    Row ``o`` samples the coarse grid at ``(o + 0.5) / factor - 0.5`` with wrap-around, as
    ``scipy.ndimage.zoom(..., order=1, mode="grid-wrap", grid_mode=True)`` does; applied axis by
    axis (the interpolation is separable).
    """
    pos = (np.arange(sl.start, sl.stop, dtype=np.float64) + 0.5) / factor - 0.5
    left = np.floor(pos)
    frac = pos - left
    weights = np.zeros((pos.size, n_small))
    rows = np.arange(pos.size)
    np.add.at(weights, (rows, left.astype(int) % n_small), 1.0 - frac)
    np.add.at(weights, (rows, (left.astype(int) + 1) % n_small), frac)
    return weights


def _counts(rng: np.random.Generator, clean: np.ndarray) -> np.ndarray:
    """Camera-like integer counts: Poisson shot noise plus rounded Gaussian read noise."""
    out = rng.poisson(clean).astype(np.float64)
    out += np.rint(rng.normal(0.0, READ_SIGMA, size=clean.shape))
    return np.clip(out, 0.0, None)


def _coarse_factor(yx: Sequence[int]) -> int:
    """Upsampling factor of the coarse 'cell' field: 128 px, smaller for small images."""
    for factor in (128, 64, 32):
        if all(n % factor == 0 and n // factor >= 4 for n in yx):
            return factor
    return 16


def hagen_signal(
    seed: int, sample: int, yx: Sequence[int], region: tuple[slice, ...]
) -> np.ndarray:
    """Noise-free photon rate of one sample over ``region``.

    Coarse "cells" cover ~30 % of the area (soft edges); inside them a finer texture spans
    10-100 % of the amplitude, so structure regions hold many distinct count values (high
    entropy) and background regions hold Poisson(100) + read noise only (~5.5 bits).
    """
    rng = np.random.default_rng([seed, KIND_ID["hagen2d"], sample])
    coarse = _coarse_factor(yx)
    cells = _lowres_field(rng, (yx[0] // coarse, yx[1] // coarse), 1.0)
    texture = _lowres_field(rng, (yx[0] // 8, yx[1] // 8), 1.5)
    cell = np.clip(4.0 * _structure(cells, (coarse, coarse), 0.3, region), 0.0, 1.0)
    fine = _structure(texture, (8, 8), 0.95, region)
    return BG + AMP * cell * (0.1 + 0.9 * fine)


def hagen_block(seed: int, yx: tuple[int, int], block_info: dict | None = None) -> np.ndarray:
    """One (1, h, w) block of the Hagen-like stack (float32 integer counts)."""
    loc = block_info[None]["array-location"]
    chunk = block_info[None]["chunk-location"]
    region = tuple(slice(a, b) for a, b in loc[1:])
    clean = hagen_signal(seed, loc[0][0], yx, region)
    rng = np.random.default_rng([seed, KIND_ID["hagen2d"], loc[0][0], *chunk[1:], 7])
    return _counts(rng, clean).astype(np.float32)[None]


def vol_fields(seed: int, zyx: tuple[int, int, int]) -> tuple[np.ndarray, np.ndarray]:
    small_shape = (max(zyx[0] // 4, 1), max(zyx[1] // 16, 1), max(zyx[2] // 16, 1))
    rng = np.random.default_rng([seed, KIND_ID["vol3d2c"]])
    return _lowres_field(rng, small_shape, 1.5), _lowres_field(rng, small_shape, 1.5)


def vol_signal(
    f0: np.ndarray, f1: np.ndarray, channel: int, region: tuple[slice, ...]
) -> np.ndarray:
    s0 = _structure(f0, (4, 16, 16), 0.08, region)
    if channel == 0:
        return BG + AMP * s0
    s1 = _structure(f1, (4, 16, 16), 0.45, region)
    return BG + 0.5 * AMP * np.clip(0.5 * s0 + 0.7 * s1, 0.0, 1.0)


def vol_block(
    f0: np.ndarray, f1: np.ndarray, seed: int, block_info: dict | None = None
) -> np.ndarray:
    """One (1, dz, h, w) block of the two-channel volume."""
    loc = block_info[None]["array-location"]
    chunk = block_info[None]["chunk-location"]
    region = tuple(slice(a, b) for a, b in loc[1:])
    clean = vol_signal(f0, f1, loc[0][0], region)
    rng = np.random.default_rng([seed, KIND_ID["vol3d2c"], *chunk, 11])
    return np.rint(_counts(rng, clean)).clip(0, 65535).astype(np.uint16)[None]


def mask_block(f0: np.ndarray, block_info: dict | None = None) -> np.ndarray:
    region = tuple(slice(a, b) for a, b in block_info[None]["array-location"])
    return (_structure(f0, (4, 16, 16), 0.08, region) > 0.1).astype(np.uint8)


# ----------------------------------------------------------------------------- reference data
# structure_field / noisy / reference_slices: from shared/careamics_reference/make_data.py (the
# CAREamics anchoring data of this project), kept identical so that ``reference_slices`` equals
# hagen_like_2d.npy bit for bit.
def structure_field(rng: np.random.Generator, shape: tuple[int, ...], lowres: tuple[int, ...],
                    frac: float = REF_FRAC, sigma: float = 2.0) -> np.ndarray:
    """Smooth random field in [0, 1]; about ``frac`` of the voxels are > 0 (from make_data.py)."""
    small_shape = tuple(s // f for s, f in zip(shape, lowres, strict=False))
    small = rng.standard_normal(small_shape)
    small = ndi.gaussian_filter(small, sigma, mode="wrap")
    field = ndi.zoom(small, lowres, order=1, mode="grid-wrap", grid_mode=True)
    field = field[tuple(slice(0, s) for s in shape)]
    thr = np.quantile(field, 1.0 - frac)
    s = np.clip(field - thr, 0, None)
    s /= s.max()
    return np.sqrt(s)  # blobby plateaus with soft edges


def noisy(rng: np.random.Generator, clean: np.ndarray) -> np.ndarray:
    """Poisson shot noise plus Gaussian read noise, float32 (from make_data.py)."""
    out = rng.poisson(clean).astype(np.float32)
    out += rng.normal(0.0, READ_SIGMA, size=clean.shape).astype(np.float32)
    return out


def reference_slices(n: int = 79, yx: tuple[int, int] = (1024, 1024),
                 seed: int = 0) -> Iterator[np.ndarray]:
    """Yield the slices of make_data.py's ``make_2d_stack`` one by one (same rng sequence)."""
    rng = np.random.default_rng(seed)
    for _ in range(n):
        s = structure_field(rng, yx, (16, 16))
        yield noisy(rng, BG + AMP * s)


def two_channel_volume(shape_czyx: tuple[int, ...], seed: int = 1) -> np.ndarray:
    """Two-channel uint16 CZYX volume; channel 1 (the reference) is the denser one.

    Channel 0 has ~12% foreground, channel 1 ~35% (partly overlapping channel 0's structures).
    """
    c, *zyx = shape_czyx
    if c != 2:
        raise ValueError(f"shape {shape_czyx} must have 2 channels first (C,Z,Y,X)")
    zyx = tuple(zyx)
    rng = np.random.default_rng(seed)
    lowres = tuple(max(1, min(f, s)) for f, s in zip((4, 16, 16), zyx, strict=True))
    padded = tuple(-(-s // f) * f for s, f in zip(zyx, lowres, strict=True))  # multiples
    crop = tuple(slice(0, s) for s in zyx)
    s0 = structure_field(rng, padded, lowres, frac=0.12, sigma=1.5)[crop]
    s1 = structure_field(rng, padded, lowres, frac=0.35, sigma=1.5)[crop]
    s1 = np.maximum(s1, 0.6 * s0)
    out = np.empty((2, *zyx), np.uint16)
    for ch, (s, amp) in enumerate(((s0, AMP), (s1, 0.7 * AMP))):
        out[ch] = np.clip(np.rint(noisy(rng, BG + amp * s)), 0, 65535)
    return out


class BlobField:
    """Global low-resolution structure field, linearly interpolated per chunk (seamless)."""

    def __init__(self, shape: tuple[int, ...], seed: int, lowres: tuple[int, ...] = (4, 16, 16),
                 frac: float = REF_FRAC) -> None:
        lowres = tuple(lowres[-len(shape):]) if len(shape) <= len(lowres) else \
            (1,) * (len(shape) - len(lowres)) + tuple(lowres)
        self.lowres = tuple(max(1, min(f, s)) for f, s in zip(lowres, shape, strict=False))
        small_shape = tuple(math.ceil(s / f) + 1 for s, f in zip(shape, self.lowres, strict=False))
        rng = np.random.default_rng([seed, 0])
        small = ndi.gaussian_filter(rng.standard_normal(small_shape), 1.5, mode="wrap")
        thr = np.quantile(small, 1.0 - frac)
        s = np.clip(small - thr, 0, None)
        s /= max(float(s.max()), 1e-12)
        self.small = np.sqrt(s).astype(np.float32)

    def block(self, start: tuple[int, ...], stop: tuple[int, ...]) -> np.ndarray:
        """The field over ``[start, stop)`` at full resolution (separable linear interpolation)."""
        out = self.small
        lo = [int(a // f) for a, f in zip(start, self.lowres, strict=False)]
        hi = [int((b - 1) // f) + 2 for b, f in zip(stop, self.lowres, strict=False)]
        out = out[tuple(slice(a, b) for a, b in zip(lo, hi, strict=False))]
        for ax, (a, b, f, l0) in enumerate(zip(start, stop, self.lowres, lo, strict=False)):
            pos = np.arange(a, b, dtype=np.float64) / f - l0
            i0 = np.floor(pos).astype(np.intp)
            w = (pos - i0).astype(np.float32)
            shp = [1] * out.ndim
            shp[ax] = -1
            w = w.reshape(shp)
            out = np.take(out, i0, axis=ax) * (1 - w) + np.take(out, i0 + 1, axis=ax) * w
        return out


def blob_chunk(field: BlobField, seed: int, index: int, start: tuple[int, ...],
               stop: tuple[int, ...]) -> np.ndarray:
    """uint16 chunk ``index`` over ``[start, stop)``: the field's blobs on a Poisson-like
    background (one Gaussian draw of the Poisson + read-noise variance), seeded per chunk."""
    rng = np.random.default_rng([seed, 1, index])
    clean = BG + AMP * field.block(start, stop)
    # Poisson(clean) + N(0, READ_SIGMA) approximated by one Gaussian draw of the same variance
    noise = rng.standard_normal(clean.shape, dtype=np.float32)
    noise *= np.sqrt(clean + READ_SIGMA**2)
    clean += noise
    np.rint(clean, out=clean)
    np.clip(clean, 0, 65535, out=clean)
    return clean.astype(np.uint16)


def poisson_blobs(n: int, shape: Sequence[int], seed: int = 0, *, photons: float = 10.0,
                  background: float = 1.0, blobs_per_mpx: float = 2000.0
                  ) -> tuple[np.ndarray, np.ndarray]:
    """Low-count denoising pairs: Gaussian blobs and their Poisson-noisy images.

    Each image holds round blobs (sigma 1.5-4 px, peak ``photons`` photons on average) on a
    constant ``background``; the noisy image is ``Poisson(clean)``: shot noise only, no read
    noise, as in N2V's low-light benchmarks. Used by the CAREamics training benchmarks and
    tests.

    Parameters
    ----------
    n : int
        Number of images.
    shape : sequence of int
        (Y, X) or (Z, Y, X) of every image.
    seed : int
        Seed of the blob positions and of the noise.
    photons, background : float
        Mean blob peak and background, in photons per pixel.
    blobs_per_mpx : float
        Blob density per million pixels.

    Returns
    -------
    (clean, noisy) : float32 arrays of shape ``(n, *shape)``

    Examples
    --------
    >>> clean, noisy = poisson_blobs(2, (32, 32), seed=1)
    >>> clean.shape, noisy.dtype.name, bool((noisy == np.rint(noisy)).all())
    ((2, 32, 32), 'float32', True)
    """
    rng = np.random.default_rng([seed, 0xB10B])
    shape = tuple(int(s) for s in shape)
    grids = np.meshgrid(*[np.arange(s, dtype=np.float32) for s in shape], indexing="ij")
    clean = np.full((n, *shape), background, np.float32)
    k = max(1, int(round(blobs_per_mpx * float(np.prod(shape)) / 1e6)))
    for i in range(n):
        for _ in range(k):
            center = [rng.uniform(0, s) for s in shape]
            sigma = rng.uniform(1.5, 4.0)
            amp = photons * rng.uniform(0.5, 1.5)
            r2 = sum((g - c) ** 2 for g, c in zip(grids, center))
            clean[i] += (amp * np.exp(-r2 / (2 * sigma * sigma))).astype(np.float32)
    noisy = rng.poisson(clean).astype(np.float32)
    return clean, noisy
