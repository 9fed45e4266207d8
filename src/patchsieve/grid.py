"""Geometry: dim names, CAREamics' region grid, patch sizes and the geometry of a filtered volume.

CAREamics (``careamics/dataset/patching/stratified_patching.py``) scores *regions*: windows
of ``2 * patch_size`` placed on a grid of stride ``patch_size``. Per spatial axis the grid
has ``(size + 1) // patch`` regions (:func:`grid_extent`, the only copy of this rule);
region ``g`` starts at ``g * patch`` and reaches ``2 * patch`` pixels, zero-padded where it
extends beyond the image (quirk B7 of ``careamics_reference/README.md``). Every pixel of the
image lies in at most ``2**ndim`` regions. A patch drawn from region ``g`` has its origin in
``[g*patch, g*patch + patch)`` clipped so that the patch stays inside the image. *Cells* are
the patch-sized tiles at stride ``patch`` (``ceil(size / patch)`` per axis,
:func:`cell_extent`); a region is ``2**ndim`` neighbouring cells.

This module owns the dim names (:data:`DIM_ORDER`, :data:`SAMPLE_DIMS`, :data:`SPATIAL_DIMS`),
the only conversion of user ``patch_size`` values (:func:`normalize_patch_size`), the grid of
one sample (:class:`RegionGrid`) and the geometry of a whole filtered volume
(:class:`VolumeGeometry`, what a side-car stores under ``geometry``).
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import math
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, Literal

import numpy as np
from numpy.typing import NDArray

from patchsieve.errors import ConfigError

logger = logging.getLogger(__name__)

__all__ = [
    "BORDERS",
    "DIM_ORDER",
    "SAMPLE_DIMS",
    "SPATIAL_DIMS",
    "RegionGrid",
    "VolumeGeometry",
    "cell_extent",
    "check_border",
    "grid_extent",
    "normalize_patch_size",
    "region_chunks",
    "validate_training_patch_size",
]

DIM_ORDER: tuple[str, ...] = ("s", "t", "c", "z", "y", "x")
"""Canonical order of the dims of every volume (absent dims are dropped)."""

SAMPLE_DIMS: tuple[str, ...] = ("s", "t")
"""Dims whose entries are independent samples (CAREamics' ``S`` and ``T``)."""

SPATIAL_DIMS: tuple[str, ...] = ("z", "y", "x")
"""Spatial dims, in order; 2D data has ``("y", "x")``."""

Border = Literal["careamics", "valid"]
BORDERS: tuple[str, ...] = ("careamics", "valid")
"""How edge regions are scored: zero-padded as CAREamics (``"careamics"``) or in-image only."""


def check_border(border: str) -> Border:
    """Validate the ``border`` option (``"careamics"`` or ``"valid"``).

    Examples
    --------
    >>> check_border("valid")
    'valid'
    """
    if border not in BORDERS:
        raise ConfigError(f"border must be one of {BORDERS}; got {border!r}.")
    return border  # type: ignore[return-value]


def grid_extent(size: int, patch: int) -> int:
    """Number of regions along one axis: CAREamics' ``(size + 1) // patch``.

    Examples
    --------
    >>> grid_extent(300, 64), grid_extent(127, 64)
    (4, 2)
    """
    return (int(size) + 1) // int(patch)


def cell_extent(size: int, patch: int) -> int:
    """Number of patch-sized cells along one axis: ``ceil(size / patch)``.

    Examples
    --------
    >>> cell_extent(300, 64)
    5
    """
    return -(-int(size) // int(patch))


def _spatial_dims_for(ndim: int) -> tuple[str, ...]:
    if ndim not in (2, 3):
        raise ConfigError(
            f"patch_size must have 2 (YX) or 3 (ZYX) entries; got {ndim}. "
            "Fix: pass e.g. (64, 64) or (16, 64, 64)."
        )
    return SPATIAL_DIMS[-ndim:]


def normalize_patch_size(
    patch_size: Sequence[int] | Mapping[str, int],
    spatial_dims: Sequence[str] | None = None,
) -> dict[str, int]:
    """Convert a patch size to a mapping ``{dim: size}`` in spatial order.

    Parameters
    ----------
    patch_size : sequence of int or mapping of str to int
        Either a sequence in spatial order (CAREamics style, ``(64, 64)`` or
        ``(16, 64, 64)``) or a mapping by dim name (``{"y": 64, "x": 64}``).
    spatial_dims : sequence of str, optional
        The spatial dims of the data, e.g. ``("y", "x")`` or ``("z", "y", "x")``. When
        omitted, they are inferred from the length of ``patch_size`` (2 -> YX, 3 -> ZYX).

    Returns
    -------
    dict of str to int
        One positive size per spatial dim, in ``spatial_dims`` order.

    Raises
    ------
    ConfigError
        Wrong number of entries, unknown or missing dims, zero, negative or non-integer
        sizes.

    Examples
    --------
    >>> normalize_patch_size((64, 32))
    {'y': 64, 'x': 32}
    >>> normalize_patch_size({"x": 8, "y": 16}, ("y", "x"))
    {'y': 16, 'x': 8}
    """
    if isinstance(patch_size, (str, bytes)) or not isinstance(patch_size, (Sequence, Mapping)):
        if isinstance(patch_size, np.ndarray):
            patch_size = [int(v) for v in patch_size.ravel()]
        else:
            raise ConfigError(
                f"patch_size must be a sequence of ints in spatial order or a mapping "
                f"{{dim: size}}; got {patch_size!r}. Fix: pass e.g. (64, 64)."
            )
    if isinstance(patch_size, Mapping):
        dims = tuple(spatial_dims) if spatial_dims is not None else tuple(
            d for d in SPATIAL_DIMS if d in patch_size
        )
        unknown = sorted(set(patch_size) - set(dims))
        missing = [d for d in dims if d not in patch_size]
        if unknown or missing:
            raise ConfigError(
                f"patch_size must name every spatial dim {dims} and nothing else; got "
                f"{dict(patch_size)!r} (missing {missing}, unknown {unknown})."
            )
        values = [patch_size[d] for d in dims]
    else:
        values = list(patch_size)
        dims = (
            tuple(spatial_dims) if spatial_dims is not None else _spatial_dims_for(len(values))
        )
        if len(values) != len(dims):
            raise ConfigError(
                f"patch_size must have one entry per spatial dim {dims}; got "
                f"{tuple(values)!r} ({len(values)} entries). Fix: pass {len(dims)} sizes."
            )
    _spatial_dims_for(len(dims))
    out: dict[str, int] = {}
    for d, v in zip(dims, values):
        if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, np.integer)):
            if isinstance(v, (float, np.floating)) and float(v).is_integer():
                v = int(v)
            else:
                raise ConfigError(f"patch_size[{d!r}] must be a positive integer; got {v!r}.")
        if int(v) <= 0:
            raise ConfigError(
                f"patch_size[{d!r}] must be a positive integer; got {int(v)}. "
                "Fix: use e.g. 64 (2D) or 16 along z (3D)."
            )
        out[d] = int(v)
    return out


def validate_training_patch_size(patch_size: Sequence[int] | Mapping[str, int]) -> dict[str, int]:
    """Apply CAREamics' training-config rule: each entry >= 8 and a power of 2.

    CAREamics enforces this in ``careamics/config/validators/patch_validators.py`` when a
    training configuration is built; its static ``filter_map`` functions accept any
    positive size, and so do patchsieve's.

    Parameters
    ----------
    patch_size : sequence of int or mapping of str to int
        As for :func:`normalize_patch_size`.

    Returns
    -------
    dict of str to int
        The normalised patch size.

    Raises
    ------
    ConfigError
        An entry is smaller than 8 or not a power of 2 (or the size is invalid at all).

    Examples
    --------
    >>> validate_training_patch_size((16, 64, 64))
    {'z': 16, 'y': 64, 'x': 64}
    """
    ps = normalize_patch_size(patch_size)
    for d, v in ps.items():
        if v < 8 or (v & (v - 1)) != 0:
            raise ConfigError(
                f"patch_size[{d!r}] must be >= 8 and a power of 2 for training (CAREamics "
                f"rule); got {v}. Fix: use e.g. {max(8, 1 << max(v - 1, 1).bit_length())}."
            )
    return ps


class RegionGrid:
    """The CAREamics grid of sampling regions over one sample's spatial extent.

    Parameters
    ----------
    spatial_shape : sequence of int
        Spatial size of one sample, ``(Y, X)`` or ``(Z, Y, X)``.
    patch_size : sequence of int or mapping of str to int
        Patch size in spatial order or by dim name.

    Attributes
    ----------
    spatial_shape : tuple of int
    patch_size : tuple of int
    dims : tuple of str
        ``("y", "x")`` or ``("z", "y", "x")``.
    grid_shape : tuple of int
        ``(size + 1) // patch`` per axis.
    region_shape : tuple of int
        ``2 * patch`` per axis.

    Raises
    ------
    ConfigError
        Bad patch size, or a patch larger than the image along some axis (CAREamics
        would silently produce an empty grid, quirk B9).

    Examples
    --------
    >>> g = RegionGrid((300, 200), (64, 64))
    >>> g.grid_shape
    (4, 3)
    >>> g.region_slices((3, 2))
    (slice(192, 300, None), slice(128, 200, None))
    """

    def __init__(
        self, spatial_shape: Sequence[int], patch_size: Sequence[int] | Mapping[str, int]
    ) -> None:
        shape = tuple(int(s) for s in spatial_shape)
        if isinstance(patch_size, (str, bytes)) or not isinstance(
            patch_size, (Sequence, Mapping, np.ndarray)
        ):
            raise ConfigError(
                f"patch_size must be a sequence of ints in spatial order or a mapping "
                f"{{dim: size}}; got {patch_size!r}. Fix: pass e.g. (16, 16) or "
                '{"y": 16, "x": 16}.'
            )
        if isinstance(patch_size, Mapping):
            ps_map = normalize_patch_size(patch_size, SPATIAL_DIMS[-len(shape):])
        else:
            ps_seq = list(patch_size)
            if len(ps_seq) != len(shape):
                raise ConfigError(
                    f"patch_size must have one entry per spatial dim of the image "
                    f"(shape {shape}); got {tuple(ps_seq)!r}. Fix: pass {len(shape)} sizes."
                )
            ps_map = normalize_patch_size(ps_seq)
        self.dims: tuple[str, ...] = tuple(ps_map)
        self.patch_size: tuple[int, ...] = tuple(ps_map.values())
        self.spatial_shape: tuple[int, ...] = shape
        for d, s, p in zip(self.dims, shape, self.patch_size):
            if s <= 0:
                raise ConfigError(f"image size along {d!r} must be positive; got {s}.")
            if p > s:
                raise ConfigError(
                    f"patch_size[{d!r}]={p} is larger than the image ({s} pixels along "
                    f"{d!r}); CAREamics would find no region (B9). Fix: use a patch of at "
                    f"most {s} along {d!r}."
                )
        self.grid_shape: tuple[int, ...] = tuple(
            grid_extent(s, p) for s, p in zip(shape, self.patch_size)
        )
        self.region_shape: tuple[int, ...] = tuple(2 * p for p in self.patch_size)

    @property
    def ndim(self) -> int:
        """Number of spatial dims (2 or 3)."""
        return len(self.spatial_shape)

    @property
    def n_regions(self) -> int:
        """Number of regions of one sample."""
        return int(np.prod(self.grid_shape))

    def __repr__(self) -> str:
        return (
            f"RegionGrid(spatial_shape={self.spatial_shape}, patch_size={self.patch_size}, "
            f"grid_shape={self.grid_shape})"
        )

    def coords(self) -> Iterator[tuple[int, ...]]:
        """Iterate over grid coordinates in C order (CAREamics' order)."""
        return itertools.product(*(range(n) for n in self.grid_shape))

    def origins(self) -> tuple[NDArray[np.int64], ...]:
        """Region origins in pixels per axis: ``g * patch`` for ``g`` in the grid."""
        return tuple(
            np.arange(n, dtype=np.int64) * p for n, p in zip(self.grid_shape, self.patch_size)
        )

    def region_origin(self, coords: Sequence[int]) -> tuple[int, ...]:
        """Pixel origin of the region at grid coordinate ``coords``."""
        self._check_coords(coords)
        return tuple(int(c) * p for c, p in zip(coords, self.patch_size))

    def region_slices(self, coords: Sequence[int]) -> tuple[slice, ...]:
        """In-image pixel slices of a region (the zero-padded part is cut off)."""
        o = self.region_origin(coords)
        return tuple(
            slice(a, min(a + 2 * p, s)) for a, p, s in zip(o, self.patch_size, self.spatial_shape)
        )

    def region_padding(self, coords: Sequence[int]) -> tuple[int, ...]:
        """Number of zero-padded pixels past the image end, per axis, of a region."""
        sl = self.region_slices(coords)
        return tuple(2 * p - (s.stop - s.start) for s, p in zip(sl, self.patch_size))

    def origin_range(self, coords: Sequence[int]) -> tuple[tuple[int, int], ...]:
        """Selectable patch origins ``[start, stop)`` per axis for a region.

        A patch sampled from region ``g`` starts in ``[g*p, g*p + p)`` clipped so that the
        whole patch lies in the image (CAREamics ``_SamplingRegion.clip``). A range may be
        empty (``start == stop``) for the last region of an axis.
        """
        o = self.region_origin(coords)
        return tuple(
            (a, max(a, min(a + p, s - p + 1)))
            for a, p, s in zip(o, self.patch_size, self.spatial_shape)
        )

    def origin_ranges(self) -> tuple[tuple[NDArray[np.int64], NDArray[np.int64]], ...]:
        """Vectorised :meth:`origin_range`: per axis ``(start, stop)`` arrays over the grid."""
        out = []
        for n, p, s in zip(self.grid_shape, self.patch_size, self.spatial_shape):
            start = np.arange(n, dtype=np.int64) * p
            stop = np.maximum(start, np.minimum(start + p, s - p + 1))
            out.append((start, stop))
        return tuple(out)

    def valid_counts(self) -> NDArray[np.int64]:
        """Number of in-image pixels of each region, shape ``grid_shape``."""
        per_axis = [
            np.minimum(np.arange(n) * p + 2 * p, s) - np.arange(n) * p
            for n, p, s in zip(self.grid_shape, self.patch_size, self.spatial_shape)
        ]
        out = per_axis[0].astype(np.int64)
        for a in per_axis[1:]:
            out = np.multiply.outer(out, a.astype(np.int64))
        return out

    def _check_coords(self, coords: Sequence[int]) -> None:
        if len(coords) != self.ndim or any(
            not 0 <= int(c) < n for c, n in zip(coords, self.grid_shape)
        ):
            raise ConfigError(
                f"grid coords must be {self.ndim} ints within grid_shape {self.grid_shape}; "
                f"got {tuple(coords)!r}."
            )



def chunk_pieces(region: Sequence[slice], chunks: Sequence[int]
                 ) -> Iterator[tuple[tuple[int, ...], tuple[slice, ...], tuple[slice, ...]]]:
    """The chunks of a regular chunk grid that a box ``region`` (slices with start and stop)
    touches: ``(chunk index, slices inside the chunk, slices inside the region)``, C order.

    Examples
    --------
    >>> [(i, a, b) for i, a, b in chunk_pieces((slice(3, 6),), (4,))]
    [((0,), (slice(3, 4, None),), (slice(0, 1, None),)), ((1,), (slice(0, 2, None),), (slice(1, 3, None),))]
    """
    ranges = [range(int(s.start) // c, max(int(s.start) // c, (int(s.stop) - 1) // c) + 1)
              for s, c in zip(region, chunks)]
    for cidx in itertools.product(*ranges):
        in_chunk, in_region = [], []
        for s, i, c in zip(region, cidx, chunks):
            lo, hi = max(int(s.start), i * c), min(int(s.stop), (i + 1) * c)
            in_chunk.append(slice(lo - i * c, hi - i * c))
            in_region.append(slice(lo - int(s.start), hi - int(s.start)))
        yield cidx, tuple(in_chunk), tuple(in_region)

def region_chunks(pixel_chunks: Sequence[int], patch: int, n_regions: int) -> tuple[int, ...]:
    """Chunk the regions of one axis so that each block starts in one storage chunk.

    Region ``g`` belongs to the storage chunk holding its origin ``g * patch``; chunks that
    hold no origin (patch larger than a chunk) are merged into their neighbour.

    Parameters
    ----------
    pixel_chunks : sequence of int
        Storage chunk sizes along the axis (dask ``chunks`` entry).
    patch : int
        Patch size along the axis.
    n_regions : int
        Number of regions along the axis (:func:`grid_extent`).

    Returns
    -------
    tuple of int
        Region counts per block; they sum to ``n_regions``.

    Examples
    --------
    >>> region_chunks((100, 100, 56), 64, 4)
    (2, 2)
    """
    bounds = [0]
    pos = 0
    for c in pixel_chunks[:-1]:
        pos += int(c)
        r = min(-(-pos // patch), n_regions)
        if r > bounds[-1]:
            bounds.append(r)
    if n_regions > bounds[-1]:
        bounds.append(n_regions)
    return tuple(b - a for a, b in zip(bounds[:-1], bounds[1:]))


@dataclasses.dataclass(frozen=True)
class VolumeGeometry:
    """Where the regions of a whole volume lie: samples, spatial extent, patch size, channels.

    What a filter pass and a side-car share (the side-car stores :meth:`to_attrs` under
    ``geometry``); also what maps decisions between pyramid levels (``scale``,
    ``translation`` and ``level`` place the grid in physical space).

    Parameters
    ----------
    dims : tuple of str
        All dims of the volume in :data:`DIM_ORDER`.
    sample_dims, sample_shape : tuple
        The ``s``/``t`` dims present and their sizes (``()`` when none).
    spatial_dims, spatial_shape : tuple
        ``("y", "x")`` or ``("z", "y", "x")`` and their sizes.
    patch_size : tuple of int
        Patch size in ``spatial_dims`` order.
    n_channels, ref_channel : int
        Size of the ``c`` dim (1 without one) and the channel that is scored.
    border : {"careamics", "valid"}
        How edge regions are scored.
    scale, translation : tuple of float, optional
        Physical pixel size and origin per spatial dim (NGFF); ``None`` means 1 and 0.
    level : int
        Pyramid level of the volume.

    Examples
    --------
    >>> g = VolumeGeometry(("s", "y", "x"), ("s",), (2,), ("y", "x"), (300, 200), (64, 64))
    >>> g.grid_shape, g.cell_shape, g.region_shape
    ((4, 3), (5, 4), (2, 4, 3))
    """

    dims: tuple[str, ...]
    sample_dims: tuple[str, ...]
    sample_shape: tuple[int, ...]
    spatial_dims: tuple[str, ...]
    spatial_shape: tuple[int, ...]
    patch_size: tuple[int, ...]
    n_channels: int = 1
    ref_channel: int = 0
    border: Border = "careamics"
    scale: tuple[float, ...] | None = None
    translation: tuple[float, ...] | None = None
    level: int = 0

    def __post_init__(self) -> None:
        for name in ("dims", "sample_dims", "spatial_dims"):
            object.__setattr__(self, name, tuple(str(d) for d in getattr(self, name)))
        for name in ("sample_shape", "spatial_shape", "patch_size"):
            object.__setattr__(self, name, tuple(int(v) for v in getattr(self, name)))
        for name in ("scale", "translation"):
            v = getattr(self, name)
            if v is not None:
                object.__setattr__(self, name, tuple(float(x) for x in v))
        if len(self.sample_shape) != len(self.sample_dims):
            raise ConfigError(f"sample_shape {self.sample_shape} does not match sample_dims "
                              f"{self.sample_dims}.")
        if not len(self.spatial_shape) == len(self.patch_size) == len(self.spatial_dims):
            raise ConfigError(
                f"patch_size {self.patch_size} and spatial_shape {self.spatial_shape} need one "
                f"entry per spatial dim {self.spatial_dims}.")
        check_border(self.border)

    # ---- derived
    @property
    def ndim(self) -> int:
        """Number of spatial dims (2 or 3)."""
        return len(self.spatial_dims)

    @property
    def grid_shape(self) -> tuple[int, ...]:
        """Regions per spatial axis of one sample (:func:`grid_extent`)."""
        return tuple(grid_extent(s, p) for s, p in zip(self.spatial_shape, self.patch_size))

    @property
    def cell_shape(self) -> tuple[int, ...]:
        """Patch-sized cells per spatial axis of one sample (:func:`cell_extent`)."""
        return tuple(cell_extent(s, p) for s, p in zip(self.spatial_shape, self.patch_size))

    @property
    def region_shape(self) -> tuple[int, ...]:
        """Shape of a region-level array of the whole volume: ``(*sample_shape, *grid_shape)``."""
        return (*self.sample_shape, *self.grid_shape)

    @property
    def n_samples(self) -> int:
        """Number of samples (1 without sample dims)."""
        return int(math.prod(self.sample_shape))

    @property
    def n_regions(self) -> int:
        """Regions of one sample."""
        return int(math.prod(self.grid_shape))

    @property
    def patch_by_dim(self) -> dict[str, int]:
        """The patch size as ``{dim: size}``."""
        return dict(zip(self.spatial_dims, self.patch_size))

    @property
    def grid(self) -> RegionGrid:
        """The :class:`RegionGrid` of one sample."""
        return RegionGrid(self.spatial_shape, self.patch_size)

    def cell_counts(self) -> NDArray[np.float64]:
        """In-image pixels of every cell of one sample, shape :attr:`cell_shape`."""
        out = np.ones((), dtype=np.float64)
        for n, p in zip(self.spatial_shape, self.patch_size):
            c = cell_extent(n, p)
            a = np.full(c, p, dtype=np.float64)
            a[-1] = n - (c - 1) * p
            out = np.multiply.outer(out, a)
        return out

    def replace(self, **changes: Any) -> VolumeGeometry:
        """A copy with some fields changed (``dataclasses.replace``)."""
        return dataclasses.replace(self, **changes)

    # ---- construction and storage
    @classmethod
    def from_volume(cls, volume: Any, patch_size: Sequence[int] | Mapping[str, int], *,
                    ref_channel: int = 0, border: str = "careamics") -> VolumeGeometry:
        """The geometry of a named-dim volume (``xarray.DataArray`` from ``open_volume``).

        Raises
        ------
        ConfigError
            Bad patch size, a patch larger than the volume, or ``ref_channel`` out of range.
        """
        dims = tuple(volume.dims)
        sizes = {d: int(n) for d, n in dict(volume.sizes).items()}
        spatial = tuple(d for d in SPATIAL_DIMS if d in dims)
        sample_dims = tuple(d for d in SAMPLE_DIMS if d in dims)
        ps = normalize_patch_size(patch_size, spatial)
        n_channels = int(sizes.get("c", 1))
        if "c" not in dims and ref_channel != 0:
            raise ConfigError(
                f"ref_channel={ref_channel} but the volume has no channel axis (dims {dims}). "
                "Fix: use ref_channel=0, or open the volume with its channel axis (axes='C...').")
        if ref_channel < 0 or ref_channel >= n_channels:
            raise ConfigError(
                f"ref_channel={ref_channel} is out of range for a volume with {n_channels} "
                f"channel(s). Fix: choose 0..{n_channels - 1}.")
        for d in spatial:
            if ps[d] > sizes[d]:
                raise ConfigError(
                    f"patch_size[{d!r}]={ps[d]} is larger than the volume's {d} size {sizes[d]}. "
                    "Fix: use a smaller patch size.")
        attrs = dict(getattr(volume, "attrs", {}) or {})
        scale, trans = attrs.get("scale") or {}, attrs.get("translation") or {}
        return cls(dims, sample_dims, tuple(sizes[d] for d in sample_dims), spatial,
                   tuple(sizes[d] for d in spatial), tuple(ps[d] for d in spatial), n_channels,
                   int(ref_channel), check_border(border),
                   tuple(float(scale.get(d, 1.0)) for d in spatial),
                   tuple(float(trans.get(d, 0.0)) for d in spatial),
                   int(attrs.get("level", 0) or 0))

    @classmethod
    def from_attrs(cls, geometry: Mapping[str, Any],
                   source: Mapping[str, Any] | None = None) -> VolumeGeometry:
        """Read :meth:`to_attrs` back (``source``: the side-car's source attrs, for scale,
        translation and level)."""
        src = dict(source or {})
        spatial = tuple(geometry["spatial_dims"])
        scale, trans = src.get("scale") or {}, src.get("translation") or {}
        ps = geometry["patch_size"]
        return cls(
            tuple(geometry["dims"]), tuple(geometry["sample_dims"]),
            tuple(geometry["sample_shape"]), spatial, tuple(geometry["spatial_shape"]),
            tuple(ps[d] for d in spatial) if isinstance(ps, Mapping) else tuple(ps),
            int(geometry.get("n_channels", 1)), int(geometry.get("ref_channel", 0)),
            geometry.get("border", "careamics"),
            tuple(float(scale.get(d, 1.0)) for d in spatial),
            tuple(float(trans.get(d, 0.0)) for d in spatial), int(src.get("level", 0)))

    def to_attrs(self) -> dict[str, Any]:
        """JSON-able form, the side-car's ``geometry`` attrs (format version 1 keys)."""
        return {
            "dims": list(self.dims), "sample_dims": list(self.sample_dims),
            "sample_shape": list(self.sample_shape), "spatial_dims": list(self.spatial_dims),
            "spatial_shape": list(self.spatial_shape), "patch_size": self.patch_by_dim,
            "grid_shape": list(self.grid_shape), "cell_shape": list(self.cell_shape),
            "n_channels": self.n_channels, "ref_channel": self.ref_channel,
            "border": self.border,
        }
