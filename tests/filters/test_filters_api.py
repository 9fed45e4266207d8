"""The CAREamics filter classes: semantics, ties (B3), quirks B4/B6/B8, options, errors."""

from __future__ import annotations

import numpy as np
import pytest

from patchsieve.config import (
    MaskPatchFilterConfig,
    MaxPatchFilterConfig,
    MeanStdPatchFilterConfig,
    ShannonPatchFilterConfig,
)
from patchsieve.errors import ConfigError, DataError
from patchsieve.filters import (
    MaskPatchFilter,
    MaxPatchFilter,
    MeanStdPatchFilter,
    PatchFilter,
    ShannonPatchFilter,
    create_patch_filter,
    shannon_entropy,
)

NAN = float("nan")


# ------------------------------------------------------------------ factory and configs
@pytest.mark.parametrize(
    ("cfg", "cls"),
    [
        (MaxPatchFilterConfig(threshold=3.0, coverage=0.5), MaxPatchFilter),
        (MeanStdPatchFilterConfig(mean_threshold=2.0, std_threshold=1.0), MeanStdPatchFilter),
        (ShannonPatchFilterConfig(threshold=7.5), ShannonPatchFilter),
        (MaskPatchFilterConfig(coverage=0.4), MaskPatchFilter),  # B8: CAREamics raises here
    ],
)
def test_create_patch_filter(cfg, cls):
    f = create_patch_filter(cfg)
    assert isinstance(f, cls) and isinstance(f, PatchFilter)
    assert create_patch_filter(cfg.model_dump(mode="json")).__dict__ == f.__dict__


def test_defaults_come_from_configs_b6():
    # one rule: coverage None = 0.5**ndim for config and class alike
    assert MaxPatchFilter(1.0).coverage is None
    assert MaxPatchFilter.from_config(MaxPatchFilterConfig(threshold=1.0)).coverage is None
    assert MaxPatchFilter(1.0).resolved_coverage(3) == 0.125
    assert MaskPatchFilter().coverage == MaskPatchFilterConfig().coverage == 0.25


def test_create_patch_filter_rejects_unknown():
    with pytest.raises(ConfigError):
        create_patch_filter({"name": "median"})


# ------------------------------------------------------------------ ties (B3)
def test_mask_ties_b3_and_consistent_option():
    m = np.zeros((128, 128), bool)
    m[:64, :64] = True  # region (0, 0) has coverage exactly 0.25
    fm = MaskPatchFilter.filter_map(m, (64, 64))
    assert fm.max() == 0.25
    assert MaskPatchFilter(0.25).filter_out(m[None]) is False  # keeps at equality
    assert not MaskPatchFilter.apply_filter(fm, 0.25).any()  # drops at equality
    assert MaskPatchFilter.apply_filter(fm, 0.25, ties="keep").all()
    assert MaskPatchFilter(0.25, ties="drop").filter_out(m[None]) is True


def test_meanstd_ties_b3():
    const = np.full((128, 128), 100.0, np.float32)
    fm = MeanStdPatchFilter.filter_map(const, (64, 64))
    assert MeanStdPatchFilter(100.0).filter_out(const[None]) is False
    assert not MeanStdPatchFilter.apply_filter(fm, 100.0).any()
    assert MeanStdPatchFilter.apply_filter(fm, 100.0, ties="keep").all()
    assert MeanStdPatchFilter(100.0, 0.0).filter_out(const[None]) is False
    assert MeanStdPatchFilter(100.0, 0.0, ties="drop").filter_out(const[None]) is True


def test_shannon_ties_b3():
    img = (np.arange(128 * 128) % 4).reshape(128, 128).astype(np.float32)
    assert ShannonPatchFilter(2.0).filter_out(img[None]) is False
    assert ShannonPatchFilter(2.0, ties="drop").filter_out(img[None]) is True
    fm = ShannonPatchFilter.filter_map(img, (64, 64))
    assert not ShannonPatchFilter.apply_filter(fm, 2.0).any()
    assert ShannonPatchFilter.apply_filter(fm, 2.0, ties="keep").all()
    assert shannon_entropy(img) == 2.0


# ------------------------------------------------------------------ Max specifics (B4)
def test_max_filter_out_matches_region_value_for_non_negative(rng):
    img = rng.poisson(100, (256, 256)).astype(np.float32)
    img[40:60, 30:90] = 900
    vals = MaxPatchFilter.region_values(img, (64, 64))
    for thr in (np.median(vals), 150.0, 900.0, vals[0, 0]):
        f = MaxPatchFilter(float(thr))
        for g in np.ndindex(*vals.shape):
            reg = np.zeros((1, 128, 128), np.float32)
            part = img[g[0] * 64:g[0] * 64 + 128, g[1] * 64:g[1] * 64 + 128]
            reg[0, :part.shape[0], :part.shape[1]] = part
            assert f.filter_out(reg) == (not vals[g] > thr)


def test_max_negative_data_b4a():
    reg = np.full((1, 128, 128), -5.0, np.float32)
    reg[0, 64, 64] = 10.0
    f = MaxPatchFilter(threshold=-1.0, coverage=0.5)
    assert f.filter_out(reg) is False  # CAREamics' filter_out (constant-0 padding) keeps
    v = MaxPatchFilter.region_values(reg[0], (64, 64), 0.5)[0, 0]
    assert v == -5.0 and not MaxPatchFilter.apply_filter(np.array(v), -1.0)


def test_max_filter_map_default_coverage_is_half_pow_ndim(rng):
    img = rng.normal(100, 10, (16, 64, 64)).astype(np.float32)
    a = MaxPatchFilter.filter_map(img, (8, 32, 32))
    b = MaxPatchFilter.filter_map(img, (8, 32, 32), 0.125)
    np.testing.assert_array_equal(a, b)


# ------------------------------------------------------------------ border option (B7)
def test_border_valid_fixes_edge_regions_b7():
    im = np.full((300, 200), 1000.0, np.float32)
    fm = MeanStdPatchFilter.filter_map(im, (64, 64))
    assert fm[0, 0, 0] == 1000.0 and fm[0, 299, 199] == pytest.approx(474.6, abs=0.1)
    assert fm[1, 299, 199] == pytest.approx(499.4, abs=0.1)
    fv = MeanStdPatchFilter.filter_map(im, (64, 64), border="valid")
    np.testing.assert_allclose(fv[0], 1000.0)
    np.testing.assert_allclose(fv[1], 0.0, atol=1e-9)
    assert (ShannonPatchFilter.filter_map(im, (64, 64), border="valid") == 0).all()
    assert (MaxPatchFilter.filter_map(im, (64, 64), border="valid") == 1000).all()
    assert (MaskPatchFilter.filter_map(im > 0, (64, 64), border="valid") == 1).all()


# ------------------------------------------------------------------ bad inputs
@pytest.mark.parametrize(
    ("call", "exc", "match"),
    [
        (lambda: MaxPatchFilter(NAN), ConfigError, "threshold"),
        (lambda: MaxPatchFilter(1.0, coverage=1.5), ConfigError, "coverage"),
        (lambda: MaxPatchFilter(1.0, coverage=-0.1), ConfigError, "coverage"),
        (lambda: MaxPatchFilter(1.0, ties="maybe"), ConfigError, "ties"),
        (lambda: MeanStdPatchFilter(-1.0), ConfigError, "mean_threshold"),
        (lambda: MeanStdPatchFilter(1.0, -2.0), ConfigError, "std_threshold"),
        (lambda: MeanStdPatchFilter(NAN), ConfigError, "mean_threshold"),
        (lambda: ShannonPatchFilter(-1.0), ConfigError, "threshold"),
        (lambda: ShannonPatchFilter(NAN), ConfigError, "threshold"),
        (lambda: MaskPatchFilter(2.0), ConfigError, "coverage"),
        (lambda: MaxPatchFilter.apply_filter(np.zeros(3), NAN), ConfigError, "threshold"),
        (lambda: MeanStdPatchFilter.apply_filter(np.zeros((4, 4)), 1.0), ConfigError, "(2, ...)"),
        (lambda: MaxPatchFilter.filter_map(np.ones((64, 64)), (64,)), ConfigError,
         "one entry per spatial dim"),
        (lambda: MaxPatchFilter.filter_map(np.ones((64, 64)), (0, 8)), ConfigError, "positive"),
        (lambda: MaxPatchFilter.filter_map(np.ones((64, 64)), (-8, 8)), ConfigError, "positive"),
        (lambda: MaxPatchFilter.filter_map(np.ones((62, 62)), (64, 64)), ConfigError,
         "larger than the image"),
        (lambda: MaxPatchFilter.filter_map(np.ones((64, 64)), 64), ConfigError, "sequence"),
        (lambda: MaxPatchFilter.filter_map(np.ones((64, 64)), (8, 8), border="same"),
         ConfigError, "border"),
        (lambda: MeanStdPatchFilter.filter_map(np.zeros((0, 64)), (8, 8)), DataError, "empty"),
        (lambda: MeanStdPatchFilter.filter_map(np.ones(64), (8,)), DataError, "2D"),
        (lambda: MeanStdPatchFilter.filter_map(np.ones((2, 2, 64, 64)), (8, 8)), DataError, "2D"),
        (lambda: ShannonPatchFilter.filter_map(np.ones((64, 64), complex), (8, 8)), DataError,
         "complex"),
        (lambda: ShannonPatchFilter.filter_map(np.ones((64, 64), object), (8, 8)), DataError,
         "object"),
        (lambda: MaxPatchFilter.filter_map(np.ones((64, 64), bool), (8, 8)), DataError,
         "bool"),
        (lambda: MaxPatchFilter.filter_map(_with(np.nan), (8, 8)), DataError, "y=3, x=5"),
        (lambda: MeanStdPatchFilter.filter_map(_with(np.inf), (8, 8)), DataError, "NaN or inf"),
        (lambda: MaskPatchFilter.filter_map(np.full((64, 64), 2), (8, 8)), DataError, "binary"),
        (lambda: MaskPatchFilter(0.2).filter_out(np.full((8, 8), 0.5)), DataError, "binary"),
        (lambda: MeanStdPatchFilter.filter_map(np.full((64, 64), 1e39), (8, 8)), DataError,
         "inf"),
    ],
)
def test_bad_inputs(call, exc, match):
    with pytest.raises(exc, match=match):
        call()


def _with(v):
    a = np.ones((64, 64), np.float32)
    a[3, 5] = v
    return a


def test_mask_accepts_bool_and_01_ints():
    m = np.zeros((128, 128), np.uint8)
    m[:64] = 1
    np.testing.assert_array_equal(
        MaskPatchFilter.filter_map(m, (64, 64)), MaskPatchFilter.filter_map(m > 0, (64, 64))
    )


@pytest.mark.parametrize(
    ("filt", "patch", "match"),
    [
        (MaxPatchFilter(10.0), np.zeros((0, 0), "u2"), "is empty"),
        (MeanStdPatchFilter(1.0), np.zeros((1, 0, 4)), "is empty"),
        (ShannonPatchFilter(1.0), np.ones((4, 4), complex), "complex"),
        (MaxPatchFilter(1.0), np.ones((4, 4), bool), "bool"),
        (MeanStdPatchFilter(1.0), _with(np.nan)[None], "NaN or inf"),
        (MaskPatchFilter(0.5), np.zeros(0, bool), "is empty"),
    ],
)
def test_filter_out_validates_the_patch(filt, patch, match):
    with pytest.raises(DataError, match=match):
        filt.filter_out(patch)
