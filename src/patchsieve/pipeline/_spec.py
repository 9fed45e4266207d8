"""The pydantic models of pipeline specs and their error messages (private to
:mod:`patchsieve.pipeline`)."""

from __future__ import annotations

import difflib
import os
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from patchsieve.config import PatchFilterConfig
from patchsieve.errors import ConfigError
from patchsieve.pipeline._env import (
    _ENV_REF,
    _SECRET_KEY,
    _check_no_literal_secrets,
    _check_url,
    _load_yaml,
    apply_overrides,
)

_FILTER_TAGS = ("max", "mean_std", "shannon", "mask")


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)


class SourceSpec(_Spec):
    """One input volume."""

    path: str = Field(min_length=1)
    """Local path or fsspec URL of the volume (OME-Zarr, Zarr, TIFF); may use ``${VAR}``."""

    name: str | None = None
    """Short name (default: the file name without suffix); fills ``{name}`` in ``output``."""

    axes: str | None = None
    """CAREamics axes (``"SYX"``, ``"CZYX"``) for sources without axis names."""

    level: int = Field(default=0, ge=0)
    """OME-Zarr pyramid level to filter on."""

    storage_options: dict[str, Any] = Field(default_factory=dict)
    """fsspec options (``endpoint_url``, ``anon``, ``config_kwargs`` ...); secrets as ``${VAR}``."""

    output: str | None = None
    """Side-car location for this source (overrides the pipeline's ``output``)."""

    @field_validator("storage_options")
    @classmethod
    def _no_secrets(cls, v: dict[str, Any]) -> dict[str, Any]:
        _check_no_literal_secrets(v)
        return v

    @field_validator("path", "output")
    @classmethod
    def _no_url_credentials(cls, v: str | None) -> str | None:
        if v is not None:
            _check_url(v)
        return v

    @property
    def stem(self) -> str:
        """``name`` or the file name without ``.ome.zarr``/``.zarr``/``.tif(f)``."""
        if self.name:
            return self.name
        base = self.path.rstrip("/").split("/")[-1] or "volume"
        for suffix in (".ome.zarr", ".zarr", ".ome.tiff", ".ome.tif", ".tiff", ".tif"):
            if base.lower().endswith(suffix):
                return base[: -len(suffix)] or "volume"
        return base


class ClusterSpec(_Spec):
    """Where Dask runs: a scheduler address, or a local cluster of this size."""

    scheduler: str | None = None
    """Address of a running scheduler, ``tcp://HOST:PORT``; may be ``${DASK_SCHEDULER_ADDRESS}``."""

    n_workers: int | None = Field(default=None, ge=1)
    """Local cluster: worker processes (default: sized to the machine)."""

    threads_per_worker: int | None = Field(default=None, ge=1)
    """Local cluster: threads per worker."""

    processes: bool | None = None
    """Local cluster: worker processes (True) or threads in this process (False)."""

    timeout: float = Field(default=30.0, gt=0)
    """Seconds to wait for the scheduler and its first worker."""

    @model_validator(mode="after")
    def _local_only(self) -> ClusterSpec:
        if self.scheduler and not _ENV_REF.search(self.scheduler):
            local = [k for k in ("n_workers", "threads_per_worker", "processes")
                     if getattr(self, k) is not None]
            if local:
                raise ValueError(
                    f"{', '.join(local)} only size a local cluster, but scheduler is set. Fix: "
                    "remove them and size the workers where they are started (dask worker ...)."
                )
            if "://" not in self.scheduler:
                raise ValueError(
                    f"scheduler must be an address like tcp://HOST:PORT; got {self.scheduler!r}."
                )
        return self


class DatasetSpec(_Spec):
    """Options for :class:`patchsieve.PatchDataset` (validated here, passed through to training)."""

    mode: Literal["per_epoch", "with_replacement", "fixed_subset"] = "per_epoch"
    """Sampling mode; ``per_epoch`` reproduces CAREamics' ``StratifiedPatching``."""

    seed: int = 0
    """Seed of the epoch plans."""

    batch_size: int = Field(default=32, ge=1)
    """Batch size of the DataLoader."""

    num_workers: int = Field(default=0, ge=0)
    """DataLoader worker processes."""

    epoch_length: int | None = Field(default=None, ge=1)
    """Patches per epoch (``with_replacement`` only; default: the ``per_epoch`` count)."""

    shuffle_window: int | None = Field(default=None, ge=0)
    """Chunk-grouping shuffle window (0 = plan order; default: the dataset's)."""

    drop_last: bool = False
    """Drop the last incomplete batch."""

    filter: str | None = None
    """Which filter's weights to sample from (default: the first filter)."""

    @model_validator(mode="after")
    def _epoch_length_mode(self) -> DatasetSpec:
        if self.epoch_length is not None and self.mode != "with_replacement":
            raise ValueError(
                f"epoch_length applies to mode 'with_replacement' only (mode is {self.mode!r}). "
                "Fix: remove epoch_length or set mode: with_replacement."
            )
        return self


class PipelineConfig(_Spec):
    """A validated pipeline spec (see the module docstring for the YAML layout).

    Examples
    --------
    >>> cfg = PipelineConfig.model_validate({
    ...     "source": "demo-data/hagen2d.ome.zarr",
    ...     "filters": [{"name": "shannon", "threshold": 7.5}],
    ...     "patch_size": [64, 64]})
    >>> cfg.sources[0].path, cfg.filters[0].threshold
    ('demo-data/hagen2d.ome.zarr', 7.5)
    """

    version: Literal[1] = 1
    """Spec format version."""

    name: str | None = None
    """Name of the pipeline (reported in the summary)."""

    description: str | None = None
    """Free text."""

    source: list[SourceSpec] = Field(min_length=1)
    """The volume(s): a mapping, a path string or a list of mappings."""

    filters: list[PatchFilterConfig] = Field(min_length=1)
    """Filter configs with CAREamics fields (``name``: max, mean_std, shannon, mask)."""

    patch_size: list[int] | dict[str, int]
    """Patch size in spatial order (``[64, 64]``, ``[16, 64, 64]``) or per dim."""

    ref_channel: int | None = Field(default=None, ge=0)
    """Reference channel for every filter that does not set its own ``ref_channel``."""

    output: str | None = None
    """Side-car location (``{name}`` = source name); ``null`` = the default location."""

    output_storage_options: dict[str, Any] | None = None
    """fsspec options of the side-car location (default: the source's)."""

    overwrite: bool = False
    """Replace a side-car made for another source or other parameters."""

    labels: bool = False
    """Also write full-resolution OME-Zarr label images (large)."""

    border: Literal["careamics", "valid"] = "careamics"
    """Edge-region handling (``careamics`` = zero padding, as CAREamics)."""

    seed: int = 0
    """Seed of the chunk sample for the normalisation percentiles."""

    cluster: ClusterSpec = Field(default_factory=ClusterSpec)
    """Where Dask runs."""

    dataset: DatasetSpec | None = None
    """Training-side options (validated; ``run`` reports the expected epoch size)."""

    @model_validator(mode="before")
    @classmethod
    def _normalise(cls, data: Any) -> Any:
        if not isinstance(data, Mapping):
            return data
        data = dict(data)
        src = data.get("source")
        if isinstance(src, (str, os.PathLike)):
            data["source"] = [{"path": str(src)}]
        elif isinstance(src, Mapping):
            data["source"] = [src]
        ref = data.get("ref_channel")
        filters = data.get("filters")
        if isinstance(ref, int) and isinstance(filters, list):
            data["filters"] = [
                {**f, "ref_channel": ref} if isinstance(f, Mapping) and "ref_channel" not in f
                and f.get("name") != "mask" else f
                for f in filters
            ]
        return data

    @field_validator("patch_size")
    @classmethod
    def _patch_size(cls, v: Any) -> Any:
        from patchsieve.grid import normalize_patch_size

        try:
            normalize_patch_size(v)
        except ConfigError as err:
            raise ValueError(str(err)) from err
        return v

    @field_validator("output")
    @classmethod
    def _no_url_credentials(cls, v: str | None) -> str | None:
        if v is not None:
            _check_url(v)
        return v

    @field_validator("output_storage_options")
    @classmethod
    def _no_secrets(cls, v: dict[str, Any] | None) -> dict[str, Any] | None:
        if v is not None:
            _check_no_literal_secrets(v)
        return v

    @model_validator(mode="after")
    def _consistent(self) -> PipelineConfig:
        refs = {int(f.ref_channel) for f in self.filters if f.name != "mask"}
        if len(refs) > 1:
            raise ValueError(
                f"filters use different ref_channel values {sorted(refs)}; one side-car has one "
                "reference channel. Fix: use one ref_channel (top-level ref_channel: N)."
            )
        if self.ref_channel is not None and refs and refs != {self.ref_channel}:
            raise ValueError(
                f"ref_channel={self.ref_channel} but the filters set ref_channel={sorted(refs)}. "
                "Fix: remove ref_channel from the filters or make them agree."
            )
        for f in self.filters:
            if f.name == "mask" and not isinstance(f.mask, str):
                raise ValueError(
                    "a mask filter in a spec needs `mask: <path or URL of the mask Zarr/TIFF>`."
                )
        many = len(self.source) > 1
        if many and self.output is not None and "{name}" not in self.output:
            raise ValueError(
                f"output={self.output!r} is shared by {len(self.source)} sources. Fix: put a "
                "{name} placeholder in it (e.g. out/{name}.patchsieve.zarr) or set output per "
                "source."
            )
        stems = [s.stem for s in self.source]
        if many and len(set(stems)) != len(stems):
            raise ValueError(f"source names {stems} repeat. Fix: give each source a `name`.")
        if self.dataset and self.dataset.filter is not None:
            names = list(self.filter_configs())
            if self.dataset.filter not in names:
                raise ValueError(
                    f"dataset.filter={self.dataset.filter!r} is not one of the filters {names}."
                )
        return self

    @property
    def sources(self) -> list[SourceSpec]:
        """The sources as a list (``source`` normalised)."""
        return list(self.source)

    def filter_configs(self) -> dict[str, Any]:
        """Filters keyed by side-car name: the config's ``name``, ``name-i`` on repeats."""
        out: dict[str, Any] = {}
        for i, cfg in enumerate(self.filters):
            key = cfg.name if cfg.name not in out else f"{cfg.name}-{i}"
            out[key] = cfg
        return out

    @classmethod
    def from_yaml(cls, path: str | os.PathLike[str],
                  overrides: Iterable[str] = ()) -> PipelineConfig:
        """Load and validate a YAML spec (``yaml.safe_load`` + ``model_validate``).

        Parameters
        ----------
        path : str or path-like
            The spec file.
        overrides : iterable of str
            ``key.path=value`` overrides applied before validation (values parsed as YAML).

        Raises
        ------
        ConfigError
            Unreadable file, invalid YAML, or an invalid spec; the message names the key path
            (e.g. ``filters.0.threshold``) and the fix.
        """
        return cls.from_dict(_load_yaml(path), overrides=overrides, origin=str(path))

    @classmethod
    def from_dict(cls, data: Any, overrides: Iterable[str] = (),
                  origin: str = "spec") -> PipelineConfig:
        """Validate a mapping (e.g. parsed YAML), after applying ``overrides``.

        Raises
        ------
        ConfigError
            As :meth:`from_yaml`.
        """
        if not isinstance(data, Mapping):
            raise ConfigError(
                f"{origin}: a pipeline spec must be a YAML mapping (source:, filters:, "
                f"patch_size: ...); got {type(data).__name__}."
            )
        data = apply_overrides(data, overrides)
        try:
            return cls.model_validate(data)
        except ValidationError as err:
            raise ConfigError(_format_errors(err, data, origin)) from None


def _format_errors(err: ValidationError, data: Mapping[str, Any], origin: str) -> str:
    lines = []
    for loc, e in _flatten_errors(err, ()):
        loc = _clean_loc(loc, data)
        path = ".".join(str(p) for p in loc) or "(top level)"
        lines.append(f"{path}: {_describe(e, loc, data)}")
    n = len(lines)
    head = f"{origin}: invalid pipeline spec ({n} problem{'s' if n > 1 else ''})"
    return head + ":\n  " + "\n  ".join(lines)


def _flatten_errors(err: ValidationError,
                    prefix: tuple[Any, ...]) -> list[tuple[tuple[Any, ...], Mapping[str, Any]]]:
    """Errors with full locations, unwrapping filter configs that re-raise as ConfigError."""
    out: list[tuple[tuple[Any, ...], Mapping[str, Any]]] = []
    for e in err.errors():
        loc = prefix + tuple(e.get("loc", ()))
        inner = (e.get("ctx") or {}).get("error")
        cause = getattr(inner, "__cause__", None)
        if isinstance(cause, ValidationError):
            out.extend(_flatten_errors(cause, loc))
        else:
            out.append((loc, e))
    return out


def _clean_loc(loc: Sequence[Any], data: Mapping[str, Any]) -> list[Any]:
    """Drop pydantic's union tags and the implicit list index of a single `source` mapping."""
    out: list[Any] = []
    for i, part in enumerate(loc):
        if (i >= 2 and loc[i - 2] == "filters" and isinstance(loc[i - 1], int)
                and part in _FILTER_TAGS):
            continue
        if i == 1 and loc[0] == "source" and part == 0 and not isinstance(data.get("source"), list):
            continue
        out.append(part)
    return out


def _allowed_keys(loc: Sequence[Any], data: Mapping[str, Any]) -> list[str]:
    from patchsieve import config as filter_configs

    models: dict[str, type[BaseModel]] = {
        "source": SourceSpec, "cluster": ClusterSpec, "dataset": DatasetSpec,
    }
    parent = [p for p in loc[:-1] if not isinstance(p, int)]
    if not parent:
        return sorted(PipelineConfig.model_fields)
    if parent[0] == "filters":
        try:
            tag = data["filters"][loc[1]]["name"]
        except (KeyError, IndexError, TypeError):
            return []
        classes = {"max": filter_configs.MaxPatchFilterConfig,
                   "mean_std": filter_configs.MeanStdPatchFilterConfig,
                   "shannon": filter_configs.ShannonPatchFilterConfig,
                   "mask": filter_configs.MaskPatchFilterConfig}
        cls = classes.get(tag)
        return sorted(cls.model_fields) if cls is not None else []
    model = models.get(str(parent[0]))
    if model is None:
        return []
    return sorted(model.model_fields)


def _describe(e: Mapping[str, Any], loc: Sequence[Any], data: Mapping[str, Any]) -> str:
    kind = e.get("type", "")
    given = e.get("input")
    field = str(loc[-1]) if loc else ""
    if kind == "extra_forbidden":
        allowed = _allowed_keys(loc, data)
        close = difflib.get_close_matches(field, allowed, n=1, cutoff=0.75)
        fix = f"rename it to {close[0]!r}" if close else "remove it"
        listing = f" Allowed keys here: {', '.join(allowed)}." if allowed else ""
        return f"unknown key {field!r}. Fix: {fix}.{listing}"
    if kind == "missing":
        if loc and loc[0] == "source" and len(loc) == 1:
            return ("missing source. Fix: add `source: {path: demo-data/hagen2d.ome.zarr}` "
                    "(a path, an fsspec URL, or a list of sources).")
        return f"required key {field!r} is missing. Fix: add `{field}: ...`."
    if kind in ("union_tag_invalid", "union_tag_not_found"):
        return (f"filter `name` must be one of {', '.join(_FILTER_TAGS)}; got "
                f"{_safe_input(given)}. Fix: e.g. `- {{name: shannon, threshold: 7.5}}`.")
    msg = str(e.get("msg", "invalid value"))
    if kind == "value_error":
        return msg.removeprefix("Value error, ")
    if kind.endswith(("_type", "_parsing")) or kind in ("model_type", "list_type", "dict_type"):
        return f"{msg}; got {_safe_input(given)}. Fix: give a value of the expected type."
    return f"{msg}; got {_safe_input(given)}."


def _safe_input(value: Any) -> str:
    """Render an offending input for a message without echoing credentials."""
    if isinstance(value, Mapping):
        return "{" + ", ".join(
            f"{k!r}: {'***' if _SECRET_KEY.search(str(k)) else _safe_input(v)}"
            for k, v in value.items()) + "}"
    text = repr(value)
    return text if len(text) <= 120 else text[:117] + "..."
