"""Property-based fuzzing of the input boundaries (hypothesis, bounded example counts).

Every generated input either works or raises one of patchsieve's own exceptions
(:class:`patchsieve.PatchsieveError`) -- never an ``IndexError``/``KeyError``/``TypeError``/
``ZeroDivisionError`` from deep inside numpy, zarr or pydantic. Runs are derandomised (the same
examples in CI and locally) and write no example database.
"""

from __future__ import annotations

import math
import os
import re
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, currently_in_test_context, event, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from patchsieve.errors import PatchsieveError

_DOC = Path(__file__).resolve().parents[1] / "docs" / "errors.md"
#: ids of the "Known gaps" of docs/errors.md; while a gap is open its inputs are skipped here
#: (its catalogue row is an xfail(strict=True) test), once it is closed they are fuzzed again
KNOWN_GAPS = set(re.findall(r"^- `([a-z0-9-]+)`:", _DOC.read_text().partition(
    "## Known gaps")[2], re.M)) if _DOC.exists() else set()


def skip_known_gap(rid: str, condition: bool) -> None:
    """Skip this example while the documented gap ``rid`` is open."""
    if rid in KNOWN_GAPS:
        assume(not condition)


#: CI: a bounded, derandomised run. Set PATCHSIEVE_FUZZ_EXAMPLES=2000 for a longer random hunt.
_N = int(os.environ.get("PATCHSIEVE_FUZZ_EXAMPLES", "0")) or None
FUZZ = settings(max_examples=_N or 120, deadline=None, derandomize=_N is None, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
FUZZ_SMALL = settings(FUZZ, max_examples=_N or 60)


def works_or_patchsieve_error(fn: Callable[[], Any]) -> tuple[bool, Any]:
    """Run ``fn``; return (True, result) or (False, error) for a PatchsieveError; re-raise else."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            out = fn()
        except PatchsieveError as err:
            assert str(err), "a patchsieve error must carry a message"
            _event(f"raised {type(err).__name__}")
            return False, err
        _event("worked")
        return True, out


def _event(name: str) -> None:
    """Tally outcomes (``pytest --hypothesis-show-statistics``): the valid paths must be hit."""
    if currently_in_test_context():
        event(name)


# ----------------------------------------------------------------------------- axes
@st.composite
def valid_axes(draw: Any) -> str:
    """CAREamics-valid axes: some of S, T, C, Z in any order, with YX/XY adjacent, any case."""
    others = draw(st.lists(st.sampled_from("STCZ"), unique=True, max_size=4))
    pos = draw(st.integers(0, len(others)))
    yx = draw(st.sampled_from(["YX", "XY"]))
    text = "".join(others[:pos]) + yx + "".join(others[pos:])
    return text.lower() if draw(st.booleans()) else text


AXES_TEXT = st.one_of(valid_axes(), st.text(alphabet="STCZYXstczyxQ1 _", max_size=8))
AXES_SEQ = st.lists(st.one_of(st.sampled_from(list("STCZYXyxq")), st.text(max_size=2),
                              st.integers(0, 3), st.none()), max_size=7)


@FUZZ
@given(axes=st.one_of(valid_axes(), valid_axes().map(list), AXES_TEXT, AXES_SEQ, st.none(),
                     st.integers(), st.floats()),
       ndim=st.one_of(st.none(), st.integers(-1, 8)))
def test_parse_axes(axes: Any, ndim: int | None) -> None:
    from patchsieve import parse_axes

    ok, out = works_or_patchsieve_error(lambda: parse_axes(axes, ndim))
    if ok:
        assert set(out) <= set("stczyx") and len(set(out)) == len(out)
        assert "y" in out and "x" in out
        assert ndim is None or len(out) == ndim


@FUZZ_SMALL
@given(axes=AXES_TEXT, sizes=st.lists(st.integers(0, 4), min_size=0, max_size=6),
       match=st.booleans(),
       dtype=st.sampled_from(["u1", "u2", "i2", "f4", "f8", "u2", "f4", "?", "c8", "O"]),
       channel=st.one_of(st.none(), st.integers(-2, 4), st.lists(st.integers(-1, 3), max_size=3)))
def test_open_volume_numpy(axes: str, sizes: list[int], match: bool, dtype: str,
                           channel: Any) -> None:
    from patchsieve import open_volume

    shape = ([max(1, v) for v in sizes] * 6)[: len(axes)] if match and sizes else sizes
    data = np.zeros(shape, dtype=dtype)
    ok, vol = works_or_patchsieve_error(lambda: open_volume(data, axes=axes, channel=channel))
    if ok:
        assert vol.size == data.size or channel is not None
        assert list(vol.dims) == [d for d in ("s", "t", "c", "z", "y", "x") if d in vol.dims]


# ----------------------------------------------------------------------------- patch sizes
PS_ENTRY = st.one_of(st.integers(-3, 80), st.floats(allow_nan=True, allow_infinity=True),
                     st.booleans(), st.none(), st.text(max_size=3))
PATCH = st.one_of(
    st.lists(PS_ENTRY, max_size=4),
    st.tuples(st.integers(-2, 70), st.integers(-2, 70)),
    st.dictionaries(st.sampled_from(["z", "y", "x", "c", "q"]), PS_ENTRY, max_size=4),
    st.integers(-2, 64), st.none(), st.text(max_size=4),
)


@FUZZ
@given(patch=PATCH, shape=st.one_of(st.tuples(st.integers(0, 70), st.integers(0, 70)),
                                    st.tuples(st.integers(1, 9), st.integers(1, 40),
                                              st.integers(1, 40))))
def test_region_grid(patch: Any, shape: tuple[int, ...]) -> None:
    from patchsieve import RegionGrid

    skip_known_gap("regiongrid-patch-not-a-sequence",
                   not isinstance(patch, (list, tuple, dict)))
    ok, grid = works_or_patchsieve_error(lambda: RegionGrid(shape, patch))
    if ok:
        assert grid.grid_shape == tuple((s + 1) // p for s, p in zip(shape, grid.patch_size))
        assert all(g >= 1 for g in grid.grid_shape)
        assert grid.valid_counts().shape == grid.grid_shape


@FUZZ
@given(patch=PATCH, spatial=st.sampled_from([None, ("y", "x"), ("z", "y", "x")]))
def test_normalize_patch_size(patch: Any, spatial: tuple[str, ...] | None) -> None:
    from patchsieve import normalize_patch_size

    ok, out = works_or_patchsieve_error(lambda: normalize_patch_size(patch, spatial))
    if ok:
        assert all(isinstance(v, int) and v > 0 for v in out.values())
        assert spatial is None or tuple(out) == spatial


# ----------------------------------------------------------------------------- config dicts
VALUE = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True), st.integers(-5, 300), st.booleans(),
    st.none(), st.text(max_size=5), st.lists(st.integers(0, 2), max_size=3),
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
)
FIELDS = ["name", "threshold", "coverage", "mean_threshold", "std_threshold", "ref_channel",
          "filtered_patch_prob", "mask", "mask_sha256", "bogus"]
_COMMON = {"ref_channel": st.integers(0, 3), "filtered_patch_prob": st.floats(0, 1)}
VALID_CONFIG = st.one_of(
    st.fixed_dictionaries({"name": st.just("max"), "threshold": st.floats(-10, 500)},
                          optional={"coverage": st.one_of(st.none(), st.floats(0, 1)),
                                    **_COMMON}),
    st.fixed_dictionaries({"name": st.just("mean_std"), "mean_threshold": st.floats(0, 500)},
                          optional={"std_threshold": st.one_of(st.none(), st.floats(0, 100)),
                                    **_COMMON}),
    st.fixed_dictionaries({"name": st.just("shannon"), "threshold": st.floats(0, 16)},
                          optional=_COMMON),
    st.fixed_dictionaries({"name": st.just("mask")},
                          optional={"coverage": st.floats(0, 1), "mask": st.just("m.zarr")}),
)
CONFIG = st.one_of(
    VALID_CONFIG,
    st.dictionaries(st.sampled_from(FIELDS), VALUE, max_size=5),
    st.builds(lambda name, d: {"name": name, **d},
              st.sampled_from(["max", "mean_std", "shannon", "mask", "median", ""]),
              st.dictionaries(st.sampled_from(FIELDS[1:]), VALUE, max_size=4)),
    VALUE,
)


@FUZZ
@given(data=CONFIG)
def test_filter_config_dicts(data: Any) -> None:
    from patchsieve.config import parse_filter_config
    from patchsieve.filters import create_patch_filter

    ok, cfg = works_or_patchsieve_error(lambda: parse_filter_config(data))
    if ok:
        assert cfg.name in ("max", "mean_std", "shannon", "mask")
        assert 0.0 <= cfg.filtered_patch_prob <= 1.0 and cfg.ref_channel >= 0
        for field in ("threshold", "mean_threshold", "std_threshold", "coverage"):
            value = getattr(cfg, field, None)
            assert value is None or math.isfinite(value)
        ok2, flt = works_or_patchsieve_error(lambda: create_patch_filter(cfg))
        assert ok2, flt


@FUZZ_SMALL
@given(kind=st.sampled_from(["max", "mean_std", "shannon", "mask"]),
       kwargs=st.dictionaries(st.sampled_from(FIELDS[1:]), VALUE, max_size=4))
def test_filter_config_classes(kind: str, kwargs: dict[str, Any]) -> None:
    from patchsieve import config as c

    cls = {"max": c.MaxPatchFilterConfig, "mean_std": c.MeanStdPatchFilterConfig,
           "shannon": c.ShannonPatchFilterConfig, "mask": c.MaskPatchFilterConfig}[kind]
    works_or_patchsieve_error(lambda: cls(**kwargs))


SPEC = st.fixed_dictionaries(
    {},
    optional={
        "source": st.one_of(st.text(max_size=6), st.none(), st.integers(),
                            st.fixed_dictionaries({"path": st.text(max_size=6)},
                                                  optional={"level": VALUE, "axes": VALUE})),
        "filters": st.one_of(st.lists(CONFIG, max_size=2), VALUE),
        "patch_size": PATCH,
        "ref_channel": VALUE,
        "cluster": st.one_of(VALUE, st.fixed_dictionaries(
            {}, optional={"scheduler": VALUE, "n_workers": VALUE})),
        "dataset": st.one_of(VALUE, st.dictionaries(
            st.sampled_from(["mode", "seed", "batch_size", "epoch_length", "filter"]), VALUE,
            max_size=3)),
        "output": VALUE,
        "version": VALUE,
    },
)


VALID_SPEC = st.fixed_dictionaries(
    {"source": st.sampled_from(["img.ome.zarr", "s3://bucket/img.zarr"]),
     "filters": st.lists(st.one_of(VALID_CONFIG, VALID_CONFIG, CONFIG), min_size=1, max_size=2),
     "patch_size": st.sampled_from([[64, 64], [16, 64, 64], {"y": 32, "x": 32}])},
    optional={"dataset": st.fixed_dictionaries({}, optional={
        "mode": st.sampled_from(["per_epoch", "with_replacement", "x"]),
        "epoch_length": st.integers(-1, 5), "batch_size": st.integers(0, 4)}),
        "cluster": st.fixed_dictionaries({}, optional={
            "scheduler": st.sampled_from(["tcp://127.0.0.1:8786", "nowhere", None]),
            "n_workers": st.integers(0, 2)}),
        "ref_channel": st.integers(-1, 2), "labels": st.booleans(),
        "border": st.sampled_from(["careamics", "valid", "edge"])},
)


@FUZZ_SMALL
@given(spec=st.one_of(VALID_SPEC, VALID_SPEC, SPEC), overrides=st.one_of(
    st.just([]), st.lists(st.sampled_from(["labels=true", "filters.0.threshold=8",
                                           "patch_size=[32,32]", "seed=3", "filters.5.x=1",
                                           "cluster.n_workers=0", "dataset=[1]"]), max_size=2),
    st.lists(st.text(alphabet="abcdefilrst.=0123[]_", max_size=12), max_size=2)))
def test_pipeline_spec_dicts(spec: dict[str, Any], overrides: list[str]) -> None:
    from patchsieve.pipeline import PipelineConfig

    works_or_patchsieve_error(lambda: PipelineConfig.from_dict(spec, overrides))


# ----------------------------------------------------------------------------- filter_map
DTYPES = st.sampled_from([np.uint8, np.uint16, np.int16, np.float32, np.float64, np.bool_,
                          np.complex64])
IMAGES = hnp.arrays(
    dtype=DTYPES,
    shape=st.one_of(hnp.array_shapes(min_dims=2, max_dims=2, min_side=0, max_side=24),
                    hnp.array_shapes(min_dims=3, max_dims=3, min_side=1, max_side=10),
                    hnp.array_shapes(min_dims=1, max_dims=4, min_side=0, max_side=6)),
    elements={"allow_nan": True, "allow_infinity": True, "allow_subnormal": False},
)


@st.composite
def image_and_patch(draw: Any) -> tuple[np.ndarray, Any]:
    """A finite 2D/3D image and a patch that fits it (the path that must work)."""
    ndim = draw(st.sampled_from([2, 3]))
    shape = draw(st.tuples(*[st.integers(1, 24 if ndim == 2 else 9)] * ndim))
    patch = [draw(st.integers(1, n)) for n in shape]
    dtype = draw(st.sampled_from([np.uint8, np.uint16, np.int16, np.float32, np.float64]))
    image = draw(hnp.arrays(dtype, shape, elements=st.integers(0, 1) if draw(st.booleans())
                            else None).filter(lambda a: bool(np.isfinite(a).all())))
    return image, patch


NOISY = st.tuples(IMAGES, st.one_of(st.lists(st.integers(-1, 12), min_size=0, max_size=4),
                                    st.integers(1, 4)))


@FUZZ
@given(pair=st.one_of(image_and_patch(), NOISY),
       kind=st.sampled_from(["max", "mean_std", "shannon", "mask"]))
def test_filter_map(pair: tuple[np.ndarray, Any], kind: str) -> None:
    image, patch = pair
    from patchsieve import MaskPatchFilter, MaxPatchFilter, MeanStdPatchFilter, ShannonPatchFilter

    fn = {"max": MaxPatchFilter.filter_map, "mean_std": MeanStdPatchFilter.filter_map,
          "shannon": ShannonPatchFilter.filter_map, "mask": MaskPatchFilter.filter_map}[kind]
    ok, fmap = works_or_patchsieve_error(lambda: fn(image, patch))
    if ok:  # MeanStd stacks its mean and std maps, as CAREamics does
        assert fmap.shape == ((2, *image.shape) if kind == "mean_std" else image.shape)
        assert np.isfinite(fmap).all()


@FUZZ
@given(patch=IMAGES, threshold=st.floats(-10, 300, allow_nan=False),
       kind=st.sampled_from(["max", "mean_std", "shannon", "mask"]))
def test_filter_out(patch: np.ndarray, threshold: float, kind: str) -> None:
    from patchsieve import MaskPatchFilter, MaxPatchFilter, MeanStdPatchFilter, ShannonPatchFilter

    flt = {"max": lambda: MaxPatchFilter(threshold),
           "mean_std": lambda: MeanStdPatchFilter(abs(threshold)),
           "shannon": lambda: ShannonPatchFilter(abs(threshold)),
           "mask": lambda: MaskPatchFilter(min(1.0, abs(threshold) / 300))}[kind]()
    skip_known_gap("filter-out-empty", patch.size == 0)
    ok, out = works_or_patchsieve_error(lambda: flt.filter_out(patch))
    if ok:
        assert isinstance(out, (bool, np.bool_))


@pytest.mark.parametrize("kind", ["max", "mean_std", "shannon"])
def test_fuzz_finds_the_documented_rejections(kind: str) -> None:
    """The harness itself: an escaping builtin error is reported, a patchsieve error is not."""
    from patchsieve import ShannonPatchFilter

    ok, err = works_or_patchsieve_error(
        lambda: ShannonPatchFilter.filter_map(np.full((8, 8), np.nan, "f4"), (4, 4)))
    assert not ok and "NaN" in str(err)
    with pytest.raises(ZeroDivisionError):
        works_or_patchsieve_error(lambda: 1 / 0)


# ----------------------------------------------------------------------------- region_stats (dask)
@FUZZ_SMALL
@given(shape=st.tuples(st.integers(1, 3), st.integers(1, 40), st.integers(1, 40)),
       chunks=st.tuples(st.integers(1, 3), st.integers(1, 20), st.integers(1, 20)),
       patch=st.one_of(st.tuples(st.integers(1, 8), st.integers(1, 8)),
                       st.tuples(st.integers(-1, 24), st.integers(-1, 24)),
                       st.lists(st.integers(1, 8), max_size=4)),
       stats=st.one_of(
           st.lists(st.sampled_from(["mean", "std", "entropy", "max", "max_cov0.25"]),
                    min_size=1, max_size=3, unique=True),
           st.lists(st.sampled_from(["mean", "max_cov2", "mask_coverage", "median", ""]),
                    max_size=3)),
       ref_channel=st.sampled_from([0, 0, 0, -1, 1, 3]),
       border=st.sampled_from(["careamics", "valid", "careamics", "edge"]),
       channels=st.booleans())
def test_region_stats(shape: tuple[int, int, int], chunks: tuple[int, int, int], patch: Any,
                      stats: list[str], ref_channel: int, border: str, channels: bool) -> None:
    """The Dask graph builder and its execution: results, or a patchsieve error."""
    import dask
    import dask.array as da
    import xarray as xr

    from patchsieve.regions import region_stats

    rng = np.random.default_rng(0)
    data = da.from_array(rng.integers(0, 50, size=shape).astype("u2"), chunks=chunks)
    vol = xr.DataArray(data, dims=("c" if channels else "s", "y", "x"))

    def run() -> Any:
        ds = region_stats(vol, patch, stats, ref_channel=ref_channel, border=border)
        with dask.config.set(scheduler="synchronous"):
            return ds.compute()

    ok, ds = works_or_patchsieve_error(run)
    if ok:
        for name in ds.data_vars:
            assert ds[name].dtype == np.float64


# ----------------------------------------------------------------------------- sampling plans
WEIGHT = st.one_of(st.sampled_from([1.0, 0.1, 0.0, 1.0, 0.5]), st.floats(-0.5, 1.5),
                   st.just(float("nan")))


@FUZZ_SMALL
@given(shape=st.tuples(st.integers(0, 48), st.integers(0, 48)),
       patch=st.one_of(st.tuples(st.integers(1, 16), st.integers(1, 16)),
                       st.tuples(st.integers(-1, 20), st.integers(-1, 20))),
       grid=st.tuples(st.integers(1, 3), st.integers(0, 5), st.integers(0, 5)),
       weights=st.lists(WEIGHT, min_size=1, max_size=75),
       with_background=st.booleans(),
       mode=st.sampled_from(["per_epoch", "with_replacement", "fixed_subset", "per_epoch",
                             "uniform"]),
       seed=st.one_of(st.integers(0, 10**6), st.integers(0, 10**6), st.integers(-2, -1),
                      st.text(max_size=2)),
       epoch_length=st.one_of(st.none(), st.integers(1, 50), st.integers(-1, 0)),
       epoch=st.sampled_from([0, 1, 3, -1]), consistent=st.sampled_from([True, True, False]))
def test_stratified_patching(shape: tuple[int, int], patch: tuple[int, int],
                             grid: tuple[int, int, int], weights: list[float],
                             with_background: bool, mode: str, seed: Any,
                             epoch_length: int | None, epoch: int, consistent: bool) -> None:
    """Sampling plans from arbitrary (often inconsistent) geometry, weights and options."""
    from patchsieve.sampling import StratifiedPatching

    if consistent and min(patch) > 0:  # the CAREamics grid of this geometry
        shape = (max(shape[0], patch[0]), max(shape[1], patch[1]))
        grid = (grid[0], (shape[0] + 1) // patch[0], (shape[1] + 1) // patch[1])
        if mode == "with_replacement" and epoch_length is None:
            epoch_length = 8
    n = int(np.prod(grid))
    w = np.resize(np.asarray(weights, dtype=np.float64), n).reshape(grid) if n else \
        np.zeros(grid)
    bg = (w < 1.0) if with_background else None

    def run() -> Any:
        sp = StratifiedPatching(shape, patch, w, background=bg, mode=mode, seed=seed,
                                epoch_length=epoch_length)
        return sp, sp.epoch_plan(epoch)

    ok, out = works_or_patchsieve_error(run)
    if ok:
        sp, plan = out
        assert len(plan) >= 0
        origins = np.asarray(plan["origin"])
        if len(plan):
            assert (origins >= 0).all()
            assert (origins + np.asarray(patch) <= np.asarray(shape)).all()
