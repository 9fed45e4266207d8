"""Region-statistic kernels vs plain per-region oracles (scipy / numpy / skimage)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from patchsieve.errors import PatchsieveWarning
from patchsieve.filters import (
    MaskPatchFilter,
    MaxPatchFilter,
    MeanStdPatchFilter,
    ShannonPatchFilter,
    _jit,
)
from patchsieve.filters import _kernels as K

SHAPES_2D = [((64, 64), (32, 32)), ((100, 70), (16, 32)), ((63, 40), (8, 8)), ((8, 8), (8, 8)),
             ((65, 65), (64, 64)), ((37, 29), (5, 7))]
SHAPES_3D = [((16, 32, 32), (8, 16, 16)), ((9, 30, 20), (4, 8, 8)), ((5, 17, 23), (2, 4, 6))]


def _image(rng, shape, kind):
    if kind == "float":
        return (rng.normal(100, 20, shape)).astype(np.float32)
    if kind == "int":
        return rng.integers(0, 50, shape).astype(np.uint16)
    if kind == "negative":
        return rng.normal(-5, 3, shape).astype(np.float32)
    if kind == "ties":
        return (rng.integers(0, 3, shape) * 0.5).astype(np.float32)
    raise ValueError(kind)


@pytest.mark.parametrize(("shape", "ps"), SHAPES_2D + SHAPES_3D)
@pytest.mark.parametrize("kind", ["float", "int", "negative", "ties"])
@pytest.mark.parametrize("border", ["careamics", "valid"])
@pytest.mark.parametrize("jit", [True, False], ids=["jit", "numpy"])
def test_region_values_match_oracle(oracle, rng, shape, ps, kind, border, jit, monkeypatch):
    if jit and not _jit.AVAILABLE:
        pytest.skip("numba not installed")
    monkeypatch.setattr(_jit, "AVAILABLE", jit)
    img = _image(rng, shape, kind)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PatchsieveWarning)
        for cov in (None, 0.5, 0.0, 1.0):
            got = MaxPatchFilter.region_values(img, ps, cov, border=border)
            np.testing.assert_array_equal(got, oracle.values(img, ps, "max", cov, border))
        got = np.moveaxis(MeanStdPatchFilter.region_values(img, ps, border=border), 0, -1)
        np.testing.assert_allclose(got, oracle.values(img, ps, "mean_std", border=border),
                                   rtol=2e-6, atol=1e-4)
        got = ShannonPatchFilter.region_values(img, ps, border=border)
        np.testing.assert_allclose(got, oracle.values(img, ps, "shannon", border=border),
                                   rtol=1e-12, atol=1e-12)
    m = img > np.median(img)
    got = MaskPatchFilter.region_values(m, ps, border=border)
    np.testing.assert_array_equal(got, oracle.values(m, ps, "mask", border=border))


@pytest.mark.parametrize(("shape", "ps"), SHAPES_2D[:3] + SHAPES_3D[:2])
def test_filter_map_expansion_matches_careamics(oracle, rng, shape, ps):
    img = _image(rng, shape, "negative")  # negative values show the zero-initialised quirk
    vals = MeanStdPatchFilter.region_values(img, ps)[0]
    np.testing.assert_array_equal(
        MeanStdPatchFilter.filter_map(img, ps)[0], oracle.filter_map(vals, shape, ps)
    )
    assert MeanStdPatchFilter.filter_map(img, ps)[0].dtype == np.float64


def test_coverage_rank_matches_float_rule():
    for n in (1, 7, 100, 16384, 524288):
        for cov in (0.0, 0.1, 0.125, 0.25, 1 / 3, 0.5, 0.999, 1.0):
            k = K.coverage_rank(cov, n)
            assert k / n >= cov and (k == 1 or (k - 1) / n < cov)


@pytest.mark.skipif(not _jit.AVAILABLE, reason="numba not installed")
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    h=st.integers(8, 70), w=st.integers(8, 70), p1=st.integers(1, 8), p2=st.integers(1, 8),
    levels=st.sampled_from([3, 1000, 0]), seed=st.integers(0, 2**16),
    cov=st.floats(0, 1),
)
def test_jit_kernels_equal_numpy_kernels(h, w, p1, p2, levels, seed, cov):
    rng = np.random.default_rng(seed)
    x = rng.normal(0, 1, (2, h, w)).astype(np.float32)
    if levels:
        x = np.round(x * levels) / levels  # many repeated (non-integer) values
    ps = (p1, p2)
    n = tuple((s + 1) // p for s, p in zip((h, w), ps))
    got = K._max_coverage_jit(x, ps, n, cov)
    np.testing.assert_array_equal(got, _numpy_max(x, ps, n, cov))
    np.testing.assert_allclose(K._entropy_jit(x, ps, n),
                               K._entropy_sort_numpy(x, ps, n, "careamics"), rtol=1e-12)
    for border in ("careamics", "valid"):
        a = K._mean_std_jit(x, ps, n, border)
        b = _numpy_call(K.region_mean_std, x, ps, n, border)
        np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-9)


def _numpy_call(fn, *args):
    """Call a kernel with the numba paths switched off."""
    old = _jit.AVAILABLE
    _jit.AVAILABLE = False
    try:
        return fn(*args)
    finally:
        _jit.AVAILABLE = old


def _numpy_max(x, ps, n, cov):
    """The numpy (non-JIT) Max kernel."""
    return _numpy_call(K.region_max_coverage, x, ps, n, cov)


def test_integer_histogram_and_sort_paths_agree(rng):
    x = rng.integers(0, 300, (2, 70, 90)).astype(np.float32)
    n = (2, 2)
    a = K._entropy_hist(x, (32, 32), n, "careamics", 0.0, 302)
    b = K._entropy_sort_numpy(x, (32, 32), n, "careamics")
    np.testing.assert_allclose(a, b, rtol=1e-12)


def test_float_entropy_warns_b5(rng):
    img = rng.normal(100, 10, (256, 256)).astype(np.float32)
    with pytest.warns(PatchsieveWarning, match="B5"):
        ShannonPatchFilter.filter_map(img, (64, 64))
    with warnings.catch_warnings():
        warnings.simplefilter("error", PatchsieveWarning)
        ShannonPatchFilter.filter_map(np.rint(img), (64, 64))


@pytest.mark.parametrize("jit", [True, False], ids=["jit", "numpy"])
def test_patch_size_one_valid_border_empty_region_is_zero(jit, monkeypatch):
    monkeypatch.setattr(_jit, "AVAILABLE", jit and _jit.AVAILABLE)
    img = np.arange(12, dtype=np.float32).reshape(3, 4) + 1
    for border in ("careamics", "valid"):
        ms = MeanStdPatchFilter.region_values(img, (1, 1), border=border)
        assert ms.shape == (2, 4, 5) and np.isfinite(ms).all()
        assert ms[0, 3, 4] == 0.0  # the region starting past the image end
        assert MaxPatchFilter.region_values(img, (1, 1), border=border)[3, 4] == 0.0
        assert ShannonPatchFilter.region_values(img, (1, 1), border=border)[3, 4] == 0.0


@pytest.mark.skipif(not _jit.AVAILABLE, reason="numba not installed")
def test_jit_max_with_dips_inside_regions():
    # profiles that are high at the ends and low inside: the selection must not shortcut
    x = np.zeros((1, 16, 16), np.float32)
    x[0, :, 0] = 9
    x[0, :, 15] = 9
    x[0, 0, :] = 9
    x[0, 15, :] = 9
    for cov in (0.1, 0.5, 0.9, 1.0):
        np.testing.assert_array_equal(K._max_coverage_jit(x, (4, 4), (4, 4), cov),
                                      _numpy_max(x, (4, 4), (4, 4), cov))
