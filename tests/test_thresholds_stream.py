"""Threshold tools read the statistics chunk by chunk and give the whole-array answers."""

from __future__ import annotations

import numpy as np
import pytest
import zarr

from patchsieve.analysis import thresholds as T
from patchsieve.analysis._common import _candidate_thresholds


def _chunked(values: np.ndarray, chunk: int) -> zarr.Array:
    a = zarr.create_array(zarr.storage.MemoryStore(), shape=values.shape, chunks=(chunk,),
                          dtype="f8", fill_value=np.nan)
    a[...] = values
    return a


@pytest.mark.parametrize("kind", ["normal", "few values", "rounded", "plateau", "nan"])
def test_quantile_and_otsu_equal_the_in_memory_ones(kind):
    from skimage.filters import threshold_otsu

    rng = np.random.default_rng(sum(map(ord, kind)))
    make = {"normal": lambda n: rng.normal(size=n),
            "few values": lambda n: rng.integers(0, 4, n).astype(float),
            "rounded": lambda n: np.round(rng.exponential(size=n), 2),
            "plateau": lambda n: np.where(rng.random(n) < 0.7, 2.5, rng.normal(size=n)),
            "nan": lambda n: np.where(rng.random(n) < 0.2, np.nan, rng.normal(size=n))}[kind]
    for _ in range(25):
        v = make(int(rng.integers(1, 2000)))
        arr = _chunked(v, int(rng.integers(1, 300)))
        f = v[np.isfinite(v)]
        if not f.size:
            continue
        n_f, lo, hi = T._finite_range(arr)
        assert (n_f, lo, hi) == (f.size, f.min(), f.max())
        for frac in (0.0, 1.0, 0.5, float(rng.random()), float(rng.random())):
            assert T._quantile_threshold(arr, n_f, lo, hi, frac) == \
                _candidate_thresholds(f, frac), frac
        if hi > lo:
            counts = T._histogram(arr, 256, lo, hi)
            e = np.linspace(lo, hi, 257)
            assert threshold_otsu(hist=(counts, (e[:-1] + e[1:]) / 2)) == threshold_otsu(f)


def test_quantile_narrows_in_on_many_values(monkeypatch):
    monkeypatch.setattr(T, "_SELECT_MAX", 500)  # force several histogram passes
    v = np.random.default_rng(7).normal(size=200_000).round(3)
    arr = _chunked(v, 7_000)
    for frac in (0.01, 0.5, 0.93):
        assert T._quantile_threshold(arr, v.size, v.min(), v.max(), frac) == \
            _candidate_thresholds(v, frac)
