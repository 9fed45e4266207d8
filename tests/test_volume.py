"""Tests of patchsieve.volume: axes, every source kind, pyramids, coords, errors, lazy open."""

from __future__ import annotations

import json
import pickle

import dask.array as da
import numpy as np
import pytest
import xarray as xr
import zarr

from patchsieve.errors import AxesError, DataError, VolumeError, VolumeNotFoundError
from patchsieve.volume import (
    DIM_ORDER,
    open_pyramid,
    open_volume,
    open_zarr_array,
    parse_axes,
    strip_credentials,
)


def _storage_chunks(vol: xr.DataArray) -> tuple[int, ...]:
    return tuple(c[0] for c in vol.data.chunks)


# ----------------------------------------------------------------------------- parse_axes
@pytest.mark.parametrize(
    ("axes", "expected"),
    [
        ("YX", ("y", "x")),
        ("SYX", ("s", "y", "x")),
        ("ZYX", ("z", "y", "x")),
        ("CZYX", ("c", "z", "y", "x")),
        ("SCZYX", ("s", "c", "z", "y", "x")),
        ("TCZYX", ("t", "c", "z", "y", "x")),
        ("STCZYX", ("s", "t", "c", "z", "y", "x")),
        ("czyx", ("c", "z", "y", "x")),
        ("XY", ("x", "y")),
        ("ZCYX", ("z", "c", "y", "x")),
        ("YXZ", ("y", "x", "z")),
        (("z", "y", "x"), ("z", "y", "x")),
    ],
)
def test_parse_axes_accepts_careamics_strings(axes, expected):
    assert parse_axes(axes) == expected
    assert parse_axes(axes, ndim=len(expected)) == expected


@pytest.mark.parametrize(
    ("axes", "ndim", "match"),
    [
        (
            "ZQYX",
            None,
            r"axes='ZQYX' contains unknown letter\(s\) \['Q'\].*STCZYX|S, T, C, Z, Y, X",
        ),
        ("ZZYX", None, r"repeats axis \['Z'\]"),
        ("SYXS", None, r"repeats axis"),
        ("ZY", None, r"lacks X"),
        ("CZX", None, r"lacks Y"),
        ("Z", None, r"lacks Y and X"),
        ("YZX", None, r"must be adjacent"),
        ("", None, r"axes is empty"),
        (123, None, r"axes must be a string"),
        (("zz", "y", "x"), None, r"axes must be a string"),
        ("ZYX", 2, r"names 3 dims but the data has ndim=2"),
        ("SYX", 4, r"ndim=4"),
    ],
)
def test_parse_axes_rejects_bad_strings(axes, ndim, match):
    with pytest.raises(AxesError, match=match):
        parse_axes(axes, ndim)


def test_axes_error_is_a_value_error():
    with pytest.raises(ValueError):
        parse_axes("ABC")


# ----------------------------------------------------------------------------- strip_credentials
@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("s3://bucket/a.zarr", "s3://bucket/a.zarr"),
        ("s3://AKIA:secret@bucket/a.zarr", "s3://bucket/a.zarr"),
        ("https://user:pw@host:8080/x.zarr?token=abc&v=2", "https://host:8080/x.zarr?v=2"),
        ("https://h/x?X-Amz-Signature=s&X-Amz-Credential=c&part=1", "https://h/x?part=1"),
        ("gs://b/x?access_token=t", "gs://b/x"),
        ("/local/path.zarr", "/local/path.zarr"),
    ],
)
def test_strip_credentials(url, expected):
    assert strip_credentials(url) == expected


# ----------------------------------------------------------------------------- OME-Zarr
@pytest.mark.parametrize("version", ["0.4", "0.5"])
@pytest.mark.parametrize(
    ("fixture", "axes", "chunks"),
    [
        ("syx_array", "SYX", (1, 32, 32)),
        ("zyx_array", "ZYX", (8, 32, 32)),
        ("czyx_array", "CZYX", (1, 5, 16, 16)),
        ("nondivisible_array", "SYX", (1, 64, 64)),
    ],
)
def test_ome_zarr_round_trip(tmp_path, request, write_ome_zarr, version, fixture, axes, chunks):
    data = request.getfixturevalue(fixture)
    path = write_ome_zarr(tmp_path / "img.ome.zarr", data, axes, version=version, chunks=chunks)
    vol = open_volume(path)
    assert isinstance(vol.data, da.Array)
    assert vol.dims == parse_axes(axes)
    assert vol.name is None
    assert vol.dtype == data.dtype
    assert _storage_chunks(vol) == chunks
    np.testing.assert_array_equal(vol.values, data)
    assert vol.attrs["format"] == f"ome-zarr-{version}"
    assert vol.attrs["array_path"] == "s0"
    assert vol.attrs["source"] == str(path)
    assert vol.attrs["level"] == 0 and vol.attrs["n_levels"] == 1


def test_ome_zarr_coords_and_attrs(tmp_path, write_ome_zarr, czyx_array):
    path = write_ome_zarr(
        tmp_path / "img.ome.zarr",
        czyx_array,
        "CZYX",
        scale={"z": 2.0, "y": 0.5, "x": 0.25},
        translation={"z": 10.0, "y": -3.0, "x": 1.0},
        units={"z": "micrometer", "y": "micrometer", "x": "micrometer"},
    )
    vol = open_volume(path)
    assert vol.attrs["scale"] == {"c": 1.0, "z": 2.0, "y": 0.5, "x": 0.25}
    assert vol.attrs["translation"] == {"c": 0.0, "z": 10.0, "y": -3.0, "x": 1.0}
    assert vol.attrs["units"] == {"z": "micrometer", "y": "micrometer", "x": "micrometer"}
    np.testing.assert_allclose(vol.coords["z"], 10.0 + 2.0 * np.arange(10))
    np.testing.assert_allclose(vol.coords["y"], -3.0 + 0.5 * np.arange(48))
    np.testing.assert_allclose(vol.coords["x"], 1.0 + 0.25 * np.arange(40))
    np.testing.assert_array_equal(vol.coords["c"], [0, 1])


@pytest.mark.parametrize("version", ["0.4", "0.5"])
def test_pyramid_levels(tmp_path, write_ome_zarr, zyx_array, version):
    path = write_ome_zarr(
        tmp_path / "p.ome.zarr",
        zyx_array,
        "ZYX",
        version=version,
        chunks=(8, 32, 32),
        levels=3,
        scale={"z": 1.0, "y": 0.5, "x": 0.5},
    )
    levels = open_pyramid(path)
    assert [lv.shape for lv in levels] == [(20, 64, 72), (10, 32, 36), (5, 16, 18)]
    assert [lv.attrs["level"] for lv in levels] == [0, 1, 2]
    assert all(lv.attrs["n_levels"] == 3 for lv in levels)
    assert [lv.attrs["scale"]["y"] for lv in levels] == [0.5, 1.0, 2.0]
    assert [lv.attrs["scale"]["z"] for lv in levels] == [1.0, 2.0, 4.0]
    one = open_volume(path, level=1)
    xr.testing.assert_identical(one, levels[1])
    assert one.attrs["array_path"] == "s1"
    # ome-zarr 0.18 names levels s0, s1, ...: paths come from the metadata, not from the index
    group = zarr.open_group(str(path), mode="r")
    np.testing.assert_array_equal(one.values, group["s1"][...])


def test_opened_volume_pickles(tmp_path, write_ome_zarr, czyx_array):
    """The lazy graph travels to other processes (distributed workers) and reads the same data."""
    vol = open_volume(write_ome_zarr(tmp_path / "p.ome.zarr", czyx_array, "CZYX"), channel=0)
    clone = pickle.loads(pickle.dumps(vol))
    xr.testing.assert_identical(clone.compute(), vol.compute())


@pytest.mark.careamics
def test_careamics_reference_dir_fixture(careamics_reference_dir):
    assert careamics_reference_dir.name == "careamics_reference"
    assert (careamics_reference_dir / "inputs.npz").is_file()


def test_pyramid_of_plain_source_is_one_level(zyx_array):
    levels = open_pyramid(zyx_array, axes="ZYX")
    assert len(levels) == 1 and levels[0].attrs["n_levels"] == 1


def test_sample_axis_is_custom_ngff_axis(tmp_path, write_ome_zarr, syx_array):
    path = write_ome_zarr(tmp_path / "s.ome.zarr", syx_array, "SYX")
    attrs = zarr.open_group(str(path), mode="r").attrs.asdict()
    axes = attrs["ome"]["multiscales"][0]["axes"]
    assert axes[0] == {"name": "s", "type": "custom"}
    assert open_volume(path).dims == ("s", "y", "x")


def test_sample_and_time_fall_back_to_plain_zarr_v3(tmp_path, write_ome_zarr):
    data = np.arange(2 * 3 * 16 * 16, dtype="uint16").reshape(2, 3, 16, 16)
    path = write_ome_zarr(tmp_path / "st.zarr", data, "STYX", chunks=(1, 1, 16, 16))
    arr = zarr.open_array(str(path), mode="r")
    assert arr.metadata.dimension_names == ("s", "t", "y", "x")
    vol = open_volume(path)
    assert vol.dims == ("s", "t", "y", "x") and vol.attrs["format"] == "zarr-v3"
    np.testing.assert_array_equal(vol.values, data)


def test_ome_zarr_axes_override(tmp_path, write_ome_zarr, zyx_array):
    path = write_ome_zarr(tmp_path / "o.ome.zarr", zyx_array, "ZYX")
    vol = open_volume(path, axes="SYX")
    assert vol.dims == ("s", "y", "x")


def test_bioformats2raw_container(tmp_path, write_ome_zarr, zyx_array):
    root = tmp_path / "b2r.zarr"
    zarr.open_group(str(root), mode="w", zarr_format=2).attrs["bioformats2raw.layout"] = 3
    write_ome_zarr(root / "0", zyx_array, "ZYX", version="0.4")
    vol = open_volume(root)
    np.testing.assert_array_equal(vol.values, zyx_array)


def test_omero_channel_names(tmp_path, write_ome_zarr, czyx_array):
    path = write_ome_zarr(tmp_path / "c.ome.zarr", czyx_array, "CZYX", version="0.4")
    group = zarr.open_group(str(path), mode="r+")
    group.attrs["omero"] = {"channels": [{"label": "dapi"}, {"label": "gfp"}]}
    assert open_volume(path).attrs["channel_names"] == ["dapi", "gfp"]
    assert open_volume(path, channel=1).attrs["channel_names"] == ["gfp"]


# ----------------------------------------------------------------------------- channel selection
def test_channel_int_drops_c(tmp_path, write_ome_zarr, czyx_array):
    path = write_ome_zarr(tmp_path / "c.ome.zarr", czyx_array, "CZYX", chunks=(1, 5, 16, 16))
    vol = open_volume(path, channel=1)
    assert vol.dims == ("z", "y", "x")
    assert "c" not in vol.coords and "c" not in vol.attrs["scale"]
    assert vol.attrs["channel"] == 1
    assert _storage_chunks(vol) == (5, 16, 16)
    np.testing.assert_array_equal(vol.values, czyx_array[1])


def test_channel_sequence_keeps_c(czyx_array):
    assert open_volume(czyx_array, axes="CZYX", channel=np.array([1])).sizes["c"] == 1
    vol = open_volume(czyx_array, axes="CZYX", channel=[1, 0])
    assert vol.dims == ("c", "z", "y", "x")
    np.testing.assert_array_equal(vol.coords["c"], [1, 0])
    np.testing.assert_array_equal(vol.values, czyx_array[[1, 0]])


@pytest.mark.parametrize("channel", [2, -1, [0, 5], [], 1.5, True])
def test_channel_out_of_range(czyx_array, channel):
    with pytest.raises(VolumeError, match=r"channel=.* out of range .* 2 channel\(s\)"):
        open_volume(czyx_array, axes="CZYX", channel=channel)


def test_channel_without_c_axis(zyx_array):
    with pytest.raises(VolumeError, match=r"channel=0 given but .* has no channel axis"):
        open_volume(zyx_array, axes="ZYX", channel=0)


# ----------------------------------------------------------------------------- plain Zarr
@pytest.mark.parametrize("zarr_format", [2, 3])
def test_plain_zarr_with_axes(tmp_path, write_plain_zarr, czyx_array, zarr_format):
    path = write_plain_zarr(
        tmp_path / "a.zarr", czyx_array, zarr_format=zarr_format, chunks=(1, 4, 16, 32)
    )
    vol = open_volume(path, axes="CZYX")
    assert vol.attrs["format"] == f"zarr-v{zarr_format}"
    assert vol.attrs["array_path"] == "" and vol.attrs["n_levels"] == 1
    assert _storage_chunks(vol) == (1, 4, 16, 32)
    np.testing.assert_array_equal(vol.values, czyx_array)


def test_plain_zarr_v3_dimension_names(tmp_path, write_plain_zarr, zyx_array):
    path = write_plain_zarr(tmp_path / "a.zarr", zyx_array, dimension_names=("z", "y", "x"))
    vol = open_volume(path)
    assert vol.dims == ("z", "y", "x")
    np.testing.assert_array_equal(vol.values, zyx_array)


def test_plain_zarr_v2_xarray_dimensions(tmp_path, write_plain_zarr, zyx_array):
    path = write_plain_zarr(tmp_path / "a.zarr", zyx_array, zarr_format=2)
    zarr.open_array(str(path), mode="r+").attrs["_ARRAY_DIMENSIONS"] = ["z", "y", "x"]
    assert open_volume(path).dims == ("z", "y", "x")


def test_plain_zarr_sharded_chunks_are_shards(tmp_path, write_plain_zarr, zyx_array):
    path = write_plain_zarr(tmp_path / "s.zarr", zyx_array, chunks=(4, 16, 24), shards=(8, 32, 72))
    vol = open_volume(path, axes="ZYX")
    assert _storage_chunks(vol) == (8, 32, 72)
    np.testing.assert_array_equal(vol.values, zyx_array)


def test_plain_zarr_needs_axes(tmp_path, write_plain_zarr, zyx_array):
    path = write_plain_zarr(tmp_path / "a.zarr", zyx_array, zarr_format=2)
    with pytest.raises(AxesError, match=r"without dimension names needs axes="):
        open_volume(path)


def test_plain_zarr_bad_dimension_names(tmp_path, write_plain_zarr, zyx_array):
    path = write_plain_zarr(tmp_path / "a.zarr", zyx_array, dimension_names=("q", "y", "x"))
    with pytest.raises(AxesError, match=r"dimension names .* are not CAREamics axes"):
        open_volume(path)
    assert open_volume(path, axes="ZYX").dims == ("z", "y", "x")


def test_zarr_objects_as_source(tmp_path, write_plain_zarr, write_ome_zarr, zyx_array):
    arr = zarr.open_array(write_plain_zarr(tmp_path / "a.zarr", zyx_array), mode="r")
    assert open_volume(arr, axes="ZYX").attrs["source"] == "<zarr>"
    group = zarr.open_group(
        str(write_ome_zarr(tmp_path / "g.ome.zarr", zyx_array, "ZYX")), mode="r"
    )
    np.testing.assert_array_equal(open_volume(group).values, zyx_array)
    store = zarr.storage.LocalStore(str(tmp_path / "g.ome.zarr"), read_only=True)
    assert open_volume(store).dims == ("z", "y", "x")


def test_group_with_single_array_and_axes(tmp_path, zyx_array):
    group = zarr.open_group(str(tmp_path / "g.zarr"), mode="w")
    group.create_array("data", data=zyx_array, chunks=(10, 32, 32))
    vol = open_volume(tmp_path / "g.zarr", axes="ZYX")
    assert vol.attrs["array_path"] == "data"
    np.testing.assert_array_equal(vol.values, zyx_array)


def test_open_zarr_array(tmp_path, write_ome_zarr, zyx_array):
    path = write_ome_zarr(tmp_path / "p.ome.zarr", zyx_array, "ZYX", levels=2)
    arr = open_zarr_array(path, "s1")
    assert isinstance(arr, zarr.Array) and arr.shape == (10, 32, 36)
    assert arr.read_only
    with pytest.raises(VolumeError, match=r"is a Zarr group, not an array"):
        open_zarr_array(path)
    with pytest.raises(VolumeNotFoundError):
        open_zarr_array(path, "s9")


# ----------------------------------------------------------------------------- TIFF
def test_tiff_with_axes_metadata(tmp_path, write_tiff, czyx_array):
    path = write_tiff(tmp_path / "a.tif", czyx_array, axes="CZYX")
    vol = open_volume(path)
    assert vol.dims == ("c", "z", "y", "x") and vol.attrs["format"] == "tiff"
    assert _storage_chunks(vol) == (1, 1, 48, 40)  # one TIFF page per block
    np.testing.assert_array_equal(vol.values, czyx_array)


def test_tiff_tiled_compressed_and_axes_argument(tmp_path, write_tiff, zyx_array):
    path = write_tiff(tmp_path / "a.tiff", zyx_array, tile=(32, 32), compression="zlib")
    with pytest.raises(AxesError, match=r"does not declare its axes; pass axes="):
        open_volume(path)
    vol = open_volume(path, axes="ZYX")
    assert _storage_chunks(vol) == (1, 32, 32)
    np.testing.assert_array_equal(vol.values, zyx_array)


def test_tiff_array_pickles_and_reopens(tmp_path, write_tiff, zyx_array):
    vol = open_volume(write_tiff(tmp_path / "a.tif", zyx_array, axes="ZYX"))
    clone = pickle.loads(pickle.dumps(vol.data))
    np.testing.assert_array_equal(clone[3].compute(), zyx_array[3])


def test_tiff_over_fsspec(memory_store, tmp_path, write_tiff, zyx_array):
    import fsspec

    local = write_tiff(tmp_path / "a.tif", zyx_array, axes="ZYX")
    fsspec.filesystem("memory").put(local, memory_store.removeprefix("memory:/") + "/a.tif")
    vol = open_volume(memory_store + "/a.tif")
    np.testing.assert_array_equal(vol.values, zyx_array)


# ----------------------------------------------------------------------------- numpy / dask
def test_numpy_source(zyx_array):
    vol = open_volume(zyx_array, axes="ZYX")
    assert vol.attrs["source"] == "<numpy>" and vol.attrs["format"] == "numpy"
    assert isinstance(vol.data, da.Array)
    np.testing.assert_array_equal(vol.values, zyx_array)


def test_dask_source_keeps_chunks(czyx_array):
    darr = da.from_array(czyx_array, chunks=(1, 3, 20, 17))
    vol = open_volume(darr, axes="CZYX")
    assert vol.data.chunks == darr.chunks
    assert vol.attrs["source"] == "<dask>" and vol.attrs["format"] == "dask"


def test_non_canonical_order_is_transposed(czyx_array):
    zcyx = np.moveaxis(czyx_array, 0, 1)
    vol = open_volume(zcyx, axes="ZCYX")
    assert vol.dims == ("c", "z", "y", "x")
    np.testing.assert_array_equal(vol.values, czyx_array)
    xy = open_volume(czyx_array[0, 0].T, axes="XY")
    assert xy.dims == ("y", "x")
    np.testing.assert_array_equal(xy.values, czyx_array[0, 0])


def test_numpy_needs_axes(zyx_array):
    with pytest.raises(AxesError, match=r"axes is required for numpy arrays"):
        open_volume(zyx_array)


def test_level_on_numpy(zyx_array):
    with pytest.raises(VolumeError, match=r"level=1 does not exist"):
        open_volume(zyx_array, axes="ZYX", level=1)


@pytest.mark.parametrize("dtype", [np.complex64, np.bool_, object, "U3"])
def test_unsupported_dtype(dtype):
    with pytest.raises(DataError, match=r"dtype .* is not supported"):
        open_volume(np.zeros((4, 4), dtype=dtype), axes="YX")


def test_zero_size():
    with pytest.raises(DataError, match=r"volume is empty"):
        open_volume(np.zeros((0, 4, 4), dtype="uint8"), axes="ZYX")


# ----------------------------------------------------------------------------- fsspec URLs
def test_memory_url_ome_zarr(memory_store, write_ome_zarr, czyx_array):
    url = write_ome_zarr(f"{memory_store}/m.ome.zarr", czyx_array, "CZYX", levels=2)
    vol = open_volume(url, channel=0)
    assert vol.attrs["source"] == url
    np.testing.assert_array_equal(vol.values, czyx_array[0])
    assert len(open_pyramid(url)) == 2


def test_memory_url_plain_zarr(memory_store, write_plain_zarr, zyx_array):
    url = write_plain_zarr(f"{memory_store}/a.zarr", zyx_array, zarr_format=2)
    np.testing.assert_array_equal(open_volume(url, axes="ZYX").values, zyx_array)


def test_file_url(tmp_path, write_ome_zarr, zyx_array):
    path = write_ome_zarr(tmp_path / "f.ome.zarr", zyx_array, "ZYX")
    vol = open_volume((tmp_path / "f.ome.zarr").as_uri())
    assert vol.attrs["format"] == "ome-zarr-0.5"
    np.testing.assert_array_equal(vol.values, zyx_array)
    assert path


@pytest.mark.s3
@pytest.mark.parametrize("version", ["0.4", "0.5"])
def test_s3_ome_zarr(s3_bucket, write_ome_zarr, czyx_array, version):
    url = f"{s3_bucket.url}/img.ome.zarr"
    write_ome_zarr(
        url,
        czyx_array,
        "CZYX",
        version=version,
        levels=2,
        chunks=(1, 5, 16, 16),
        storage_options=s3_bucket.storage_options,
    )
    vol = open_volume(url, channel=1, storage_options=s3_bucket.storage_options)
    assert vol.attrs["source"] == url and vol.attrs["format"] == f"ome-zarr-{version}"
    assert "testing" not in json.dumps(vol.attrs)  # no credentials in attrs
    assert _storage_chunks(vol) == (5, 16, 16)
    np.testing.assert_array_equal(vol.values, czyx_array[1])
    assert [lv.shape for lv in open_pyramid(url, storage_options=s3_bucket.storage_options)] == [
        (2, 10, 48, 40),
        (2, 5, 24, 20),
    ]


@pytest.mark.s3
def test_s3_plain_zarr_and_missing(s3_bucket, write_plain_zarr, zyx_array):
    url = write_plain_zarr(
        f"{s3_bucket.url}/a.zarr",
        zyx_array,
        dimension_names=("z", "y", "x"),
        storage_options=s3_bucket.storage_options,
    )
    vol = open_volume(url, storage_options=s3_bucket.storage_options)
    np.testing.assert_array_equal(vol.values, zyx_array)
    with pytest.raises(VolumeNotFoundError, match=r"holds no Zarr array or group"):
        open_volume(f"{s3_bucket.url}/nothing.zarr", storage_options=s3_bucket.storage_options)


# ----------------------------------------------------------------------------- metadata-only open
def test_open_reads_no_chunk_memory(memory_store, chunk_reads, write_ome_zarr, czyx_array):
    write_ome_zarr(
        f"{memory_store}/m.ome.zarr", czyx_array, "CZYX", levels=3, chunks=(1, 5, 16, 16)
    )
    url = chunk_reads.url(f"{memory_store}/m.ome.zarr")
    chunk_reads.clear()
    vol = open_volume(url, level=1, channel=[0, 1])
    levels = open_pyramid(url)
    assert chunk_reads.chunk_reads() == []
    assert any(key.endswith("zarr.json") for key in chunk_reads.all_reads())  # counting works
    vol.sum().compute()
    assert len(chunk_reads.chunk_reads()) > 0
    assert len(levels) == 3


def test_open_reads_no_chunk_local(
    tmp_path, chunk_reads, write_ome_zarr, write_plain_zarr, zyx_array
):
    ome = write_ome_zarr(tmp_path / "p.ome.zarr", zyx_array, "ZYX", levels=3)
    plain = write_plain_zarr(tmp_path / "a.zarr", zyx_array, zarr_format=2)
    chunk_reads.clear()
    vols = [open_volume(ome), open_volume(ome, level=2), open_volume(plain, axes="ZYX")]
    assert chunk_reads.reads and chunk_reads.chunk_reads() == []
    vols[1].max().compute()
    assert len(chunk_reads.chunk_reads()) > 0


# ----------------------------------------------------------------------------- errors
def test_missing_local_path(tmp_path):
    with pytest.raises(VolumeNotFoundError, match=r"does not exist"):
        open_volume(tmp_path / "nope.ome.zarr")
    with pytest.raises(FileNotFoundError):  # catchable as the builtin too
        open_volume(str(tmp_path / "nope.tif"), axes="ZYX")


def test_missing_memory_url(memory_store):
    with pytest.raises(VolumeNotFoundError, match=r"holds no Zarr array or group"):
        open_volume(f"{memory_store}/nope.zarr")


def test_directory_that_is_not_zarr(tmp_path):
    (tmp_path / "plain_dir").mkdir()
    with pytest.raises(VolumeNotFoundError, match=r"holds no Zarr"):
        open_volume(tmp_path / "plain_dir")


def test_group_not_ome_zarr(tmp_path):
    group = zarr.open_group(str(tmp_path / "g.zarr"), mode="w")
    group.create_array("a", shape=(4, 4), dtype="uint8")
    group.create_array("b", shape=(4, 4), dtype="uint8")
    with pytest.raises(VolumeError, match=r"is a Zarr group but not an OME-Zarr image.*axes="):
        open_volume(tmp_path / "g.zarr")
    with pytest.raises(VolumeError, match=r"not an OME-Zarr image"):
        open_volume(tmp_path / "g.zarr", axes="YX")  # two arrays: ambiguous
    assert open_volume(tmp_path / "g.zarr/b", axes="YX").shape == (4, 4)


@pytest.mark.parametrize("level", [3, -1, 1.0])
def test_level_does_not_exist(tmp_path, write_ome_zarr, zyx_array, level):
    path = write_ome_zarr(tmp_path / "p.ome.zarr", zyx_array, "ZYX", levels=3)
    with pytest.raises(VolumeError, match=r"level=.* does not exist .* 3 level\(s\)"):
        open_volume(path, level=level)


def test_level_on_plain_zarr(tmp_path, write_plain_zarr, zyx_array):
    path = write_plain_zarr(tmp_path / "a.zarr", zyx_array)
    with pytest.raises(VolumeError, match=r"level=1 does not exist: .* only level 0"):
        open_volume(path, axes="ZYX", level=1)


@pytest.mark.parametrize("name", ["image.png", "volume.npy", "noext"])
def test_unsupported_file_type(tmp_path, name):
    (tmp_path / name).write_bytes(b"\x89PNG....")
    with pytest.raises(VolumeError, match=r"unsupported file type"):
        open_volume(tmp_path / name)


def test_corrupt_tiff(tmp_path):
    (tmp_path / "bad.tif").write_bytes(b"not a tiff at all")
    with pytest.raises(VolumeError, match=r"is not a readable TIFF"):
        open_volume(tmp_path / "bad.tif", axes="YX")


def test_unsupported_source_type():
    with pytest.raises(VolumeError, match=r"source of type list is not supported"):
        open_volume([[1, 2], [3, 4]])


def _break(path, mutate):
    group = zarr.open_group(str(path), mode="r+")
    attrs = group.attrs.asdict()
    meta = attrs["ome"] if "ome" in attrs else attrs
    mutate(meta["multiscales"])
    group.attrs.update(attrs)


@pytest.mark.parametrize(
    ("mutate", "match"),
    [
        (lambda ms: ms[0].pop("datasets"), r"'datasets' missing or empty"),
        (lambda ms: ms[0].update(axes=[]), r"'axes' missing or empty"),
        (lambda ms: ms.clear(), r"expected a non-empty list"),
        (lambda ms: ms[0]["datasets"][0].update(path="missing"), r"path='missing' does not exist"),
        (lambda ms: ms[0]["datasets"][0].pop("path"), r"datasets\[0\] has no path"),
        (
            lambda ms: ms[0]["datasets"][0]["coordinateTransformations"][0].update(scale=[1.0]),
            r"scale \[1.0\] has 1 entries for 3 axes",
        ),
        (
            lambda ms: ms[0]["datasets"][0].update(
                coordinateTransformations=[{"type": "scale", "path": "x"}]
            ),
            r"unsupported or broken coordinateTransformation",
        ),
        (lambda ms: ms[0]["axes"].pop(0), r"broken multiscales metadata: scale"),
        (lambda ms: ms[0]["axes"][0].update(name="y"), r"repeated axes"),
        (lambda ms: ms[0]["axes"][0].update(name="angle", type="space"), r"NGFF axis 'angle'"),
        (lambda ms: ms[0]["axes"].__setitem__(0, 7), r"axis entry 7 has no name"),
    ],
)
def test_broken_multiscales(tmp_path, write_ome_zarr, zyx_array, mutate, match):
    path = write_ome_zarr(tmp_path / "b.ome.zarr", zyx_array, "ZYX", version="0.4")
    _break(path, mutate)
    with pytest.raises(VolumeError, match=match):
        open_volume(path)


def test_ngff_03_string_axes_and_global_transform(tmp_path, write_ome_zarr, zyx_array):
    path = write_ome_zarr(
        tmp_path / "g.ome.zarr", zyx_array, "ZYX", scale={"z": 2.0}, version="0.4"
    )

    def mutate(ms):
        ms[0]["axes"] = ["z", "y", "x"]
        ms[0]["coordinateTransformations"] = [{"type": "scale", "scale": [1.0, 3.0, 3.0]}]

    _break(path, mutate)
    vol = open_volume(path)
    assert vol.attrs["scale"] == {"z": 2.0, "y": 3.0, "x": 3.0}


def test_dims_are_canonical_subset(tmp_path, write_ome_zarr, czyx_array):
    vol = open_volume(write_ome_zarr(tmp_path / "c.ome.zarr", czyx_array, "CZYX"))
    assert list(vol.dims) == [d for d in DIM_ORDER if d in vol.dims]
