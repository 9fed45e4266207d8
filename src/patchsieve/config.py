"""Pydantic configs of the four patch filters, with CAREamics' names and fields.

Mirrors ``careamics/config/data/patch_filter/*.py`` (CAREamics 0.3.5): each model has a
``name`` discriminator (``"max"``, ``"mean_std"``, ``"shannon"``, ``"mask"``), a
``ref_channel`` (the channel that is scored) and ``filtered_patch_prob`` (the relative
sampling probability of a background region). :data:`PatchFilterConfig` is the
discriminated union.

Differences from CAREamics, on purpose:

* ``MaxPatchFilterConfig.coverage`` defaults to ``None``, meaning ``0.5**ndim`` (0.25 in
  2D, 0.125 in 3D), the value CAREamics' training ``DataConfig`` and ``filter_map`` use.
  CAREamics' bare ``MaxPatchFilter(threshold)`` class and ``MaxPatchFilterConfig`` default
  to 0.25 regardless of ndim (quirk B6); pass ``coverage=0.25`` to get that in 3D.
* Models are frozen, forbid unknown keys and reject NaN/inf numbers.
* ``MaskPatchFilterConfig`` also carries the mask (an array or a path/URL). An in-memory
  array cannot be serialised: ``model_dump`` writes ``mask=None`` and keeps its SHA-256 in
  ``mask_sha256`` so a reloaded config can check the array given again.
"""

from __future__ import annotations

import hashlib
import logging
from typing import Annotated, Any, Literal, Union

import numpy as np
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
    field_serializer,
    field_validator,
    model_validator,
)

from patchsieve.errors import ConfigError

logger = logging.getLogger(__name__)

__all__ = [
    "MaskPatchFilterConfig",
    "MaxPatchFilterConfig",
    "MeanStdPatchFilterConfig",
    "PatchFilterConfig",
    "ShannonPatchFilterConfig",
    "mask_sha256",
    "parse_filter_config",
]


class _FilterConfigBase(BaseModel):
    """Fields shared by every filter config (CAREamics ``PatchFilterConfig`` base)."""

    model_config = ConfigDict(
        extra="forbid",
        frozen=True,
        use_attribute_docstrings=True,
        arbitrary_types_allowed=True,
    )

    def __init__(self, **data: Any) -> None:
        try:
            super().__init__(**data)
        except ValidationError as err:
            raise ConfigError(
                f"invalid {type(self).__name__}: {_short(err)}. Fix: see the field rules in "
                f"the {type(self).__name__} docstring."
            ) from err

    ref_channel: int = Field(default=0, ge=0)
    """The channel used as reference for filtering (index along the ``c`` dim)."""

    filtered_patch_prob: float = Field(default=0.1, ge=0.0, le=1.0, allow_inf_nan=False)
    """Relative probability that a background region is sampled in an epoch."""


class MaxPatchFilterConfig(_FilterConfigBase):
    """Max filter: keep regions whose max-filtered values exceed ``threshold`` on ``coverage``.

    Examples
    --------
    >>> MaxPatchFilterConfig(threshold=300.0).resolved_coverage(3)
    0.125
    """

    name: Literal["max"] = "max"
    """Name of the filter."""

    threshold: float = Field(allow_inf_nan=False)
    """Threshold for the max-filtered patch values."""

    coverage: float | None = Field(default=None, ge=0.0, le=1.0, allow_inf_nan=False)
    """Minimum fraction of max-filtered pixels above ``threshold``; ``None`` = 0.5**ndim."""

    def resolved_coverage(self, ndim: int) -> float:
        """The coverage used for ``ndim`` spatial dims (``0.5**ndim`` when ``None``)."""
        return resolve_coverage(self.coverage, ndim)


def resolve_coverage(coverage: float | None, ndim: int) -> float:
    """The one Max coverage rule: ``None`` means ``0.5**ndim``.

    Parameters
    ----------
    coverage : float or None
        Explicit coverage in ``[0, 1]`` or ``None``.
    ndim : int
        Number of spatial dims (2 or 3).

    Returns
    -------
    float

    Raises
    ------
    ConfigError
        ``ndim`` not 2 or 3, or ``coverage`` outside ``[0, 1]`` / NaN.
    """
    if ndim not in (2, 3):
        raise ConfigError(f"ndim must be 2 or 3 to resolve the Max coverage; got {ndim}.")
    if coverage is None:
        return 0.5**ndim
    c = float(coverage)
    if not (0.0 <= c <= 1.0):
        raise ConfigError(f"coverage must be in [0, 1]; got {coverage!r}. Fix: use e.g. 0.25.")
    return c


class MeanStdPatchFilterConfig(_FilterConfigBase):
    """MeanStd filter: keep regions with mean (and std) at or above the thresholds."""

    name: Literal["mean_std"] = "mean_std"
    """Name of the filter."""

    mean_threshold: float = Field(ge=0.0, allow_inf_nan=False)
    """Minimum mean intensity required to keep a region."""

    std_threshold: float | None = Field(default=None, ge=0.0, allow_inf_nan=False)
    """Minimum standard deviation required to keep a region (``None``: not used)."""


class ShannonPatchFilterConfig(_FilterConfigBase):
    """Shannon filter: keep regions whose entropy (bits) is at or above ``threshold``."""

    name: Literal["shannon"] = "shannon"
    """Name of the filter."""

    threshold: float = Field(ge=0.0, allow_inf_nan=False)
    """Minimum Shannon entropy (base 2) required to keep a region, e.g. 7.5."""


def mask_sha256(mask: np.ndarray) -> str:
    """SHA-256 of a mask array's shape, dtype and bytes (C order)."""
    arr = np.ascontiguousarray(mask)
    h = hashlib.sha256()
    h.update(repr((arr.shape, arr.dtype.str)).encode())
    h.update(arr.tobytes())
    return h.hexdigest()


class MaskPatchFilterConfig(_FilterConfigBase):
    """Mask filter: keep regions whose fraction of mask pixels is at least ``coverage``.

    The mask has the shape of the data (without channel dim), 1/True = keep, 0 = drop.
    """

    name: Literal["mask"] = "mask"
    """Name of the filter."""

    coverage: float = Field(default=0.25, ge=0.0, le=1.0, allow_inf_nan=False)
    """Minimum fraction of mask pixels required to keep a region."""

    mask: str | np.ndarray | None = None
    """The mask: a path/URL (TIFF, Zarr, .npy) or an in-memory array (not serialised)."""

    mask_sha256: str | None = None
    """SHA-256 of an in-memory mask (set automatically; kept when the mask is dropped)."""

    @model_validator(mode="before")
    @classmethod
    def _hash_array_mask(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("mask") is not None:
            m = data["mask"]
            if not isinstance(m, (str, np.ndarray)):
                if hasattr(m, "__fspath__"):
                    data = {**data, "mask": str(m.__fspath__())}
                else:
                    data = {**data, "mask": np.asarray(m)}
            if isinstance(data["mask"], np.ndarray):
                digest = mask_sha256(data["mask"])
                given = data.get("mask_sha256")
                if given is not None and given != digest:
                    raise ValueError(
                        f"mask_sha256 {given!r} does not match the given mask array "
                        f"({digest!r}). Fix: pass the same mask the config was built with."
                    )
                data = {**data, "mask_sha256": digest}
        return data

    @field_validator("mask")
    @classmethod
    def _check_mask(cls, v: Any) -> Any:
        if isinstance(v, np.ndarray):
            if v.size == 0:
                raise ValueError("mask must not be empty.")
            if v.dtype.kind not in "biuf":
                raise ValueError(f"mask must be boolean or numeric 0/1; got dtype {v.dtype}.")
        elif isinstance(v, str) and not v:
            raise ValueError("mask path must not be empty.")
        return v

    @field_serializer("mask")
    def _ser_mask(self, v: Any) -> str | None:
        return v if isinstance(v, str) else None


PatchFilterConfig = Annotated[
    Union[
        MaxPatchFilterConfig,
        MeanStdPatchFilterConfig,
        ShannonPatchFilterConfig,
        MaskPatchFilterConfig,
    ],
    Field(discriminator="name"),
]
"""Discriminated union of the four filter configs (on ``name``)."""

_ADAPTER: TypeAdapter[Any] = TypeAdapter(PatchFilterConfig)


def parse_filter_config(data: Any) -> Any:
    """Validate a mapping (e.g. from YAML or side-car attrs) into a filter config.

    Parameters
    ----------
    data : mapping or filter config
        ``{"name": "shannon", "threshold": 7.5, ...}``.

    Returns
    -------
    PatchFilterConfig
        The matching config model.

    Raises
    ------
    ConfigError
        Unknown ``name``, missing/invalid fields (the pydantic message is included).

    Examples
    --------
    >>> parse_filter_config({"name": "shannon", "threshold": 7.5}).threshold
    7.5
    """
    if isinstance(
        data,
        (MaxPatchFilterConfig, MeanStdPatchFilterConfig, ShannonPatchFilterConfig,
         MaskPatchFilterConfig),
    ):
        return data
    try:
        return _ADAPTER.validate_python(data)
    except ValidationError as err:
        raise ConfigError(f"invalid patch filter config {data!r}: {err}") from err


def _short(err: ValidationError) -> str:
    parts = []
    for e in err.errors():
        loc = ".".join(str(x) for x in e.get("loc", ()))
        parts.append(f"{loc or 'config'}: {e.get('msg')} (got {e.get('input')!r})")
    return "; ".join(parts)
