"""Load the CAREamics 0.3.5 reference vectors (skip when the folder is absent); shared by
the parity tests (a uniquely named module, not a conftest, so the import is unambiguous)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

REF = Path(__file__).resolve().parents[2].parent / "shared" / "careamics_reference"
CASES = sorted(p.stem for p in REF.glob("*_*.npz") if p.stem != "inputs") if REF.is_dir() else []


def load_case(name: str) -> dict:
    """The case's fields plus ``images`` (S, *spatial) of the scored channel and ``raw``."""
    if not REF.is_dir():
        pytest.skip(f"CAREamics reference vectors absent ({REF}); they live in ../shared")
    d = dict(np.load(REF / f"{name}.npz"))
    inputs = np.load(REF / "inputs.npz")
    d = {k: (v.item() if v.ndim == 0 else v) for k, v in d.items()}
    raw = inputs[d["input_key"]]
    d["raw"] = raw
    if d["filter"] == "mask":
        d["mask_raw"] = inputs[d["mask_key"]]
    axes = d["axes"]
    src = d["mask_raw"] if d["filter"] == "mask" else raw
    arr, ax = (src, axes) if "S" in axes else (src[None], "S" + axes)
    if "C" in ax:
        arr = np.take(arr, d["ref_channel"], axis=ax.index("C"))
    d["images"] = arr
    d["ps"] = tuple(int(v) for v in d["patch_size"])
    return d


def config_for(d: dict):
    from patchsieve.config import (
        MaskPatchFilterConfig,
        MaxPatchFilterConfig,
        MeanStdPatchFilterConfig,
        ShannonPatchFilterConfig,
    )

    f = d["filter"]
    if f == "max":
        return MaxPatchFilterConfig(
            threshold=d["threshold"], coverage=d["coverage"], ref_channel=d["ref_channel"]
        )
    if f == "mean_std":
        st = d["std_threshold"]
        return MeanStdPatchFilterConfig(
            mean_threshold=d["mean_threshold"], std_threshold=None if st < 0 else st,
            ref_channel=d["ref_channel"],
        )
    if f == "shannon":
        return ShannonPatchFilterConfig(threshold=d["threshold"], ref_channel=d["ref_channel"])
    return MaskPatchFilterConfig(coverage=d["coverage"])
