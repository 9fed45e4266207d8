"""Tests of patchsieve.demo: determinism, layout, and the properties the demos rely on."""

from __future__ import annotations

import numpy as np
import pytest
import zarr
from skimage.measure import shannon_entropy

from patchsieve.demo import DEMO_SIZES, write_demo_data, write_ome_zarr
from patchsieve.errors import ConfigError
from patchsieve.volume import open_pyramid, open_volume

SMALL_2D = {"hagen2d": (3, 512, 512)}


@pytest.fixture(scope="module")
def small_demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    return write_demo_data(out, size="small", shapes=SMALL_2D)


def test_paths_and_layout(small_demo):
    assert set(small_demo) == {"hagen2d", "vol3d2c", "vol3d2c_mask"}
    stack = open_volume(small_demo["hagen2d"])
    assert stack.dims == ("s", "y", "x") and stack.shape == (3, 512, 512)
    assert stack.dtype == np.float32
    assert stack.attrs["format"] == "ome-zarr-0.5"
    assert stack.attrs["units"] == {"y": "micrometer", "x": "micrometer"}
    vol = open_volume(small_demo["vol3d2c"])
    assert vol.dims == ("c", "z", "y", "x") and vol.shape == DEMO_SIZES["small"]["vol3d2c"]
    assert vol.dtype == np.uint16
    mask = open_volume(small_demo["vol3d2c_mask"])
    assert mask.dims == ("z", "y", "x") and mask.shape == vol.shape[1:]
    assert mask.dtype == np.uint8
    assert set(np.unique(mask.values)) <= {0, 1}


def test_hagen_holds_integer_counts(small_demo):
    data = open_volume(small_demo["hagen2d"]).values
    np.testing.assert_array_equal(data, np.rint(data))
    assert data.min() >= 0
    background = data < 200
    assert 0.65 <= background.mean() <= 0.85  # ~70-80 % dim background
    assert 95 < np.median(data[background]) < 105  # Poisson(100) + read noise


def test_hagen_shannon_separates_background_and_structure(small_demo):
    """CAREamics' Shannon filter (patch 64 -> 128x128 regions) at 7.5 bits splits the two."""
    data = open_volume(small_demo["hagen2d"]).values
    entropy, bright = [], []
    for s in range(data.shape[0]):
        for y in range(0, data.shape[1] - 127, 64):
            for x in range(0, data.shape[2] - 127, 64):
                region = data[s, y : y + 128, x : x + 128]
                entropy.append(shannon_entropy(region))
                bright.append((region > 200).mean())
    entropy, bright = np.array(entropy), np.array(bright)
    background, structure = entropy[bright < 0.05], entropy[bright > 0.5]
    assert len(background) >= 20 and len(structure) >= 10
    assert background.max() < 7.0  # clearly below 7.5
    assert structure.min() > 8.0  # clearly above 7.5
    below = (entropy < 7.5).mean()
    assert 0.5 < below < 0.9  # the filter gives a non-trivial mask


def test_volume_channels_and_mask(small_demo):
    vol = open_volume(small_demo["vol3d2c"]).values
    bright0, bright1 = (vol[0] > 200).mean(), (vol[1] > 200).mean()
    assert bright0 < 0.15  # channel 0 sparse
    assert bright1 > 2 * bright0 and bright1 > 0.25  # channel 1 denser
    mask = open_volume(small_demo["vol3d2c_mask"]).values.astype(bool)
    assert 0.02 < mask.mean() < 0.2
    assert vol[0][mask].mean() > 2 * vol[0][~mask].mean()  # the mask marks channel-0 structure


def test_volume_pyramid(small_demo):
    levels = open_pyramid(small_demo["vol3d2c"])
    assert [lv.shape for lv in levels] == [(2, 16, 128, 128), (2, 8, 64, 64), (2, 4, 32, 32)]
    assert [lv.attrs["scale"]["z"] for lv in levels] == [0.5, 1.0, 2.0]
    assert [lv.attrs["scale"]["x"] for lv in levels] == [0.2, 0.4, 0.8]


def test_deterministic(tmp_path):
    kwargs = {"size": "small", "shapes": {"hagen2d": (2, 128, 128)}, "seed": 3}
    first = write_demo_data(tmp_path / "a", **kwargs)
    second = write_demo_data(tmp_path / "b", **kwargs)
    other = write_demo_data(tmp_path / "c", **{**kwargs, "seed": 4})
    for name in first:
        a, b = open_volume(first[name]).values, open_volume(second[name]).values
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(
        open_volume(first["hagen2d"]).values, open_volume(other["hagen2d"]).values
    )


def test_chunking_does_not_change_structure(tmp_path):
    """Blocks are generated independently: the noise-free signal does not depend on chunks."""
    from patchsieve.demo import hagen_signal

    whole = hagen_signal(0, 1, (256, 256), (slice(0, 256), slice(0, 256)))
    part = hagen_signal(0, 1, (256, 256), (slice(64, 192), slice(128, 256)))
    np.testing.assert_allclose(part, whole[64:192, 128:256])


def test_version_04_and_chunks(tmp_path):
    paths = write_demo_data(
        tmp_path, kind="hagen2d", size="small", version="0.4", chunks={"hagen2d": (1, 64, 128)}
    )
    assert set(paths) == {"hagen2d"}
    stack = open_volume(paths["hagen2d"])
    assert stack.attrs["format"] == "ome-zarr-0.4"
    assert tuple(c[0] for c in stack.data.chunks) == (1, 64, 128)


def test_reuse_and_overwrite(tmp_path):
    kwargs = {"kind": "hagen2d", "size": "small", "shapes": {"hagen2d": (1, 64, 64)}}
    path = write_demo_data(tmp_path, **kwargs)["hagen2d"]
    marker = zarr.open_group(path, mode="r+")
    marker.attrs["touched"] = True
    write_demo_data(tmp_path, **kwargs)  # same parameters: reused, not rewritten
    assert zarr.open_group(path, mode="r").attrs["touched"] is True
    with pytest.raises(ConfigError, match=r"exists .* Fix: pass overwrite=True"):
        write_demo_data(tmp_path, **{**kwargs, "seed": 1})
    write_demo_data(tmp_path, **{**kwargs, "seed": 1}, overwrite=True)
    assert "touched" not in zarr.open_group(path, mode="r").attrs


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"kind": "hagen3d"}, r"kind must be 'all' or one of"),
        ({"size": "huge"}, r"size must be one of"),
        ({"version": "0.3"}, r"version must be '0.4' or '0.5'"),
        ({"shapes": {"hagen2d": (2, 100, 128)}}, r"multiples of 16"),
        ({"shapes": {"hagen2d": (100, 128)}}, r"must have 3 entries"),
        ({"kind": "vol3d2c", "shapes": {"vol3d2c": (3, 16, 64, 64)}}, r"must be \(2, Z, Y, X\)"),
        ({"chunks": {"hagen2d": (64, 64)}}, r"one positive entry per dim"),
    ],
)
def test_bad_arguments(tmp_path, kwargs, match):
    with pytest.raises(ConfigError, match=match):
        write_demo_data(tmp_path, **{"size": "small", **kwargs})


def test_write_ome_zarr_rejects_non_canonical_order(tmp_path):
    with pytest.raises(ConfigError, match=r"must follow the order"):
        write_ome_zarr(tmp_path / "x.zarr", np.zeros((2, 3, 8, 8), "uint8"), "ZCYX")
    with pytest.raises(ConfigError, match=r"levels must be an int >= 1"):
        write_ome_zarr(tmp_path / "x.zarr", np.zeros((8, 8), "uint8"), "YX", levels=0)
