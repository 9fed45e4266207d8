"""``StreamingPatching``: CAREamics ``StratifiedPatching`` epochs streamed tile by tile, with
a plan state independent of the number of regions (private module; the sampling model and the
streamed plan are described in the :mod:`patchsieve.sampling` docstring)."""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from fractions import Fraction
from typing import Any

import numpy as np
from numpy.typing import NDArray

from patchsieve.errors import ConfigError, SidecarMismatchError
from patchsieve.grid import grid_extent
from patchsieve.sampling._draws import TAG_SUBSET, EpochDraws, _Epoch
from patchsieve.sampling._keyed import KeyedPermutation, generator, key
from patchsieve.sampling._layout import (
    BACKGROUND,
    CHOSEN,
    KEPT,
    UNCHOSEN,
    Kinds,
    Packed,
    pack_sample,
    sample_cells,
    sequential_subtract,
)
from patchsieve.sampling._stratified import MODES, SamplingMode, _check_geometry
from patchsieve.sampling._tiles import (
    MAX_TILES,
    BackgroundReader,
    TileGrid,
    area_classes,
    choose_tile_shape,
    scan_background,
)

logger = logging.getLogger(__name__)


class StreamingPatching(EpochDraws):
    """CAREamics ``StratifiedPatching`` epoch plans over a region grid, streamed tile by tile.

    The same sampling model as :class:`StratifiedPatching` (modes, epoch length, CAREamics'
    bin packing with its integer truncation), computed from region *counts* per tile: the plan
    state is ``O(tiles + packing pieces)`` (at most :data:`MAX_TILES` tiles), never
    ``O(regions)``, and the regions of one tile are read (``read_background``) only when that
    tile's patches are drawn. Regions are enumerated tile by tile (canonical order) instead of
    in C order: the packing is CAREamics' on that enumeration, i.e. the same bins up to which
    regions of equal adjusted area share a bin. See the package docstring for the streamed
    plan (tiles in a random order, rank and worker shards, resume).

    Parameters
    ----------
    spatial_shape, patch_size : sequence of int
        Spatial sizes of every sample and the patch size, (Z)YX.
    read_background : callable
        ``read_background(sample, lo, hi)`` -> bool array: the ``filter_out`` decisions of
        the regions ``[lo, hi)`` of one (flat) sample.
    n_samples : int
        Number of samples.
    background_weight : float
        Relative probability of background regions (``filtered_patch_prob``); kept regions
        have 1.
    mode, seed, epoch_length
        As :class:`StratifiedPatching`.
    chunk_shape : sequence of int, optional
        Spatial storage chunk of the volume (tiles hold whole chunks' regions when possible).
    decision_rows : int, optional
        Rows (first spatial axis) of one storage chunk of the decisions (reads are aligned).
    max_tiles : int
        Upper bound on the number of tiles.

    Examples
    --------
    >>> bg = np.zeros((1, 4, 4), bool); bg[0, 0] = True
    >>> sp = StreamingPatching.from_arrays((256, 256), (64, 64), bg, background_weight=0.1)
    >>> sp.epoch_length, len(sp.epoch_plan(0)), sp.bin_size.tolist()
    (13, 13, [4096])
    """

    def __init__(
        self,
        spatial_shape: Sequence[int],
        patch_size: Sequence[int],
        read_background: BackgroundReader,
        *,
        n_samples: int = 1,
        background_weight: float = 0.1,
        mode: SamplingMode = "per_epoch",
        seed: int = 0,
        epoch_length: int | None = None,
        chunk_shape: Sequence[int] | None = None,
        decision_rows: int | None = None,
        max_tiles: int = MAX_TILES,
    ):
        self.spatial_shape, self.patch_size = _check_geometry(spatial_shape, patch_size)
        if mode not in MODES:
            raise ConfigError(f"mode must be one of {MODES}; got {mode!r}.")
        if not isinstance(seed, (int, np.integer)) or seed < 0:
            raise ConfigError(f"seed must be a non-negative int; got {seed!r}.")
        w = float(background_weight)
        if not 0.0 <= w <= 1.0:
            raise ConfigError(f"background_weight must lie in [0, 1]; got {background_weight!r}.")
        self.mode, self.seed, self.background_weight = mode, int(seed), w
        self.n_samples = int(n_samples)
        self._read = read_background
        nd = len(self.patch_size)
        self.grid_shape = tuple(grid_extent(s, p) for s, p in zip(self.spatial_shape, self.patch_size,
                                                                  strict=True))
        #: selectable origins of the last grid row per axis (the other rows: the patch size)
        self.last_length = tuple((s + 1) % p for s, p in zip(self.spatial_shape, self.patch_size,
                                                             strict=True))
        self.classes = area_classes(nd)
        self.class_area = [math.prod(r if a else p for a, r, p in
                                     zip(alpha, self.last_length, self.patch_size, strict=True))
                           for alpha in self.classes]
        shape = choose_tile_shape(self.grid_shape, self.n_samples, self.patch_size, chunk_shape,
                                  max_tiles)
        self.tiles = TileGrid(self.grid_shape, self.n_samples, shape)
        bg = scan_background(read_background, self.tiles, decision_rows)
        totals = np.tile(self.tiles.class_totals(), (self.n_samples, 1))
        self._bg_counts = bg
        self.n_background = bg.reshape(self.n_samples, -1).sum(axis=1)
        statuses = [KEPT, CHOSEN, UNCHOSEN] if mode == "fixed_subset" else [KEPT, BACKGROUND]
        self._statuses = statuses
        self.kinds = Kinds.build(self.class_area, statuses, w)
        self._chosen = self._fixed_subset(bg) if mode == "fixed_subset" else None
        self.kind_counts = self._kind_counts(totals, bg)
        self._build()
        self._set_epoch_length(epoch_length)
        self._epochs: dict[int, _Epoch] = {}

    @classmethod
    def from_arrays(cls, spatial_shape: Sequence[int], patch_size: Sequence[int],
                    background: Any, **kwargs: Any) -> StreamingPatching:
        """A sampler over in-memory decisions ``(n_samples, *grid_shape)`` (or ``grid_shape``)."""
        grid = tuple(grid_extent(s, p) for s, p in zip(spatial_shape, patch_size, strict=True))
        bg = np.asarray(background, bool)
        bg = bg[None] if bg.shape == grid else bg
        if bg.shape[1:] != grid:
            raise ConfigError(f"background must have shape (n_samples, *{grid}); got {bg.shape}.")

        def read(s: int, lo: Sequence[int], hi: Sequence[int]) -> NDArray[np.bool_]:
            return bg[(s, *[slice(a, b) for a, b in zip(lo, hi, strict=True)])]

        return cls(spatial_shape, patch_size, read, n_samples=bg.shape[0], **kwargs)

    # ---- construction
    def _fixed_subset(self, bg: NDArray[np.int64]) -> NDArray[np.int64]:
        """Chosen background regions per tile and area class: ``floor(n_bg * p + 0.5)`` per
        sample, a uniformly random subset (multivariate hypergeometric split over tiles and
        classes, then a keyed subset inside each; from ``seed`` only)."""
        chosen = np.zeros_like(bg)
        per = self.tiles.per_sample
        for s in range(self.n_samples):
            colors = bg[s * per:(s + 1) * per].ravel()
            n_bg = int(colors.sum())
            k = math.floor(float(Fraction(self.background_weight) * n_bg) + 0.5)
            if k:
                gen = generator(self.seed, TAG_SUBSET, s)
                got = gen.multivariate_hypergeometric(colors, k, method="marginals")
                chosen[s * per:(s + 1) * per] = got.reshape(per, -1)
        return chosen

    def _kind_counts(self, totals: NDArray[np.int64], bg: NDArray[np.int64]) -> NDArray[np.int64]:
        n_st = len(self._statuses)
        out = np.zeros((self.tiles.n_tiles, len(self.classes) * n_st), np.int64)
        for j in range(len(self.classes)):
            for i, st in enumerate(self._statuses):
                col = {KEPT: totals[:, j] - bg[:, j], BACKGROUND: bg[:, j]}.get(st)
                if col is None:
                    assert self._chosen is not None
                    col = self._chosen[:, j] if st == CHOSEN else bg[:, j] - self._chosen[:, j]
                out[:, j * n_st + i] = col
        return out

    def _n_patches(self, s: int) -> int:
        """CAREamics' patches per epoch of sample ``s`` (``careamics_n_patches``)."""
        if self.mass[s] <= 0:
            if sum(self.class_area) > 0:
                logger.warning("sample %d has no region with a positive weight: 0 patches", s)
            return 0
        total = float(np.prod(np.array(self.spatial_shape) / np.array(self.patch_size)))
        per = self.tiles.per_sample
        counts = self.kind_counts[s * per:(s + 1) * per].sum(axis=0)
        if self.mode == "fixed_subset":
            n_unchosen = int(counts[self.kinds.status == UNCHOSEN].sum())
            total = sequential_subtract(total, 1.0, n_unchosen)
        else:
            total = sequential_subtract(total, 1.0 - self.background_weight,
                                        int(self.n_background[s]))
        return max(int(np.ceil(total)), 0)

    def _build(self) -> None:
        k, per, ns = self.kinds, self.tiles.per_sample, self.n_samples
        self.tile_mass = self.kind_counts @ k.value
        self.mass = self.tile_mass.reshape(ns, per).sum(axis=1)
        n_g = k.n_groups
        gcount = np.zeros((self.tiles.n_tiles, n_g), np.int64)
        for kind in np.flatnonzero(k.group >= 0):
            gcount[:, k.group[kind]] += self.kind_counts[:, kind]
        g3 = gcount.reshape(ns, per, n_g)
        self.gcum = np.concatenate([np.zeros((ns, 1, n_g), np.int64), np.cumsum(g3, axis=1)], axis=1)
        self.n_patches_per_sample = np.array([self._n_patches(s) for s in range(ns)], np.int64)
        self.bin_size = np.zeros(ns, np.int64)
        n_regions = math.prod(self.grid_shape)
        cache: dict[Any, Packed] = {}
        pieces: list[tuple[int, Packed]] = []
        cells: list[Any] = []
        for s in range(ns):
            counts = self.gcum[s, -1]
            n = int(self.n_patches_per_sample[s])
            if n == 0:
                continue
            ints = self._group_int(s)
            mode = self._int_mode(s, counts, ints)
            key_ = (n, tuple(counts.tolist()), tuple(ints.tolist()), mode)
            if key_ not in cache:
                cache[key_] = pack_sample(k.group_value, ints, counts, n, n_regions, mode)
            packed = cache[key_]
            self.bin_size[s] = packed.bin_size
            pieces.append((s, packed))
            cells.append(sample_cells(packed, self.gcum[s], k.group_value))
        self._assemble(pieces, cells)

    def _group_int(self, s: int) -> NDArray[np.bool_]:
        """Per group: whether every region of it present in sample ``s`` is an integer area."""
        per, k = self.tiles.per_sample, self.kinds
        present = self.kind_counts[s * per:(s + 1) * per].sum(axis=0) > 0
        out = np.ones(k.n_groups, bool)
        for kind in np.flatnonzero(present & (k.group >= 0) & ~k.is_int):
            out[k.group[kind]] = False
        return out

    def _int_mode(self, s: int, counts: NDArray[np.int64], ints: NDArray[np.bool_]) -> bool:
        """Whether CAREamics' capacity array is int64: the first region (enumeration order) of
        the largest adjusted area holds an integer area."""
        k, per = self.kinds, self.tiles.per_sample
        g0 = int(np.flatnonzero(counts > 0)[0])
        kc = self.kind_counts[s * per:(s + 1) * per]
        members = np.flatnonzero((k.group == g0) & (kc.sum(axis=0) > 0))
        has_int = bool(k.is_int[members].any())
        if ints[g0] or not has_int:
            return has_int
        present = k.group_value[counts > 0]
        if np.all(present == np.floor(present)):
            return True  # integral areas only: int or float capacities give the same packing
        tile = int(np.flatnonzero(kc[:, members].sum(axis=1) > 0)[0])
        kind_map = self._kind_map(s * per + tile).ravel()
        first = kind_map[np.flatnonzero(np.isin(kind_map, members))[0]]
        return bool(k.is_int[first])

    def _assemble(self, pieces: list[tuple[int, Packed]], cells: list[Any]) -> None:
        """Concatenate the samples' pieces and cells (global piece, cell and tile ids)."""
        parts: dict[str, list[NDArray[Any]]] = {}

        def put(name: str, arr: Any, dtype: Any = np.int64) -> None:
            parts.setdefault(name, []).append(np.asarray(arr, dtype))

        n_pieces = n_covs = n_entries = 0
        per = self.tiles.per_sample
        for (s, pk), cl in zip(pieces, cells, strict=True):
            put("piece_sample", np.full(pk.n_pieces, s))
            put("piece_start", pk.start)
            put("piece_fill", pk.fill, np.float64)
            put("piece_cov", pk.cov_ptr[1:] + n_covs)
            put("cov_group", pk.cov_group)
            put("cov_t", pk.cov_t)
            put("cov_r0", pk.cov_r0)
            put("cell_sample", np.full(cl.n.size, s))
            put("cell_piece", cl.piece + n_pieces)
            put("cell_i0", cl.i0)
            put("cell_n", cl.n)
            put("cell_ptr", cl.ptr[1:] + n_entries)
            put("entry_tile", cl.tile + s * per)
            put("entry_weight", cl.weight, np.float64)
            n_pieces += pk.n_pieces
            n_covs += int(pk.cov_ptr[-1])
            n_entries += int(cl.ptr[-1])
        heads = {"piece_cov": [0], "cell_ptr": [0]}
        for name in ("piece_sample", "piece_start", "piece_fill", "piece_cov", "cov_group", "cov_t",
                     "cov_r0", "cell_sample", "cell_piece", "cell_i0", "cell_n", "cell_ptr",
                     "entry_tile", "entry_weight"):
            dtype = np.float64 if name in ("piece_fill", "entry_weight") else np.int64
            arrs = [np.asarray(heads.get(name, []), dtype), *parts.get(name, [])]
            setattr(self, name, np.concatenate(arrs))
        self.entry_cell = np.repeat(np.arange(self.cell_n.size), np.diff(self.cell_ptr))
        order = np.argsort(self.entry_tile, kind="stable")
        self._tile_entries = order
        self._tile_eptr = np.searchsorted(self.entry_tile[order], np.arange(self.tiles.n_tiles + 1))

    def _set_epoch_length(self, epoch_length: int | None) -> None:
        if epoch_length is not None and int(epoch_length) <= 0:
            raise ConfigError(f"epoch_length must be a positive int; got {epoch_length!r}.")
        if self.mode == "with_replacement":
            self.epoch_length = int(epoch_length) if epoch_length else int(self.n_patches_per_sample.sum())
            return
        if epoch_length is not None:
            raise ConfigError(
                f"epoch_length applies to mode='with_replacement' only; mode={self.mode!r} fixes "
                "the epoch length as CAREamics does. Fix: drop epoch_length.")
        self.epoch_length = int(self.n_patches_per_sample.sum())

    # ---- state size
    @property
    def state_bytes(self) -> int:
        """Bytes of the plan state (arrays held by the sampler, current epochs included)."""
        total = 0
        for v in list(vars(self).values()) + [e for ep in self._epochs.values() for e in vars(ep).values()]:
            if isinstance(v, np.ndarray):
                total += v.nbytes
            elif isinstance(v, TileGrid):
                total += sum(a.nbytes for a in vars(v).values() if isinstance(a, np.ndarray))
        return total

    # ---- expectations
    def expected_background_fraction(self) -> float:
        """Expected share of patches drawn from background regions (package docstring)."""
        k = self.kinds
        bg_kind = k.status != KEPT
        bg_mass = (self.kind_counts[:, bg_kind] @ k.value[bg_kind]).reshape(self.n_samples, -1).sum(1)
        if self.mode == "with_replacement":
            total = float(self.mass.sum())
            return float(bg_mass.sum()) / total if total else 0.0
        n = self.n_patches_per_sample
        share = np.where(self.mass > 0, bg_mass / np.where(self.mass > 0, self.mass, 1), 0.0)
        return float((n * share).sum() / n.sum()) if n.sum() else 0.0

    def tile_expectations(self, u: int) -> tuple[NDArray[np.bool_], NDArray[np.float64]]:
        """Background flags and expected visits per epoch of the regions of tile ``u`` (its
        box, :meth:`tile_box`), read from the decisions."""
        kind_map = self._kind_map(u)
        s = int(u) // self.tiles.per_sample
        value = self.kinds.value[kind_map]
        if self.mode == "with_replacement":
            total = float(self.mass.sum())
            scale = self.epoch_length / total if total else 0.0
        else:
            scale = self.n_patches_per_sample[s] / self.mass[s] if self.mass[s] > 0 else 0.0
        return self.kinds.status[kind_map] != KEPT, value * scale

    def tile_box(self, u: int) -> tuple[int, tuple[int, ...], tuple[int, ...]]:
        """``(sample, lo, hi)``: the regions of tile ``u``."""
        lo, hi = self.tiles.box(int(u) % self.tiles.per_sample)
        return int(u) // self.tiles.per_sample, lo, hi

    # ---- tiles
    def _kind_map(self, u: int) -> NDArray[np.int64]:
        """Kind of every region of tile ``u`` (its box, C order)."""
        s, k = divmod(int(u), self.tiles.per_sample)
        lo, hi = self.tiles.box(k)
        bg = np.asarray(self._read(s, lo, hi), dtype=bool)
        if bg.shape != tuple(b - a for a, b in zip(lo, hi, strict=True)):
            raise SidecarMismatchError(f"the decisions of sample {s} box {lo}..{hi} have shape "
                                       f"{bg.shape}. Fix: pass the side-car of this volume.")
        nd = len(lo)
        alpha = np.zeros(bg.shape, np.int64)
        for d in range(nd):
            last = (np.arange(lo[d], hi[d]) == self.grid_shape[d] - 1).astype(np.int64)
            alpha += (last << (nd - 1 - d)).reshape([-1 if i == d else 1 for i in range(nd)])
        n_st = len(self._statuses)
        status = bg.astype(np.int64)  # KEPT 0 / background 1 (CHOSEN's slot in fixed_subset)
        if self._chosen is not None:
            status = np.where(bg, 2, 0)  # unchosen unless picked below
            flat_a, flat_bg = alpha.ravel(), bg.ravel()
            flat_st = status.ravel()
            for j in np.flatnonzero(self._bg_counts[u]):
                idx = np.flatnonzero(flat_bg & (flat_a == j))
                self._check_count(idx.size, self._bg_counts[u, j], u)
                pick = KeyedPermutation(idx.size, key(self.seed, TAG_SUBSET, u, j))(np.arange(idx.size))
                flat_st[idx[pick < self._chosen[u, j]]] = 1
            status = flat_st.reshape(bg.shape)
        return alpha * n_st + status

    @staticmethod
    def _check_count(got: int, want: int, u: int) -> None:
        if int(got) != int(want):
            raise SidecarMismatchError(
                f"tile {u} holds {got} regions of a kind where {want} were counted when the "
                "sampler was built: the decisions changed meanwhile. Fix: build the dataset "
                "again after recomputing the side-car.")
