"""Open a ~20 GB OME-Zarr: time ``open_volume`` / ``open_pyramid`` and count chunk reads.

The volumes are created *metadata-only* (zarr arrays whose chunks are never written: opening
must not read chunks anyway), plus a variant with a few real chunks, for NGFF 0.5 (zarr v3) and
0.4 (zarr v2). Each has 3 pyramid levels, level 0 is ``(2, 128, 8192, 5120)`` uint16 CZYX
(21.5 GB, 5,120 chunks of 4 MiB).

Measured (median of ``--repeat``, at least 5), in the same run:

* baseline: ``zarr.open_group`` + ``da.from_zarr`` of level 0 (the least any opener must do);
* peer: ``ome_zarr.reader.Reader(parse_url(path))`` (the reference OME-Zarr reader);
* patchsieve: ``open_volume`` (level 0, level 2, one channel) and ``open_pyramid``.

Chunk reads are counted by wrapping ``zarr.storage.LocalStore.get``/``get_partial_values``
(what every opener here reads through). Target: ``open_volume`` < 1 s and 0 chunk reads.

Run: ``python benchmarks/bench_open.py [--quick] [--repeat 7]``; writes
``benchmarks/results/bench_open.json``.
"""

from __future__ import annotations

import shutil
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _harness as H  # noqa: E402

FULL_SHAPE = (2, 128, 8192, 5120)
QUICK_SHAPE = (2, 32, 2048, 2048)
CHUNKS = (1, 32, 256, 256)
LEVELS = 3
METADATA_KEYS = ("zarr.json", ".zarray", ".zattrs", ".zgroup", ".zmetadata")


# ----------------------------------------------------------------------------- data
def make_volume(path: Path, shape: tuple[int, ...], version: str, real_chunks: int) -> int:
    """Create a metadata-only OME-Zarr (``real_chunks`` level-0 chunks written); return bytes."""
    import zarr
    from ome_zarr.format import FormatV04, FormatV05
    from ome_zarr.writer import write_multiscales_metadata

    fmt = FormatV05() if version == "0.5" else FormatV04()
    if path.exists():
        shutil.rmtree(path)
    group = zarr.open_group(str(path), mode="w", zarr_format=fmt.zarr_format)
    datasets = []
    for level in range(LEVELS):
        f = 2**level
        lshape = (shape[0], *(max(1, n // f) for n in shape[1:]))
        group.create_array(
            f"s{level}",
            shape=lshape,
            chunks=CHUNKS,
            dtype="uint16",
            fill_value=0,
            **({"dimension_names": ("c", "z", "y", "x")} if fmt.zarr_format == 3 else {}),
        )
        datasets.append(
            {
                "path": f"s{level}",
                "coordinateTransformations": [
                    {"type": "scale", "scale": [1.0, 0.5 * f, 0.2 * f, 0.2 * f]},
                    {"type": "translation", "translation": [0.0, 0.0, 0.0, 0.0]},
                ],
            }
        )
    write_multiscales_metadata(
        group,
        datasets,
        fmt=fmt,
        axes=[{"name": "c", "type": "channel"}] + [{"name": d, "type": "space"} for d in "zyx"],
    )
    level0 = zarr.open_array(str(path / "s0"), mode="r+")
    rng = np.random.default_rng(0)
    for i in range(real_chunks):  # a few real chunks along the diagonal
        sl = (i % shape[0], *(slice(i * c, (i + 1) * c) for c in CHUNKS[1:]))
        level0[sl] = rng.integers(0, 4000, size=CHUNKS[1:], dtype=np.uint16)
    return int(np.prod(shape)) * 2


# ----------------------------------------------------------------------------- counting
class ReadCounter:
    """Counts keys read through any ``zarr.storage.LocalStore`` while installed."""

    def __init__(self) -> None:
        self.keys: list[str] = []

    def __enter__(self) -> ReadCounter:
        import zarr

        local = zarr.storage.LocalStore
        self._orig = (local.get, local.get_partial_values)
        counter, (get, partial) = self, self._orig

        async def counted_get(store: Any, key: str, *args: Any, **kwargs: Any) -> Any:
            counter.keys.append(key)
            return await get(store, key, *args, **kwargs)

        async def counted_partial(store: Any, prototype: Any, key_ranges: Any) -> Any:
            key_ranges = list(key_ranges)
            counter.keys.extend(k for k, _ in key_ranges)
            return await partial(store, prototype, key_ranges)

        local.get, local.get_partial_values = counted_get, counted_partial
        return self

    def __exit__(self, *exc: object) -> None:
        import zarr

        zarr.storage.LocalStore.get, zarr.storage.LocalStore.get_partial_values = self._orig

    def chunk_reads(self) -> int:
        return sum(not k.endswith(METADATA_KEYS) for k in self.keys)

    def metadata_reads(self) -> int:
        return sum(k.endswith(METADATA_KEYS) for k in self.keys)


# ----------------------------------------------------------------------------- openers
def openers(path: Path) -> dict[str, Callable[[], Any]]:
    import dask.array as da
    import zarr
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Reader

    from patchsieve.volume import open_pyramid, open_volume

    def baseline() -> Any:
        group = zarr.open_group(str(path), mode="r")
        return da.from_zarr(group["s0"])

    def ome_zarr_reader() -> Any:
        return list(Reader(parse_url(str(path)))())[0].data

    return {
        "zarr.open_group + da.from_zarr (baseline)": baseline,
        "ome_zarr Reader (peer)": ome_zarr_reader,
        "open_volume(level=0)": lambda: open_volume(path),
        "open_volume(level=2)": lambda: open_volume(path, level=2),
        "open_volume(channel=1)": lambda: open_volume(path, channel=1),
        "open_pyramid": lambda: open_pyramid(path),
    }


def measure(path: Path, repeat: int) -> list[dict[str, Any]]:
    rows = []
    for name, fn in openers(path).items():
        with ReadCounter() as counter:
            fn()  # one counted, untimed open (also warms imports)
        timing = H.median_time(fn, repeat=repeat)
        rows.append(
            {
                "opener": name,
                "median_s": timing.median_s,
                "min_s": min(timing.runs_s),
                "runs_s": timing.runs_s,
                "chunk_reads": counter.chunk_reads(),
                "metadata_reads": counter.metadata_reads(),
            }
        )
    return rows


def check_values(path: Path) -> bool:
    """The written chunks read back through open_volume (correctness, outside the timing)."""
    import zarr

    from patchsieve.volume import open_volume

    vol = open_volume(path)
    raw = zarr.open_array(str(path / "s0"), mode="r")
    sl = (0, slice(0, CHUNKS[1]), slice(0, CHUNKS[2]), slice(0, CHUNKS[3]))
    return bool(np.array_equal(vol.data[sl].compute(), raw[sl]))


def main() -> None:
    import logging

    logging.getLogger("ome_zarr").setLevel(logging.ERROR)  # its format-version notices
    ap = H.bench_argparser(__doc__.splitlines()[0])
    ap.set_defaults(repeat=7)
    args = ap.parse_args()
    repeat = max(5, args.repeat)
    shape = QUICK_SHAPE if args.quick else FULL_SHAPE
    cache = Path(args.cache or H.REPO_ROOT / ".bench-cache") / "bench_open"
    cache.mkdir(parents=True, exist_ok=True)
    variants = [("0.5", 0), ("0.5", 8), ("0.4", 0)]
    table, results, summary = [], [], []
    for version, real in variants:
        label = f"ngff {version}, {'metadata-only' if not real else f'{real} real chunks'}"
        path = cache / f"vol_v{version.replace('.', '')}_{real}.ome.zarr"
        nbytes = make_volume(path, shape, version, real)
        rows = measure(path, repeat)
        ok = check_values(path) if real else None
        base = rows[0]["median_s"]
        for row in rows:
            row["ratio_to_baseline"] = H.ratio(row["median_s"], base)
            table.append({"volume": label, **{k: v for k, v in row.items() if k != "runs_s"}})
        results.append(
            {
                "variant": label,
                "path": path.name,
                "shape": shape,
                "chunks": CHUNKS,
                "levels": LEVELS,
                "nbytes": nbytes,
                "values_ok": ok,
                "rows": rows,
            }
        )
        ov = next(r for r in rows if r["opener"] == "open_volume(level=0)")
        summary.append(
            H.summary_row(
                f"open_volume {nbytes / 1e9:.1f} GB {label}",
                ov["median_s"],
                "s",
                baseline="zarr.open_group + da.from_zarr",
                baseline_value=base,
                better="lower",
                note=f"chunk reads {ov['chunk_reads']} (target 0); absolute target < 1 s: "
                f"{'met' if ov['median_s'] < 1.0 and ov['chunk_reads'] == 0 else 'NOT met'}",
            )
        )
    H.print_table(
        f"open a {np.prod(shape) * 2 / 1e9:.1f} GB OME-Zarr (median of {repeat})",
        table,
        [
            "volume",
            "opener",
            "median_s",
            "min_s",
            "ratio_to_baseline",
            "chunk_reads",
            "metadata_reads",
        ],
    )
    out = H.write_results(
        "bench_open",
        {
            "config": {
                "shape": shape,
                "chunks": CHUNKS,
                "levels": LEVELS,
                "repeat": repeat,
                "quick": args.quick,
            },
            "results": results,
            "summary": summary,
        },
        args.results,
    )
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
