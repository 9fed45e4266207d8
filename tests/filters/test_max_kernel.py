"""The Max-coverage kernels (16-bit key path, float path, numpy path) vs a plain scipy oracle.

The oracle is written from the definition, region by region: zero-pad the region to ``2p``
per axis, ``F = scipy.ndimage.maximum_filter(region, size=p)`` (reflect mode), value = the
``k``-th largest entry of ``F`` with ``k = coverage_rank(coverage, F.size)``.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scipy.ndimage import maximum_filter

from patchsieve.filters import _jit
from patchsieve.filters import _kernels as K

needs_jit = pytest.mark.skipif(not _jit.AVAILABLE, reason="numba not installed")


def _oracle(slab, ps, n, coverage):
    """Max-coverage value of every region of ``slab`` (L, *spatial), from the definition."""
    L = slab.shape[0]
    out = np.zeros((L, *n))
    size = int(np.prod([2 * p for p in ps]))
    k = K.coverage_rank(coverage, size)
    for li in range(L):
        img = slab[li].astype(np.float32)
        for g in itertools.product(*(range(m) for m in n)):
            sl = tuple(slice(gi * p, gi * p + 2 * p) for gi, p in zip(g, ps))
            part = img[sl]
            reg = np.zeros(tuple(2 * p for p in ps), np.float32)
            reg[tuple(slice(0, s) for s in part.shape)] = part
            f = maximum_filter(reg, size=ps, mode="reflect")
            out[(li, *g)] = np.sort(f, axis=None)[size - k]
    return out


def _numpy_max(slab, ps, n, cov):
    old = _jit.AVAILABLE
    _jit.AVAILABLE = False
    try:
        return K.region_max_coverage(slab, ps, n, cov)
    finally:
        _jit.AVAILABLE = old


def _same_bits(a, b):
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(np.signbit(a), np.signbit(b))


_DTYPES = ["uint8", "uint16", "int8", "int16", "float32-int", "float32-negint", "float32"]


def _data(rng, shape, dtype, levels):
    """Random data with ``levels`` distinct values at most (ties), or the full range."""
    if dtype == "uint16" and levels == 0:
        x = rng.integers(0, 65536, shape)  # whole 16-bit range, 0 and 65535 included
        x.flat[0], x.flat[-1] = 0, 65535
        return x.astype(np.uint16)
    lv = levels or 200
    base = rng.integers(0, lv, shape)
    if dtype == "uint8":
        return (base * (255 // max(lv - 1, 1))).astype(np.uint8)
    if dtype == "uint16":
        return (base * 97).astype(np.uint16)
    if dtype == "int8":
        return (base % 256 - 128).astype(np.int8)
    if dtype == "int16":
        return (base * 131 - 20000).astype(np.int16)
    if dtype == "float32-int":
        return (base * 3 + 5).astype(np.float32)
    if dtype == "float32-negint":
        return (base * 7 - 300).astype(np.float32)
    return (base * 0.37 - 11.5).astype(np.float32)  # not integer-valued: the float path


@needs_jit
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    nd=st.sampled_from([2, 3]), dims=st.lists(st.integers(1, 40), min_size=3, max_size=3),
    pss=st.lists(st.integers(1, 9), min_size=3, max_size=3), L=st.integers(1, 2),
    dtype=st.sampled_from(_DTYPES), levels=st.sampled_from([0, 1, 2, 3, 50]),
    cov=st.one_of(st.sampled_from([0.0, 0.125, 0.25, 0.5, 1.0]), st.floats(0, 1)),
    seed=st.integers(0, 2**16),
)
def test_max_coverage_equals_scipy_oracle(nd, dims, pss, L, dtype, levels, cov, seed):
    rng = np.random.default_rng(seed)
    ps = tuple(pss[:nd])
    shape = tuple(max(d, p) for d, p in zip(dims[:nd], ps))  # at least one region per axis
    if nd == 3:
        shape = (min(shape[0], 20), *shape[1:])
        ps = (min(ps[0], shape[0]), *ps[1:])
    n = tuple((s + 1) // p for s, p in zip(shape, ps))
    slab = _data(rng, (L, *shape), dtype, levels)
    got = K.region_max_coverage(slab, ps, n, cov)
    _same_bits(got, _oracle(slab, ps, n, cov))
    _same_bits(got, _numpy_max(slab.astype(np.float32), ps, n, cov))


@needs_jit
@pytest.mark.parametrize("dtype", _DTYPES)
@pytest.mark.parametrize(
    ("shape", "ps"),
    [((48, 70, 90), (16, 16, 32)), ((5, 17, 23), (2, 4, 6)), ((9, 30, 20), (4, 8, 8)),
     ((3, 8, 8), (1, 1, 1)), ((130, 70), (64, 32)), ((37, 29), (5, 7)), ((8, 8), (1, 1)),
     ((65, 65), (64, 64))],
)
def test_max_coverage_edge_regions_and_dtypes(rng, dtype, shape, ps):
    slab = _data(rng, (2, *shape), dtype, 40)
    n = tuple((s + 1) // p for s, p in zip(shape, ps))
    for cov in (0.0, 0.1, 0.125, 0.25, 0.5, 0.9, 1.0):
        _same_bits(K.region_max_coverage(slab, ps, n, cov), _oracle(slab, ps, n, cov))


@needs_jit
def test_key_path_is_taken_for_integer_data_only(rng):
    assert K._uint16_keys(rng.integers(0, 9, (1, 4, 4)).astype(np.uint16)) is not None
    assert K._uint16_keys(rng.integers(-9, 9, (1, 4, 4)).astype(np.float32)) is not None
    assert K._uint16_keys(rng.normal(0, 1, (1, 4, 4)).astype(np.float32)) is None
    assert K._uint16_keys(np.array([[[0.0, 70000.0]]], np.float32)) is None  # range > 16 bits
    assert K._uint16_keys(np.array([[[-0.0, 3.0]]], np.float32)) is None  # -0.0 keeps its bits
    keys, lo = K._uint16_keys(np.array([[[-5, 7]]], np.int16))
    assert lo == -5 and keys.tolist() == [[[0, 12]]]


@needs_jit
def test_negative_zero_keeps_its_bits():
    x = np.zeros((1, 16, 16), np.float32)
    x[0, :8, :8] = -0.0
    x[0, 12:, 12:] = -3.0
    got = K.region_max_coverage(x, (4, 4), (4, 4), 0.25)
    _same_bits(got, K._max_coverage_jit(x, (4, 4), (4, 4), 0.25))


@needs_jit
@settings(max_examples=50, deadline=None)
@given(
    rows=st.integers(1, 70), R2=st.sampled_from([1, 2, 6, 128]), n2=st.integers(1, 4),
    hi=st.sampled_from([0, 1, 5, 1000, 65535]), seed=st.integers(0, 2**16),
    guess=st.sampled_from(["exact", "low", "high", "out"]),
)
def test_counting_search_any_guess(rows, R2, n2, hi, seed, guess):
    """The galloping/bisection search is exact whatever its first guess."""
    rng = np.random.default_rng(seed)
    M = rng.integers(0, hi + 1, (rows, n2 * R2)).astype(np.uint16)
    segs = [np.sort(M[:, b * R2:(b + 1) * R2], axis=None)[::-1] for b in range(n2)]
    N = rows * R2
    k = int(rng.integers(1, N + 1))
    want = np.array([s[k - 1] for s in segs], np.int64)
    lo = np.zeros(n2, np.int64)
    hi_ = np.full(n2, 65535, np.int64)
    g = {"exact": want, "low": want - 7, "high": want + 300, "out": np.full(n2, 70000)}[guess]
    w = [np.empty(n2, t) for t in (np.uint16, np.bool_, np.int64, np.int64)]
    _jit._search(M, 1, R2, k, lo, hi_, g.astype(np.int64), *w, False)
    np.testing.assert_array_equal(lo, want)
    np.testing.assert_array_equal(hi_, want)
    out = np.empty(n2, np.int64)
    e = [np.empty(n2, np.int64) for _ in range(3)]
    _jit._select_segments(M, R2, k, out, *e, *w)
    np.testing.assert_array_equal(out, want)
