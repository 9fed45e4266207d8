"""CAREamics region geometry: the grid of sampling regions and patch-size normalisation.

CAREamics (``careamics/dataset/patching/stratified_patching.py``) scores *regions*: windows
of ``2 * patch_size`` placed on a grid of stride ``patch_size``. Per spatial axis the grid
has ``(size + 1) // patch`` regions; region ``g`` starts at ``g * patch`` and reaches
``2 * patch`` pixels, zero-padded where it extends beyond the image (quirk B7 of
``careamics_reference/README.md``). Every pixel of the image lies in at most ``2**ndim``
regions. A patch drawn from region ``g`` has its origin in ``[g*patch, g*patch + patch)``
clipped so that the patch stays inside the image.

Only :func:`normalize_patch_size` converts user ``patch_size`` values.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Iterator, Mapping, Sequence

import numpy as np
from numpy.typing import NDArray

from patchsieve.errors import ConfigError

logger = logging.getLogger(__name__)

__all__ = [
    "RegionGrid",
    "normalize_patch_size",
    "region_chunks",
    "validate_training_patch_size",
]

SPATIAL_DIMS: tuple[str, ...] = ("z", "y", "x")


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
            (s + 1) // p for s, p in zip(shape, self.patch_size)
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
        Number of regions along the axis (``(size + 1) // patch``).

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
