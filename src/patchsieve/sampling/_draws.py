"""The draws of a streamed epoch (private to :mod:`patchsieve.sampling`): per-epoch counts
(cells and "rest" draws to tiles, ``O(cells + tiles)``) and the patches of one tile.

:class:`EpochDraws` is a mixin of :class:`~patchsieve.sampling.StreamingPatching`; it reads the
static structure built there (kinds, group ranks per tile, pieces, cells and their entries).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from patchsieve.sampling._keyed import KeyedPermutation, generator, key, uniforms
from patchsieve.sampling._layout import KEPT
from patchsieve.sampling._stratified import plan_dtype

# what a keyed draw is for (part of its key)
TAG_CELLS, TAG_REST, TAG_MEMBER, TAG_ORIGIN, TAG_ORDER, TAG_PLAN, TAG_SUBSET = (
    0xCE11, 0x2E57, 0x3E3B, 0x0121, 0x02DE, 0x914A, 0x5B5E)
#: epochs whose counts are kept (the current one and the next, for persistent workers)
EPOCHS_KEPT = 2


@dataclass
class _Epoch:
    """The per-epoch counts every process computes alike."""

    entry_count: NDArray[np.int64]  # bins of each cell entry landing in its tile
    entry_off: NDArray[np.int64]  # first category position of the entry in its cell
    rest_tile: NDArray[np.int64]  # "rest" (or with_replacement) draws landing in each tile
    tile_n: NDArray[np.int64]  # patches of each tile
    plan_order: NDArray[np.int64]  # tiles in plan order
    plan_pos: NDArray[np.int64]  # first plan position of each tile


class EpochDraws:
    """Per-epoch counts, tile realisation and whole plans of a streamed sampler."""

    seed: int
    mode: str
    epoch_length: int
    _epochs: dict[int, _Epoch]

    # ---- per-epoch counts
    def _epoch(self, epoch: int) -> _Epoch:
        epoch = int(epoch)
        got = self._epochs.get(epoch)
        if got is not None:
            return got
        s: Any = self
        n_tiles, n_entries = s.tiles.n_tiles, s.entry_tile.size
        if self.mode == "with_replacement":
            mass = s.tile_mass.astype(np.float64)
            total = float(mass.sum())
            tile_n = (generator(self.seed, epoch, TAG_REST).multinomial(self.epoch_length, mass / total)
                      if total > 0 else np.zeros(n_tiles, np.int64))
            counts = off = np.zeros(n_entries, np.int64)
            rest = tile_n = np.asarray(tile_n, np.int64)
        else:
            counts, k_rest = self._cell_outcomes(generator(self.seed, epoch, TAG_CELLS))
            before = np.concatenate([[0], np.cumsum(counts)])
            off = k_rest[s.entry_cell] + before[:-1] - before[s.cell_ptr[:-1]][s.entry_cell]
            rest = self._rest_to_tiles(generator(self.seed, epoch, TAG_REST), k_rest)
            tile_n = np.bincount(s.entry_tile, weights=counts, minlength=n_tiles).astype(np.int64) + rest
        plan_order = KeyedPermutation(n_tiles, key(self.seed, epoch, TAG_PLAN)).order
        pos = np.empty(n_tiles, np.int64)
        sizes = tile_n[plan_order]
        pos[plan_order] = np.cumsum(sizes) - sizes
        st = _Epoch(np.asarray(counts, np.int64), np.asarray(off, np.int64), rest, tile_n,
                    plan_order, pos)
        while len(self._epochs) >= EPOCHS_KEPT:
            self._epochs.pop(next(iter(self._epochs)))
        self._epochs[epoch] = st
        return st

    def _cell_outcomes(self, gen: np.random.Generator) -> tuple[NDArray[np.int64], NDArray[np.int64]]:
        """Per cell: how many bins are "rest" draws and how many land in each entry's tile
        (a multinomial per cell: its bins share the probabilities)."""
        s: Any = self
        n_cells, n_entries = s.cell_n.size, s.entry_tile.size
        bs = s.bin_size[s.cell_sample].astype(np.float64)
        p_e = s.entry_weight / np.maximum(bs[s.entry_cell], 1.0)
        fill = np.bincount(s.entry_cell, weights=p_e, minlength=n_cells)
        p_rest = np.clip(1.0 - fill, 0.0, 1.0)
        scale = np.where(fill > 1.0, fill, 1.0)  # float excess: no rest, entries renormalised
        p_e = p_e / scale[s.entry_cell]
        left = fill / scale
        k_rest = np.zeros(n_cells, np.int64)
        counts = np.zeros(n_entries, np.int64)
        ptr, n_ent = s.cell_ptr, np.diff(s.cell_ptr)
        one = np.flatnonzero(s.cell_n == 1)  # one bin: one categorical draw
        u = gen.random(one.size)
        is_rest = u < p_rest[one]
        k_rest[one] = is_rest
        sel, y = one[~is_rest], u[~is_rest] - p_rest[one[~is_rest]]
        if sel.size:
            cum = np.cumsum(p_e)
            base = np.concatenate([[0.0], cum])[ptr[sel]]
            e = np.clip(np.searchsorted(cum, base + y, side="right"), ptr[sel], ptr[sel + 1] - 1)
            np.add.at(counts, e, 1)
        many = np.flatnonzero(s.cell_n > 1)
        k_rest[many] = gen.binomial(s.cell_n[many], p_rest[many])
        rem = s.cell_n[many] - k_rest[many]
        lft = left[many].copy()
        ne = n_ent[many]
        for j in range(int(ne.max(initial=0))):
            has = np.flatnonzero(ne > j)
            e = ptr[many[has]] + j
            prob = np.clip(p_e[e] / np.where(lft[has] > 0, lft[has], 1.0), 0.0, 1.0)
            cnt = np.where(ne[has] == j + 1, rem[has], gen.binomial(rem[has], prob))
            counts[e] = cnt
            rem[has] -= cnt
            lft[has] -= p_e[e]
        return counts, k_rest

    def _rest_to_tiles(self, gen: np.random.Generator, k_rest: NDArray[np.int64]) -> NDArray[np.int64]:
        """Tiles of the "rest" draws: a multinomial per sample over its tiles' masses."""
        s: Any = self
        ns, per = s.n_samples, s.tiles.per_sample
        m = np.bincount(s.cell_sample, weights=k_rest, minlength=ns).astype(np.int64)
        mass = s.tile_mass.reshape(ns, per).astype(np.float64)
        tot = mass.sum(axis=1, keepdims=True)
        pvals = np.where(tot > 0, mass / np.where(tot > 0, tot, 1.0), 0.0)
        return np.asarray(gen.multinomial(m, pvals), np.int64).reshape(-1)

    # ---- plans
    def tile_layout(self, epoch: int) -> tuple[NDArray[np.int64], NDArray[np.int64], NDArray[np.int64]]:
        """Patches per tile, tiles in plan order and each tile's first plan position."""
        st = self._epoch(epoch)
        return st.tile_n, st.plan_order, st.plan_pos

    def epoch_plan(self, epoch: int) -> NDArray[Any]:
        """The whole plan of one epoch (``plan_dtype``): tiles in plan order, each tile's
        patches in their own random order. ``O(patches)``: for inspection and small grids;
        iteration streams it tile by tile (:meth:`realize`)."""
        from patchsieve.errors import ConfigError

        if epoch < 0:
            raise ConfigError(f"epoch must be >= 0; got {epoch}.")
        st = self._epoch(epoch)
        parts = [self.realize(epoch, int(u)) for u in st.plan_order if st.tile_n[u]]
        s: Any = self
        return np.concatenate(parts) if parts else np.zeros(0, plan_dtype(len(s.patch_size)))

    def realize(self, epoch: int, u: int) -> NDArray[Any]:
        """The patches of tile ``u`` in epoch ``epoch``, in plan order (``plan_dtype``)."""
        s: Any = self
        st = self._epoch(epoch)
        nd = len(s.patch_size)
        n = int(st.tile_n[u])
        out = np.zeros(n, plan_dtype(nd))
        if n == 0:
            return out
        sample, k = divmod(int(u), s.tiles.per_sample)
        kind_map = s._kind_map(u)
        flat_kind = kind_map.ravel()
        local = [self._in_bin(epoch, st, u, sample, k, flat_kind)]
        n_rest = int(st.rest_tile[u])
        if n_rest:
            cum = np.cumsum(s.kinds.value[flat_kind])
            x = uniforms(key(self.seed, epoch, TAG_REST, u), np.arange(n_rest)) * cum[-1]
            local.append(np.minimum(np.searchsorted(cum, x, side="right"), cum.size - 1))
        idx = np.concatenate(local)
        s._check_count(idx.size, n, u)
        lo, _ = s.tiles.box(k)
        coords = np.stack(np.unravel_index(idx, kind_map.shape), axis=1) + np.asarray(lo, np.int64)
        grid = np.asarray(s.grid_shape, np.int64)
        ps = np.asarray(s.patch_size, np.int64)
        length = np.where(coords == grid - 1, np.asarray(s.last_length, np.int64), ps)
        uo = uniforms(key(self.seed, epoch, TAG_ORIGIN, u), np.arange(n * nd)).reshape(n, nd)
        out["sample"] = sample
        out["region"] = np.ravel_multi_index(tuple(coords.T), s.grid_shape)
        out["origin"] = coords * ps + np.floor(uo * np.maximum(length, 1)).astype(np.int64)
        bg = s.kinds.status[flat_kind[idx]] != KEPT
        out["background"] = bg
        out["weight"] = np.where(bg, s.background_weight, 1.0)
        return out[KeyedPermutation(n, key(self.seed, epoch, TAG_ORDER, u)).order]

    def _in_bin(self, epoch: int, st: _Epoch, u: int, sample: int, k: int,
                flat_kind: NDArray[np.int64]) -> NDArray[np.int64]:
        """Local region indices (tile box, C order) of the bins landing in tile ``u``."""
        s: Any = self
        ents = s._tile_entries[int(s._tile_eptr[u]):int(s._tile_eptr[u + 1])]
        ents = ents[st.entry_count[ents] > 0]
        if ents.size == 0:
            return np.zeros(0, np.int64)
        cell = s.entry_cell[ents]
        cnt, n_c = st.entry_count[ents], s.cell_n[cell]
        whole = cnt == n_c  # every bin of the cell lands here: no need to know which
        reps = np.where(whole, n_c, cnt)
        which = np.repeat(np.arange(ents.size), reps)
        i = np.arange(which.size) - np.repeat(np.cumsum(reps) - reps, reps)
        for j in np.flatnonzero(~whole).tolist():  # the bins at category positions off..off+cnt
            c, off = int(cell[j]), int(st.entry_off[ents[j]])
            perm = KeyedPermutation(int(n_c[j]), key(self.seed, epoch, TAG_CELLS, c))
            i[which == j] = perm.inverse(np.arange(off, off + int(cnt[j])))
        piece = s.cell_piece[cell][which]
        ip = s.cell_i0[cell][which] + i
        bins = s.piece_start[piece] + ip
        t0, t1 = s.gcum[sample, k], s.gcum[sample, k + 1]
        first, n_cov = s.piece_cov[piece], s.piece_cov[piece + 1] - s.piece_cov[piece]
        width = int(n_cov.max())
        cv = np.minimum(first[None, :] + np.arange(width)[:, None], s.cov_group.size - 1)
        valid = np.arange(width)[:, None] < n_cov[None, :]
        g = s.cov_group[cv]
        t = s.cov_t[cv]
        r = s.cov_r0[cv] + ip[None, :] * t
        lo = np.maximum(r, t0[g])
        m = np.where(valid, np.clip(np.minimum(r + t, t1[g]) - lo, 0, None), 0)
        value = s.kinds.group_value[g]
        cum_w = np.cumsum(m * value, axis=0)
        x = uniforms(key(self.seed, epoch, TAG_MEMBER, sample), bins) * cum_w[-1]
        j = (cum_w <= x[None, :]).sum(axis=0)
        j = np.minimum(j, width - 1 - np.argmax((m > 0)[::-1], axis=0))  # a covering with members
        cols = np.arange(bins.size)
        before = np.where(j > 0, cum_w[np.maximum(j - 1, 0), cols], 0.0)
        step = np.floor((x - before) / value[j, cols]).astype(np.int64)
        rank = lo[j, cols] + np.clip(step, 0, m[j, cols] - 1)
        gsel = g[j, cols]
        gid = s.kinds.group[flat_kind]
        local = np.empty(bins.size, np.int64)
        for gg in np.unique(gsel).tolist():
            members = np.flatnonzero(gid == gg)
            s._check_count(members.size, t1[gg] - t0[gg], u)
            w = gsel == gg
            local[w] = members[rank[w] - t0[gg]]
        return local
