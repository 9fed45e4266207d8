"""RegionGrid geometry (CAREamics') and patch-size normalisation."""

from __future__ import annotations

import numpy as np
import pytest

from patchsieve.errors import ConfigError
from patchsieve.grid import (
    RegionGrid,
    normalize_patch_size,
    region_chunks,
    validate_training_patch_size,
)


@pytest.mark.parametrize(
    ("ps", "dims", "expected"),
    [
        ((64, 32), None, {"y": 64, "x": 32}),
        ([16, 64, 64], None, {"z": 16, "y": 64, "x": 64}),
        ({"x": 8, "y": 16}, ("y", "x"), {"y": 16, "x": 8}),
        ({"z": 4, "y": 8, "x": 8}, None, {"z": 4, "y": 8, "x": 8}),
        (np.array([32, 32]), None, {"y": 32, "x": 32}),
        ((64.0, 64), None, {"y": 64, "x": 64}),
    ],
)
def test_normalize_patch_size(ps, dims, expected):
    assert normalize_patch_size(ps, dims) == expected


@pytest.mark.parametrize(
    ("ps", "dims", "match"),
    [
        ((64,), None, "2 \\(YX\\) or 3"),
        ((64, 64), ("z", "y", "x"), "one entry per spatial dim"),
        ((0, 64), None, "positive"),
        ((-8, 64), None, "positive"),
        ((8.5, 64), None, "positive integer"),
        ({"y": 8}, ("y", "x"), "missing"),
        ({"y": 8, "x": 8, "q": 1}, ("y", "x"), "unknown"),
        ("64", None, "sequence"),
        (64, None, "sequence"),
        ((True, 8), None, "positive integer"),
    ],
)
def test_normalize_patch_size_errors(ps, dims, match):
    with pytest.raises(ConfigError, match=match):
        normalize_patch_size(ps, dims)


@pytest.mark.parametrize("bad", [(4, 64), (48, 64), (64, 100), (16, 8, 12)])
def test_training_rule(bad):
    with pytest.raises(ConfigError, match=">= 8 and a power of 2"):
        validate_training_patch_size(bad)


def test_training_rule_accepts():
    assert validate_training_patch_size((8, 128)) == {"y": 8, "x": 128}


def test_grid_geometry_matches_careamics():
    g = RegionGrid((300, 200), (64, 64))
    assert g.grid_shape == (4, 3)  # (300+1)//64, (200+1)//64
    assert g.region_shape == (128, 128)
    assert g.n_regions == 12
    assert list(g.coords())[:3] == [(0, 0), (0, 1), (0, 2)]
    assert [o.tolist() for o in g.origins()] == [[0, 64, 128, 192], [0, 64, 128]]
    assert g.region_slices((3, 2)) == (slice(192, 300), slice(128, 200))
    assert g.region_padding((3, 2)) == (20, 56)
    assert g.region_padding((0, 0)) == (0, 0)
    assert g.valid_counts()[3, 2] == 108 * 72
    assert g.valid_counts()[0, 0] == 128 * 128


def test_grid_edge_sizes():
    # size 2p-1 has 2 regions (CAREamics' +1); size p exactly has 1
    assert RegionGrid((127, 64), (64, 64)).grid_shape == (2, 1)
    assert RegionGrid((16, 40, 40), (16, 32, 32)).grid_shape == (1, 1, 1)


def test_origin_ranges_match_careamics_clip():
    g = RegionGrid((300, 200), (64, 64))
    # interior region: [g*p, g*p+p); last regions clipped so a patch fits: <= size - p
    assert g.origin_range((0, 0)) == ((0, 64), (0, 64))
    assert g.origin_range((3, 2)) == ((192, 237), (128, 137))
    (ys, ye), (xs, xe) = g.origin_ranges()
    assert ys.tolist() == [0, 64, 128, 192] and ye.tolist() == [64, 128, 192, 237]
    assert xe.tolist() == [64, 128, 137]
    # empty range when the region starts too close to the end
    assert RegionGrid((127, 64), (64, 64)).origin_range((1, 0))[0] == (64, 64)


@pytest.mark.parametrize(
    ("shape", "ps", "match"),
    [
        ((62, 62), (64, 64), "larger than the image"),  # B9: CAREamics finds no region
        ((100, 100), (64,), "one entry per spatial dim"),
        ((0, 100), (8, 8), "positive"),
        ((100, 100), (0, 8), "positive"),
    ],
)
def test_grid_errors(shape, ps, match):
    with pytest.raises(ConfigError, match=match):
        RegionGrid(shape, ps)


def test_grid_coords_checked():
    g = RegionGrid((128, 128), (64, 64))
    with pytest.raises(ConfigError, match="grid coords"):
        g.region_origin((2, 0))


@pytest.mark.parametrize(
    ("chunks", "p", "n", "expected"),
    [
        ((100, 100, 56), 64, 4, (2, 2)),
        ((64, 64, 64, 64), 64, 4, (1, 1, 1, 1)),
        ((10,) * 30, 64, 4, (1, 1, 1, 1)),  # patch larger than a chunk
        ((300,), 64, 4, (4,)),
        ((70, 70, 70), 64, 3, (2, 1)),
    ],
)
def test_region_chunks(chunks, p, n, expected):
    assert region_chunks(chunks, p, n) == expected
    assert sum(region_chunks(chunks, p, n)) == n


@pytest.mark.parametrize("bad", [None, 16, 16.0, "16"])
def test_grid_patch_not_a_sequence(bad):
    with pytest.raises(ConfigError, match="patch_size must be a sequence"):
        RegionGrid((64, 64), bad)


# --------------------------------------------------------------------------- VolumeGeometry
def _vol(shape: dict[str, int], **attrs: object) -> object:
    import types

    return types.SimpleNamespace(dims=tuple(shape), sizes=shape, attrs=attrs)


def test_volume_geometry_from_a_named_volume() -> None:
    from patchsieve.grid import VolumeGeometry

    g = VolumeGeometry.from_volume(
        _vol({"s": 3, "c": 2, "z": 20, "y": 300, "x": 200}, scale={"z": 2.0}, level=1),
        (8, 64, 64), ref_channel=1)
    assert (g.sample_dims, g.sample_shape, g.spatial_dims) == (("s",), (3,), ("z", "y", "x"))
    assert g.grid_shape == (2, 4, 3) and g.cell_shape == (3, 5, 4) and g.n_samples == 3
    assert g.region_shape == (3, 2, 4, 3) and g.n_channels == 2 and g.ref_channel == 1
    assert g.scale == (2.0, 1.0, 1.0) and g.level == 1 and g.patch_by_dim["y"] == 64
    counts = g.cell_counts()
    assert counts.shape == g.cell_shape and counts.sum() == 20 * 300 * 200
    assert g.grid.grid_shape == g.grid_shape


@pytest.mark.parametrize(("shape", "patch", "ref", "match"), [
    ({"y": 32, "x": 32}, (64, 64), 0, "larger than the volume"),
    ({"y": 64, "x": 64}, (16, 16), 1, "no channel axis"),
    ({"c": 2, "y": 64, "x": 64}, (16, 16), 2, "out of range"),
    ({"y": 64, "x": 64}, (16,), 0, "one entry per spatial dim"),
])
def test_volume_geometry_errors(shape: dict[str, int], patch: tuple[int, ...], ref: int,
                                match: str) -> None:
    from patchsieve.grid import VolumeGeometry

    with pytest.raises(ConfigError, match=match):
        VolumeGeometry.from_volume(_vol(shape), patch, ref_channel=ref)
