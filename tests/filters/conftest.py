"""Oracles for the filter tests: CAREamics' per-region computations, written plainly."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from scipy.ndimage import maximum_filter
from skimage.measure import shannon_entropy


def _regions(image, ps, border="careamics"):
    img = np.asarray(image).astype(np.float32)
    grid = tuple((s + 1) // p for s, p in zip(img.shape, ps))
    for g in itertools.product(*(range(n) for n in grid)):
        sl = tuple(slice(gi * p, gi * p + 2 * p) for gi, p in zip(g, ps))
        part = img[sl]
        if border == "valid":
            yield g, part
            continue
        reg = np.zeros(tuple(2 * p for p in ps), np.float32)
        reg[tuple(slice(0, s) for s in part.shape)] = part
        yield g, reg


def _max_value(region, ps, coverage):
    filt = maximum_filter(region, ps)
    uniq, counts = np.unique(filt, return_counts=True)
    valid = np.where(np.cumsum(counts[::-1]) / filt.size >= coverage)[0]
    return float(uniq[::-1][valid[0]])


def oracle_values(image, ps, kind, coverage=None, border="careamics"):
    """Region values (grid_shape) computed region by region as CAREamics does."""
    img = np.asarray(image)
    grid = tuple((s + 1) // p for s, p in zip(img.shape, ps))
    out = np.zeros(grid + ((2,) if kind == "mean_std" else ()))
    cov = 0.5 ** len(ps) if coverage is None else coverage
    for g, reg in _regions(img, ps, border):
        if kind == "max":
            out[g] = _max_value(reg, ps, cov)
        elif kind == "mean_std":
            out[g] = (np.mean(reg), np.std(reg))
        elif kind == "shannon":
            out[g] = shannon_entropy(reg)
        elif kind == "mask":
            out[g] = np.count_nonzero(reg) / reg.size
        else:
            raise ValueError(kind)
    return out


def oracle_filter_map(values, shape, ps):
    """CAREamics' create_filter_map from region values (zero-initialised layers)."""
    nd = len(ps)
    maps = np.zeros((2**nd, *shape))
    for g in itertools.product(*(range(n) for n in values.shape[:nd])):
        for i, o in enumerate(itertools.product(*[[0, 1]] * nd)):
            sl = tuple(slice((gi + oi) * p, (gi + oi + 1) * p) for gi, oi, p in zip(g, o, ps))
            maps[(i, *sl)] = values[g]
    return maps.max(axis=0)


@pytest.fixture
def oracle():
    class Oracle:
        values = staticmethod(oracle_values)
        filter_map = staticmethod(oracle_filter_map)
        regions = staticmethod(_regions)

    return Oracle


@pytest.fixture
def rng():
    return np.random.default_rng(1234)

# with --doctest-modules, conftest modules are not collected as doctest modules
collect_ignore = ["conftest.py"]
