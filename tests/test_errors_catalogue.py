"""The bad-input catalogue: one test per row of the table in ``docs/errors.md``.

The table is the single source of truth: this module parses it and, for every row, runs the case
registered under the row's id, then checks the exception class and that the documented message
fragment appears verbatim in the message. A row without a registered case, or a case without a
row, fails the suite. Rows listed under "Known gaps" in the document are expected to fail
(``xfail(strict=True)``) until the module that owns the behaviour is fixed; they document the
intended error.

Exception column conventions:

* ``ConfigError`` (any class of :mod:`patchsieve.errors`): the case must raise exactly that class.
* ``exit 2``: a CLI row; the case returns ``(exit_code, output)`` of the typer app.
* ``accepted``: not an error; the case returns normally after checking the documented policy.
* Other names (``RuntimeError``): documented third-party behaviour the library deliberately lets
  through; the class name must match.
"""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import signal
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zarr

import patchsieve.errors as perrors

DOC = Path(__file__).resolve().parents[1] / "docs" / "errors.md"
SECRET = "S3CR3T-CANARY-9f2c"
KEY_ID = "AKIACANARYKEY0001"

pytestmark = pytest.mark.cluster


# ----------------------------------------------------------------------------- the document
def parse_table(text: str) -> list[dict[str, str]]:
    """Rows of the catalogue table: id, area, input, exception, message, fix."""
    rows = []
    section = text.partition("\n## Catalogue")[2].split("\n## ", 1)[0]
    for line in section.splitlines():
        if not line.startswith("| `"):
            continue
        cells = [c.strip() for c in line.strip().strip("|").split(" | ")]
        if len(cells) != 6:
            raise AssertionError(f"catalogue row needs 6 cells: {line!r}")
        rid, area, inp, exc, msg, fix = cells
        rows.append({
            "id": rid.strip("`"), "area": area, "input": inp, "exception": exc.strip("`"),
            "message": _unquote(msg), "fix": fix,
        })
    return rows


def _unquote(cell: str) -> str:
    m = re.fullmatch(r"`(.*)`", cell)
    return m.group(1).replace("\\|", "|") if m else ""


def parse_gaps(text: str) -> dict[str, str]:
    """Ids listed in the "Known gaps" section (``- `id`: ...`` bullets)."""
    _, _, tail = text.partition("## Known gaps")
    tail = tail.split("\n## ", 1)[0]
    return {m.group(1): m.group(2) for m in re.finditer(r"^- `([a-z0-9-]+)`: (.*)$", tail, re.M)}


DOC_TEXT = DOC.read_text() if DOC.exists() else ""
ROWS = parse_table(DOC_TEXT)
GAPS = parse_gaps(DOC_TEXT)
CASES: dict[str, Callable[[Ctx], Any]] = {}


def case(rid: str) -> Callable[[Callable[[Ctx], Any]], Callable[[Ctx], Any]]:
    def deco(fn: Callable[[Ctx], Any]) -> Callable[[Ctx], Any]:
        assert rid not in CASES, rid
        CASES[rid] = fn
        return fn

    return deco


# ----------------------------------------------------------------------------- shared resources
class Shared:
    """Module-wide expensive resources, created on first use."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._client: Any = None
        self._cluster: Any = None
        self._sidecar: str | None = None

    def client(self) -> Any:
        if self._client is None:
            from distributed import Client, LocalCluster

            self._cluster = LocalCluster(n_workers=1, threads_per_worker=2, processes=False,
                                         dashboard_address=None)
            self._client = Client(self._cluster, set_as_default=False)
        return self._client

    def source(self) -> str:
        path = self.root / "src.zarr"
        if not path.exists():
            write_stack(path)
        return str(path)

    def sidecar(self) -> str:
        if self._sidecar is None:
            from patchsieve import compute

            out = self.root / "shared.patchsieve.zarr"
            compute(self.source(), shannon(), (16, 16), out, client=self.client())
            self._sidecar = str(out)
        return self._sidecar

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._cluster.close()


class Ctx:
    """What a case gets: a private tmp dir and the shared resources."""

    def __init__(self, tmp: Path, shared: Shared) -> None:
        self.tmp, self.shared = tmp, shared

    def client(self) -> Any:
        return self.shared.client()

    def stack(self, name: str = "stack.zarr", data: np.ndarray | None = None) -> str:
        return write_stack(self.tmp / name, data)

    def sidecar_copy(self) -> Path:
        dst = self.tmp / "copy.patchsieve.zarr"
        shutil.copytree(self.shared.sidecar(), dst)
        return dst


def stack_data(seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    data = rng.poisson(20, size=(2, 64, 64)).astype(np.uint16)
    data[:, 16:48, 16:48] += 300
    return data


def write_stack(path: Path, data: np.ndarray | None = None, chunks=(1, 32, 32)) -> str:
    data = stack_data() if data is None else data
    arr = zarr.create_array(str(path), shape=data.shape, chunks=chunks, dtype=data.dtype,
                            dimension_names=("s", "y", "x")[-data.ndim:], overwrite=True)
    arr[...] = data
    return str(path)


def shannon(threshold: float = 3.0, **kw: Any) -> Any:
    from patchsieve.config import ShannonPatchFilterConfig

    return ShannonPatchFilterConfig(threshold=threshold, **kw)


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory):
    s = Shared(tmp_path_factory.mktemp("catalogue"))
    yield s
    s.close()


@pytest.fixture
def ctx(tmp_path: Path, shared: Shared) -> Ctx:
    return Ctx(tmp_path, shared)


# ============================================================================= cases: volume
def _vol(source: Any, **kw: Any) -> Any:
    from patchsieve import open_volume

    return open_volume(source, **kw)


@case("axes-unknown-letter")
def _(ctx: Ctx) -> None:
    _vol(np.zeros((8, 8), "f4"), axes="QX")


@case("axes-repeated")
def _(ctx: Ctx) -> None:
    _vol(np.zeros((4, 8, 8), "f4"), axes="YYX")


@case("axes-missing-x")
def _(ctx: Ctx) -> None:
    _vol(np.zeros((4, 8), "f4"), axes="ZY")


@case("axes-not-adjacent")
def _(ctx: Ctx) -> None:
    _vol(np.zeros((8, 4, 8), "f4"), axes="YZX")


@case("axes-wrong-length")
def _(ctx: Ctx) -> None:
    _vol(np.zeros((8, 8), "f4"), axes="ZYX")


@case("axes-empty")
def _(ctx: Ctx) -> None:
    _vol(np.zeros((8, 8), "f4"), axes="")


@case("axes-not-a-string")
def _(ctx: Ctx) -> None:
    _vol(np.zeros((8, 8), "f4"), axes=["YX", 3])


@case("axes-missing-for-array")
def _(ctx: Ctx) -> None:
    _vol(np.zeros((8, 8), "f4"))


@case("zarr-without-dimension-names")
def _(ctx: Ctx) -> None:
    arr = zarr.create_array(str(ctx.tmp / "plain.zarr"), shape=(8, 8), chunks=(8, 8), dtype="u1")
    _vol(str(ctx.tmp / "plain.zarr"))
    del arr


@case("zarr-zero-size")
def _(ctx: Ctx) -> None:
    zarr.create_array(str(ctx.tmp / "empty.zarr"), shape=(0, 8), chunks=(1, 8), dtype="u2",
                      dimension_names=("y", "x"))
    _vol(str(ctx.tmp / "empty.zarr"))


@case("source-missing")
def _(ctx: Ctx) -> None:
    _vol(str(ctx.tmp / "nope.ome.zarr"))


@case("source-unsupported-file")
def _(ctx: Ctx) -> None:
    (ctx.tmp / "notes.txt").write_text("hello")
    _vol(str(ctx.tmp / "notes.txt"))


@case("source-unsupported-type")
def _(ctx: Ctx) -> None:
    _vol(12)


@case("tiff-unreadable")
def _(ctx: Ctx) -> None:
    (ctx.tmp / "broken.tif").write_bytes(b"II*\x00garbage" * 8)
    _vol(str(ctx.tmp / "broken.tif"), axes="YX")


def _ome_group(ctx: Ctx, multiscales: Any, extra: dict[str, Any] | None = None) -> str:
    g = zarr.open_group(str(ctx.tmp / "img.ome.zarr"), mode="w")
    g.create_array("s0", shape=(8, 8), chunks=(8, 8), dtype="u1")
    g.attrs["ome"] = {"version": "0.5", "multiscales": multiscales, **(extra or {})}
    return str(ctx.tmp / "img.ome.zarr")


_YX = [{"name": "y", "type": "space"}, {"name": "x", "type": "space"}]


@case("multiscales-not-a-list")
def _(ctx: Ctx) -> None:
    _vol(_ome_group(ctx, "garbage"))


@case("multiscales-no-datasets")
def _(ctx: Ctx) -> None:
    _vol(_ome_group(ctx, [{"axes": _YX}]))


@case("multiscales-missing-array")
def _(ctx: Ctx) -> None:
    _vol(_ome_group(ctx, [{"axes": _YX, "datasets": [{"path": "s9"}]}]))


@case("multiscales-bad-scale-length")
def _(ctx: Ctx) -> None:
    ds = [{"path": "s0", "coordinateTransformations": [{"type": "scale", "scale": [1.0]}]}]
    _vol(_ome_group(ctx, [{"axes": _YX, "datasets": ds}]))


@case("multiscales-non-numeric-scale")
def _(ctx: Ctx) -> None:
    ds = [{"path": "s0", "coordinateTransformations": [{"type": "scale", "scale": ["a", "b"]}]}]
    _vol(_ome_group(ctx, [{"axes": _YX, "datasets": ds}]))


@case("omero-channels-malformed")
def _(ctx: Ctx) -> None:
    _vol(_ome_group(ctx, [{"axes": _YX, "datasets": [{"path": "s0"}]}],
                    {"omero": {"channels": ["DAPI"]}}))


@case("level-out-of-range")
def _(ctx: Ctx) -> None:
    _vol(_ome_group(ctx, [{"axes": _YX, "datasets": [{"path": "s0"}]}]), level=3)


@case("channel-out-of-range")
def _(ctx: Ctx) -> None:
    _vol(np.zeros((2, 8, 8), "f4"), axes="CYX", channel=5)


@case("dtype-complex")
def _(ctx: Ctx) -> None:
    _vol(np.zeros((8, 8), np.complex64), axes="YX")


@case("dtype-bool")
def _(ctx: Ctx) -> None:
    _vol(np.zeros((8, 8), bool), axes="YX")


@case("dtype-object")
def _(ctx: Ctx) -> None:
    _vol(np.zeros((8, 8), object), axes="YX")


@case("volume-empty")
def _(ctx: Ctx) -> None:
    _vol(np.zeros((0, 8), "f4"), axes="YX")


@case("url-unreachable")
def _(ctx: Ctx) -> None:
    _vol("s3://bucket/img.ome.zarr", storage_options={
        "key": KEY_ID, "secret": SECRET, "endpoint_url": "http://127.0.0.1:9",
        "config_kwargs": {"connect_timeout": 1, "retries": {"max_attempts": 1}}})


@case("credentials-refused")
def _(ctx: Ctx) -> None:
    import fsspec
    from fsspec.implementations.memory import MemoryFileSystem

    class DenyAll(MemoryFileSystem):
        """An object store that refuses every request (wrong credentials)."""

        protocol = "denyall"

        def __init__(self, *a: Any, key: str = "", secret: str = "", **kw: Any) -> None:
            super().__init__(*a, **kw)

        def _deny(self, *a: Any, **kw: Any) -> Any:
            raise PermissionError("Access Denied")

        cat_file = _open = info = ls = exists = _deny

    fsspec.register_implementation("denyall", DenyAll, clobber=True)
    _vol("denyall://bucket/img.ome.zarr", storage_options={"key": KEY_ID, "secret": SECRET})


# ============================================================================= cases: configs
def _cfg(kind: str, **kw: Any) -> Any:
    from patchsieve import config as c

    cls = {"max": c.MaxPatchFilterConfig, "mean_std": c.MeanStdPatchFilterConfig,
           "shannon": c.ShannonPatchFilterConfig, "mask": c.MaskPatchFilterConfig}[kind]
    return cls(**kw)


@case("threshold-nan")
def _(ctx: Ctx) -> None:
    _cfg("shannon", threshold=float("nan"))


@case("threshold-negative")
def _(ctx: Ctx) -> None:
    _cfg("mean_std", mean_threshold=-1.0)


@case("coverage-out-of-range")
def _(ctx: Ctx) -> None:
    _cfg("max", threshold=10.0, coverage=1.5)


@case("filtered-patch-prob-out-of-range")
def _(ctx: Ctx) -> None:
    _cfg("shannon", threshold=7.5, filtered_patch_prob=1.2)


@case("ref-channel-negative")
def _(ctx: Ctx) -> None:
    _cfg("shannon", threshold=7.5, ref_channel=-1)


@case("config-unknown-key")
def _(ctx: Ctx) -> None:
    _cfg("shannon", threshold=7.5, treshold=8)


@case("config-unknown-filter")
def _(ctx: Ctx) -> None:
    from patchsieve.config import parse_filter_config

    parse_filter_config({"name": "median", "threshold": 3})


@case("mask-empty-array")
def _(ctx: Ctx) -> None:
    _cfg("mask", mask=np.zeros((0, 4), "u1"))


@case("filter-threshold-nan")
def _(ctx: Ctx) -> None:
    from patchsieve import ShannonPatchFilter

    ShannonPatchFilter(threshold=float("nan"))


# ============================================================================= cases: geometry
@case("patch-size-zero")
def _(ctx: Ctx) -> None:
    from patchsieve import RegionGrid

    RegionGrid((64, 64), (0, 16))


@case("patch-size-wrong-length")
def _(ctx: Ctx) -> None:
    from patchsieve import normalize_patch_size

    normalize_patch_size((64,))


@case("patch-size-non-integer")
def _(ctx: Ctx) -> None:
    from patchsieve import normalize_patch_size

    normalize_patch_size((16.5, 16))


@case("regiongrid-patch-not-a-sequence")
def _(ctx: Ctx) -> None:
    from patchsieve import RegionGrid

    RegionGrid((64, 64), None)


@case("patch-size-scalar")
def _(ctx: Ctx) -> None:
    from patchsieve import ShannonPatchFilter

    ShannonPatchFilter.filter_map(np.zeros((32, 32), "u2"), 16)


@case("patch-larger-than-image")
def _(ctx: Ctx) -> None:
    from patchsieve import ShannonPatchFilter

    ShannonPatchFilter.filter_map(np.zeros((32, 32), "u2"), (64, 16))


# ============================================================================= cases: filters
@case("filter-map-nan")
def _(ctx: Ctx) -> None:
    from patchsieve import MeanStdPatchFilter

    img = np.ones((32, 32), "f4")
    img[3, 5] = np.nan
    MeanStdPatchFilter.filter_map(img, (8, 8))


@case("filter-map-4d")
def _(ctx: Ctx) -> None:
    from patchsieve import MaxPatchFilter

    MaxPatchFilter.filter_map(np.zeros((2, 2, 16, 16), "f4"), (8, 8))


@case("filter-map-complex")
def _(ctx: Ctx) -> None:
    from patchsieve import MaxPatchFilter

    MaxPatchFilter.filter_map(np.zeros((16, 16), np.complex64), (8, 8))


@case("filter-out-empty")
def _(ctx: Ctx) -> None:
    from patchsieve import MaxPatchFilter

    MaxPatchFilter(10.0).filter_out(np.zeros((0, 0), "u2"))


@case("mask-non-binary")
def _(ctx: Ctx) -> None:
    from patchsieve import MaskPatchFilter

    m = np.zeros((32, 32), "u1")
    m[4, 4] = 7
    MaskPatchFilter.filter_map(m, (8, 8))


# ============================================================================= cases: compute
def _compute(ctx: Ctx, src: Any, cfg: Any = None, patch: Any = (16, 16), out: Any = None,
             **kw: Any) -> Any:
    from patchsieve import compute

    kw.setdefault("client", ctx.client())
    return compute(src, cfg if cfg is not None else shannon(), patch,
                   str(out or ctx.tmp / "out.patchsieve.zarr"), **kw)


@case("compute-patch-larger-than-volume")
def _(ctx: Ctx) -> None:
    _compute(ctx, ctx.stack(), patch=(128, 16))


@case("compute-ref-channel-out-of-range")
def _(ctx: Ctx) -> None:
    data = np.stack([stack_data()[0], stack_data(1)[0]])  # (c, y, x)
    arr = zarr.create_array(str(ctx.tmp / "cyx.zarr"), shape=data.shape, chunks=(1, 32, 32),
                            dtype=data.dtype, dimension_names=("c", "y", "x"))
    arr[...] = data
    _compute(ctx, str(ctx.tmp / "cyx.zarr"), shannon(ref_channel=2))


@case("compute-ref-channel-mismatch")
def _(ctx: Ctx) -> None:
    _compute(ctx, ctx.stack(), {"a": shannon(ref_channel=0), "b": shannon(ref_channel=1)})


@case("compute-nan-in-data")
def _(ctx: Ctx) -> None:
    data = stack_data().astype("f4")
    data[1, 40, 7] = np.nan
    _compute(ctx, ctx.stack("nan.zarr", data))


@case("compute-mask-shape")
def _(ctx: Ctx) -> None:
    _compute(ctx, ctx.stack(), _cfg("mask", mask=np.ones((2, 32, 32), "u1")))


@case("compute-mask-non-binary")
def _(ctx: Ctx) -> None:
    m = np.ones((2, 64, 64), "u1")
    m[1, 2, 3] = 5
    _compute(ctx, ctx.stack(), _cfg("mask", mask=m))


@case("compute-output-inside-source")
def _(ctx: Ctx) -> None:
    src = ctx.stack()
    _compute(ctx, src, out=os.path.join(src, "side.patchsieve.zarr"))


@case("compute-read-only-output")
def _(ctx: Ctx) -> None:
    import fsspec
    from fsspec.implementations.memory import MemoryFileSystem

    class DenyWrites(MemoryFileSystem):
        protocol = "denywrites"

        def _open(self, path: str, mode: str = "rb", **kw: Any) -> Any:
            if "r" not in mode:
                raise PermissionError("Access Denied")
            return super()._open(path, mode=mode, **kw)

        def pipe_file(self, path: str, value: Any, **kw: Any) -> None:
            raise PermissionError("Access Denied")

    fsspec.register_implementation("denywrites", DenyWrites, clobber=True)
    _compute(ctx, ctx.stack(), out="denywrites://bucket/out.patchsieve.zarr")


class DiskFull:
    """A memory:// twin whose writes fail with ENOSPC after ``limit`` successful writes."""

    @staticmethod
    def register(limit: int) -> str:
        import uuid

        import fsspec
        from fsspec.implementations.memory import MemoryFileSystem

        state = {"writes": 0}

        def count(path: str) -> None:
            state["writes"] += 1
            if state["writes"] > limit:
                raise OSError(errno.ENOSPC, "No space left on device", path)

        class Full(MemoryFileSystem):
            protocol = "diskfull"

            def pipe_file(self, path: str, value: Any, **kw: Any) -> None:
                count(path)
                return super().pipe_file(path, value, **kw)

            def _open(self, path: str, mode: str = "rb", **kw: Any) -> Any:
                if "r" not in mode:
                    count(path)
                return super()._open(path, mode=mode, **kw)

        fsspec.register_implementation("diskfull", Full, clobber=True)
        return f"diskfull://{uuid.uuid4().hex[:8]}/out.patchsieve.zarr"


@case("compute-disk-full")
def _(ctx: Ctx) -> None:
    from patchsieve import open_sidecar

    out = DiskFull.register(limit=40)  # enough for the probe, lock and metadata, not the arrays
    try:
        _compute(ctx, ctx.stack(), out=out)
    finally:
        # whatever the error class: the side-car must not look complete
        sc = open_sidecar(out, allow_incomplete=True)
        assert sc.is_complete is False


@case("compute-corrupt-chunk")
def _(ctx: Ctx) -> None:
    src = ctx.stack()
    p = Path(src) / "c" / "1" / "0" / "1"
    p.write_bytes(p.read_bytes()[: len(p.read_bytes()) // 2])  # truncated compressed chunk
    _compute(ctx, src)


@case("compute-garbage-chunk")
def _(ctx: Ctx) -> None:
    from patchsieve import open_volume

    src = ctx.stack()
    (Path(src) / "c" / "0" / "1" / "0").write_bytes(b"\x00not zstd" * 10)
    open_volume(src).values.sum()


@case("missing-chunk-fill-value")
def _(ctx: Ctx) -> None:
    data = stack_data()
    src = ctx.stack(data=data)
    os.remove(Path(src) / "c" / "1" / "1" / "1")  # chunk (s=1, y=32:64, x=32:64) is gone
    expected = data.copy()
    expected[1, 32:, 32:] = 0  # zarr's fill_value
    sc = _compute(ctx, src)
    ref = _compute(ctx, ctx.stack("filled.zarr", expected), out=ctx.tmp / "ref.patchsieve.zarr")
    for k, v in sc.stats.items():
        np.testing.assert_array_equal(v, ref.stats[k], err_msg=k)


@case("sidecar-other-params")
def _(ctx: Ctx) -> None:
    out = ctx.sidecar_copy()
    _compute(ctx, ctx.shared.source(), patch=(32, 32), out=out)


@case("sidecar-source-modified")
def _(ctx: Ctx) -> None:
    src = ctx.stack()
    out = ctx.tmp / "o.patchsieve.zarr"
    _compute(ctx, src, out=out)
    z = zarr.open_array(src, mode="r+")
    z[0, :32, :32] = 7  # first chunk: always in the fingerprint sample
    _compute(ctx, src, out=out)


@case("sidecar-older-format")
def _(ctx: Ctx) -> None:
    from patchsieve import open_sidecar

    out = ctx.sidecar_copy()
    g = zarr.open_group(str(out), mode="r+")
    meta = g.attrs["patchsieve"]
    meta["format_version"] = 0
    g.attrs["patchsieve"] = meta
    open_sidecar(out)


@case("sidecar-older-format-compute")
def _(ctx: Ctx) -> None:
    out = ctx.sidecar_copy()
    g = zarr.open_group(str(out), mode="r+")
    meta = g.attrs["patchsieve"]
    meta["format_version"] = 0
    g.attrs["patchsieve"] = meta
    _compute(ctx, ctx.shared.source(), out=out)


@case("sidecar-incomplete")
def _(ctx: Ctx) -> None:
    from patchsieve import open_sidecar

    out = ctx.sidecar_copy()
    g = zarr.open_group(str(out), mode="r+")
    meta = g.attrs["patchsieve"]
    meta["complete"] = False
    g.attrs["patchsieve"] = meta
    open_sidecar(out)


def _edit_attrs(path: Path, edit: Callable[[dict[str, Any]], None]) -> Path:
    g = zarr.open_group(str(path), mode="r+")
    meta = g.attrs["patchsieve"]
    edit(meta)
    g.attrs["patchsieve"] = meta
    return path


def _first_chunk(path: Path) -> Path:
    return next(f for f in sorted(path.rglob("*")) if f.is_file() and f.name != "zarr.json")


@case("sidecar-corrupt-chunk")
def _(ctx: Ctx) -> None:
    from patchsieve import open_sidecar

    out = ctx.sidecar_copy()
    _first_chunk(out / "stats" / "entropy").write_bytes(b"garbage")
    open_sidecar(out).stats["entropy"].sum()


@case("sidecar-corrupt-metadata")
def _(ctx: Ctx) -> None:
    from patchsieve import open_sidecar

    out = ctx.sidecar_copy()
    (out / "zarr.json").write_text("{not json")
    open_sidecar(out)


@case("sidecar-missing-array")
def _(ctx: Ctx) -> None:
    from patchsieve import open_sidecar

    out = ctx.sidecar_copy()
    shutil.rmtree(out / "decisions" / "shannon" / "weight")
    open_sidecar(out).weights("shannon")


@case("sidecar-attrs-missing-key")
def _(ctx: Ctx) -> None:
    from patchsieve import open_sidecar

    out = _edit_attrs(ctx.sidecar_copy(), lambda m: m.pop("geometry"))
    assert open_sidecar(out).grid_shape


@case("sidecar-format-version-not-int")
def _(ctx: Ctx) -> None:
    from patchsieve import open_sidecar

    open_sidecar(_edit_attrs(ctx.sidecar_copy(), lambda m: m.update(format_version="one")))


@case("sidecar-stored-config-invalid")
def _(ctx: Ctx) -> None:
    from patchsieve import open_sidecar

    def edit(m: dict[str, Any]) -> None:
        m["filters"]["shannon"]["threshold"] = "high"

    open_sidecar(_edit_attrs(ctx.sidecar_copy(), edit)).config("shannon")


@case("sidecar-nan-weights")
def _(ctx: Ctx) -> None:
    out = ctx.sidecar_copy()
    zarr.open_group(str(out), mode="r+")["decisions/shannon/weight"][...] = np.nan
    _dataset(ctx, sidecar=out)


@case("sidecar-not-a-sidecar")
def _(ctx: Ctx) -> None:
    from patchsieve import open_sidecar

    zarr.open_group(str(ctx.tmp / "other.zarr"), mode="w")
    open_sidecar(ctx.tmp / "other.zarr")


@case("sidecar-missing")
def _(ctx: Ctx) -> None:
    from patchsieve import open_sidecar

    open_sidecar(ctx.tmp / "absent.patchsieve.zarr")


@case("sidecar-output-not-a-sidecar")
def _(ctx: Ctx) -> None:
    g = zarr.open_group(str(ctx.tmp / "taken.zarr"), mode="w")
    g.create_array("precious", data=np.arange(10))
    try:
        _compute(ctx, ctx.stack(), out=ctx.tmp / "taken.zarr")
    finally:
        kept = list(zarr.open_group(str(ctx.tmp / "taken.zarr"), mode="r").array_keys())
        assert "precious" in kept, f"compute deleted the arrays of an existing group: {kept}"


@case("sidecar-lock-race")
def _(ctx: Ctx) -> None:
    import threading

    from patchsieve.errors import SidecarLockedError
    from patchsieve.sidecar import SidecarLock, open_store

    out = ctx.tmp / "race.patchsieve.zarr"
    out.mkdir()
    locks = [SidecarLock(open_store(str(out), read_only=False)) for _ in range(8)]
    start = threading.Barrier(len(locks))
    won: list[SidecarLock] = []
    refused: list[SidecarLockedError] = []

    def take(lock: SidecarLock) -> None:
        start.wait()
        try:
            lock.acquire()
            won.append(lock)
        except SidecarLockedError as err:
            refused.append(err)

    threads = [threading.Thread(target=take, args=(lk,)) for lk in locks]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for lk in won:
        lk.release()
    assert len(won) == 1, f"{len(won)} writers hold the lock at once"
    raise refused[0]


@case("sidecar-unknown-filter")
def _(ctx: Ctx) -> None:
    from patchsieve import open_sidecar

    open_sidecar(ctx.shared.sidecar()).weights("max")


@case("sidecar-locked")
def _(ctx: Ctx) -> None:
    import socket

    out = ctx.tmp / "locked.patchsieve.zarr"
    out.mkdir()
    (out / "patchsieve.lock").write_text(json.dumps({
        "host": socket.gethostname(), "pid": os.getpid(), "token": "other-writer",
        "heartbeat": 1e18, "started": "2026-01-01T00:00:00+00:00"}))
    _compute(ctx, ctx.stack(), out=out)


@case("sidecar-lock-fresh-output")
def _(ctx: Ctx) -> None:
    import importlib

    C = importlib.import_module("patchsieve.filterpass._pass")  # where compute() calls _fill
    src, out = ctx.stack(), ctx.tmp / "fresh.patchsieve.zarr"
    original = C._fill

    def fill_with_a_second_writer(*args: Any, **kwargs: Any) -> Any:
        # the first compute holds the lock and is about to fill a brand-new side-car:
        # a second compute on the same output now must be refused
        C._fill = original
        _compute(ctx, src, out=out)
        return original(*args, **kwargs)

    C._fill = fill_with_a_second_writer
    try:
        _compute(ctx, src, out=out)
    finally:
        C._fill = original


# ============================================================================= cases: cluster
@case("scheduler-unreachable")
def _(ctx: Ctx) -> None:
    from patchsieve.cluster import get_client

    with get_client("tcp://127.0.0.1:9", timeout=2):
        pass


@case("cluster-no-workers")
def _(ctx: Ctx) -> None:
    from patchsieve.cluster import get_client

    with get_client(n_workers=0):
        pass


# ============================================================================= cases: dataset
def _dataset(ctx: Ctx, **kw: Any) -> Any:
    from patchsieve import PatchDataset

    kw.setdefault("sidecar", ctx.shared.sidecar())
    return PatchDataset(**kw)


@case("dataset-incomplete-sidecar")
def _(ctx: Ctx) -> None:
    out = ctx.sidecar_copy()
    g = zarr.open_group(str(out), mode="r+")
    meta = g.attrs["patchsieve"]
    meta["complete"] = False
    g.attrs["patchsieve"] = meta
    _dataset(ctx, sidecar=out)


@case("dataset-bad-mode")
def _(ctx: Ctx) -> None:
    _dataset(ctx, mode="random")


@case("dataset-channels-out-of-range")
def _(ctx: Ctx) -> None:
    _dataset(ctx, channels=[3])


@case("dataset-patch-size-mismatch")
def _(ctx: Ctx) -> None:
    _dataset(ctx, patch_size=(32, 32))


@case("dataset-no-source")
def _(ctx: Ctx) -> None:
    from patchsieve import PatchDataset

    PatchDataset()


@case("dataset-bad-batch-size")
def _(ctx: Ctx) -> None:
    _dataset(ctx, batch_size=0)


@case("dataset-loader-bad-batch-size")
def _(ctx: Ctx) -> None:
    _dataset(ctx).loader(batch_size=0)


@case("dataset-loader-batch-size-conflict")
def _(ctx: Ctx) -> None:
    _dataset(ctx, batch_size=8).loader(batch_size=16)


@case("dataset-shuffle-window-not-int")
def _(ctx: Ctx) -> None:
    _dataset(ctx, shuffle_window="a")


@case("dataset-state-dict-foreign")
def _(ctx: Ctx) -> None:
    _dataset(ctx).load_state_dict({"epoch": 2})


@case("dataset-transform-bad-return")
def _(ctx: Ctx) -> None:
    next(iter(_dataset(ctx, transform=lambda x, y: None)))


@case("sampling-background-shape")
def _(ctx: Ctx) -> None:
    from patchsieve.sampling import StratifiedPatching

    StratifiedPatching((64, 64), (16, 16), np.ones((1, 4, 4)), background=np.zeros((2, 2), bool))


@case("dataset-sidecar-weights-other")
def _(ctx: Ctx) -> None:
    out = ctx.sidecar_copy()
    zarr.open_group(str(out), mode="r+")["decisions/shannon/weight"][...] = 0.5
    _dataset(ctx, sidecar=out)


@case("dataset-sidecar-totals-mismatch")
def _(ctx: Ctx) -> None:
    out = ctx.sidecar_copy()
    g = zarr.open_group(str(out), mode="r+")
    g["decisions/shannon/filter_out"][...] = ~np.asarray(g["decisions/shannon/filter_out"][...])
    _dataset(ctx, sidecar=out)


@case("sampling-decisions-changed")
def _(ctx: Ctx) -> None:
    from patchsieve.sampling import StreamingPatching

    bg = np.zeros((1, 4, 4), bool)
    sp = StreamingPatching((64, 64), (16, 16), lambda s, lo, hi: bg[(s, *map(slice, lo, hi))])
    bg[0, 0] = True
    sp.epoch_plan(0)


@case("sampling-background-weight")
def _(ctx: Ctx) -> None:
    from patchsieve.sampling import StreamingPatching

    StreamingPatching.from_arrays((64, 64), (16, 16), np.zeros((4, 4), bool), background_weight=1.5)


@case("sidecar-decision-what")
def _(ctx: Ctx) -> None:
    from patchsieve import open_sidecar

    open_sidecar(ctx.shared.sidecar()).decision_block("shannon", 0, (0, 0), (1, 1), what="stats")


class _KillWorker:
    """A transform that SIGKILLs the DataLoader worker process it runs in."""

    def __call__(self, x: Any, y: Any) -> Any:
        from torch.utils.data import get_worker_info

        if get_worker_info() is not None:
            os.kill(os.getpid(), signal.SIGKILL)
        return x, y


@case("dataloader-worker-crash")
def _(ctx: Ctx) -> None:
    ds = _dataset(ctx, transform=_KillWorker())
    loader = ds.loader(batch_size=4, num_workers=1, multiprocessing_context="fork", timeout=60)
    for _ in loader:
        pass


# ============================================================================= cases: CLI
def _cli(*args: str) -> tuple[int, str]:
    from typer.testing import CliRunner

    from patchsieve.cli import app

    res = CliRunner().invoke(app, list(args))
    return res.exit_code, res.output


@case("cli-bad-patch")
def _(ctx: Ctx) -> tuple[int, str]:
    return _cli("compute", ctx.stack(), "--patch", "a,b", "-t", "3")


@case("cli-unknown-filter")
def _(ctx: Ctx) -> tuple[int, str]:
    return _cli("compute", ctx.stack(), "--filter", "median", "-t", "3", "--patch", "16,16")


@case("cli-missing-threshold")
def _(ctx: Ctx) -> tuple[int, str]:
    return _cli("compute", ctx.stack(), "--filter", "max", "--patch", "16,16")


@case("cli-bad-storage-options")
def _(ctx: Ctx) -> tuple[int, str]:
    return _cli("compute", ctx.stack(), "-t", "3", "--patch", "16,16", "--storage-options",
                "{not json")


@case("cli-missing-source")
def _(ctx: Ctx) -> tuple[int, str]:
    return _cli("compute", str(ctx.tmp / "nope.zarr"), "-t", "3", "--patch", "16,16")


# ============================================================================= cases: pipelines
def _spec(ctx: Ctx, text: str, **kw: Any) -> Any:
    from patchsieve import run_pipeline

    path = ctx.tmp / "spec.yaml"
    path.write_text(text)
    return run_pipeline(path, **kw)


_GOOD = "source: {path}\nfilters: [{{name: shannon, threshold: 3}}]\npatch_size: [16, 16]\n"


@case("spec-unknown-key")
def _(ctx: Ctx) -> None:
    _spec(ctx, _GOOD.format(path=ctx.stack()) + "patchsize: [8, 8]\n", dry_run=True)


@case("spec-literal-secret")
def _(ctx: Ctx) -> None:
    _spec(ctx, f"source: {{path: s3://b/img.zarr, storage_options: {{secret: {SECRET}}}}}\n"
               "filters: [{name: shannon, threshold: 3}]\npatch_size: [16, 16]\n", dry_run=True)


@case("spec-unset-env")
def _(ctx: Ctx) -> None:
    os.environ.pop("PATCHSIEVE_TEST_UNSET_VAR", None)
    _spec(ctx, "source: ${PATCHSIEVE_TEST_UNSET_VAR}/img.zarr\n"
               "filters: [{name: shannon, threshold: 3}]\npatch_size: [16, 16]\n",
          client=ctx.client())


@case("spec-invalid-yaml")
def _(ctx: Ctx) -> None:
    _spec(ctx, "source: [unclosed\n", dry_run=True)


@case("spec-bad-override")
def _(ctx: Ctx) -> None:
    _spec(ctx, _GOOD.format(path=ctx.stack()), overrides=["filters.7.threshold=3"], dry_run=True)


@case("spec-bad-threshold")
def _(ctx: Ctx) -> None:
    _spec(ctx, _GOOD.format(path=ctx.stack()), overrides=["filters.0.threshold=.nan"],
          dry_run=True)


@case("careamics-not-installed")
def _(ctx: Ctx) -> None:
    import importlib.util

    import patchsieve.careamics

    if importlib.util.find_spec("careamics") is not None:  # pragma: no cover - its own venv
        pytest.skip("CAREamics is installed here")
    patchsieve.careamics.train(object(), str(ctx.tmp / "x.zarr"))


# ============================================================================= the tests
def _gap_marks(rid: str) -> list[Any]:
    if rid in GAPS:
        return [pytest.mark.xfail(strict=True, reason=GAPS[rid])]
    return []


def test_document_exists_and_is_large_enough() -> None:
    assert ROWS, f"no catalogue table found in {DOC}"
    assert len(ROWS) >= 30, len(ROWS)
    ids = [r["id"] for r in ROWS]
    assert len(ids) == len(set(ids)), "duplicate row ids"


def test_every_row_has_a_case_and_every_case_a_row() -> None:
    rows = {r["id"] for r in ROWS}
    assert rows - set(CASES) == set(), f"rows without a test: {sorted(rows - set(CASES))}"
    assert set(CASES) - rows == set(), f"tests without a row: {sorted(set(CASES) - rows)}"
    assert set(GAPS) <= rows, f"gaps that are not rows: {sorted(set(GAPS) - rows)}"


def test_rows_are_documented_completely() -> None:
    for r in ROWS:
        assert r["input"] and r["fix"], r["id"]
        if r["exception"] != "accepted":
            assert r["message"], f"{r['id']}: the message cell must be `quoted`"
        exc = r["exception"]
        if exc not in ("accepted", "exit 2") and hasattr(perrors, exc):
            assert issubclass(getattr(perrors, exc), perrors.PatchsieveError), exc


@pytest.mark.parametrize(
    "row", [pytest.param(r, id=r["id"], marks=_gap_marks(r["id"])) for r in ROWS]
)
def test_catalogue_row(row: dict[str, str], ctx: Ctx) -> None:
    fn = CASES[row["id"]]
    exc = row["exception"]
    if exc == "accepted":
        fn(ctx)
        return
    if exc == "exit 2":
        code, output = fn(ctx)
        assert code == 2, output
        assert row["message"] in " ".join(output.split()), output
        assert "Traceback" not in output
        return
    with pytest.raises(Exception) as info:  # noqa: B017 - the class is checked below
        fn(ctx)
    err = info.value
    assert type(err).__name__ == exc, (
        f"{row['id']}: expected {exc}, got {type(err).__module__}.{type(err).__name__}: {err}")
    assert row["message"] in str(err), f"{row['id']}: message {str(err)!r}"
    if hasattr(perrors, exc):
        assert isinstance(err, perrors.PatchsieveError)


SECRET_ROWS = ["url-unreachable", "credentials-refused", "spec-literal-secret"]


@pytest.mark.parametrize("rid", SECRET_ROWS)
def test_errors_never_contain_secrets(rid: str, ctx: Ctx) -> None:
    """Whatever the class (some rows are known gaps), no credential reaches the error chain."""
    with pytest.raises(Exception) as info:  # noqa: B017 - any error; its text is checked
        CASES[rid](ctx)
    chain = "".join(traceback.format_exception(info.value))
    assert SECRET not in chain and KEY_ID not in chain
