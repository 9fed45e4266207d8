"""YAML pipeline specs (:class:`PipelineConfig`) and their runner (:func:`run_pipeline`).

A pipeline spec names everything one filter pass needs, so a job can be reproduced from a file
and run the same way on a laptop, in a container or on a cluster::

    name: seed-tutorial
    source:
      path: demo-data/hagen2d.ome.zarr      # local path or fsspec URL (s3://, gs://, ...)
      axes: null                            # only for plain Zarr/TIFF without axis names
      level: 0                              # OME-Zarr pyramid level
      storage_options:                      # fsspec options; secrets only as ${ENV_VAR}
        endpoint_url: ${AWS_ENDPOINT_URL_S3:-}
    filters:                                # CAREamics PatchFilterConfig fields, one per entry
      - {name: shannon, threshold: 7.5}
    patch_size: [64, 64]
    ref_channel: 0                          # default for every filter that does not set one
    output: null                            # side-car; null = default location
    cluster: {scheduler: null, n_workers: 1, threads_per_worker: 2}
    labels: false
    dataset: {mode: per_epoch, seed: 0, batch_size: 64}

``source`` is a mapping, a plain path string, or a list of mappings (several volumes, one
side-car each; ``output`` then needs a ``{name}`` placeholder). Relative paths are relative to the
working directory.

Environment references
----------------------
String values of ``source.path``, ``storage_options``, ``output``, the mask paths and
``cluster.scheduler`` may contain ``${VAR}`` or ``${VAR:-default}``. They are expanded only when
the pipeline runs, never stored in the config, the side-car or the summary. A storage option
that expands to the empty string is dropped, so ``endpoint_url: ${AWS_ENDPOINT_URL_S3:-}`` works
both against AWS (unset) and against an S3-compatible store. Credential-like storage options
(``key``, ``secret``, ``token``, ``password`` ...) must be environment references; a literal value
is refused (or leave them out: s3fs/botocore read ``AWS_*`` variables and profile files itself).

Overrides
---------
``--set key.path=value`` (CLI) / ``overrides=["key.path=value"]`` sets one value before
validation; the value is parsed as YAML (``--set filters.0.threshold=8`` gives a float,
``--set labels=true`` a bool, ``--set patch_size=[32,32]`` a list). List items are addressed by
index; missing mappings are created.
"""

from __future__ import annotations

import difflib
import logging
import math
import os
import re
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import yaml
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

logger = logging.getLogger(__name__)

__all__ = [
    "ClusterSpec",
    "DatasetSpec",
    "PipelineConfig",
    "SourceSpec",
    "apply_overrides",
    "expand_env",
    "run_pipeline",
]

_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
_SECRET_KEY = re.compile(r"(^key$|secret|token|passw|credential|session|private)", re.I)
_FILTER_TAGS = ("max", "mean_std", "shannon", "mask")


# ----------------------------------------------------------------------------- environment
def expand_env(text: str, where: str, environ: Mapping[str, str] | None = None) -> str:
    """Expand ``${VAR}`` and ``${VAR:-default}`` in ``text``.

    Parameters
    ----------
    text : str
        A spec value.
    where : str
        Its key path (for the error message), e.g. ``"source.storage_options.key"``.
    environ : mapping, optional
        The environment (default ``os.environ``).

    Returns
    -------
    str
        The expanded value.

    Raises
    ------
    ConfigError
        A referenced variable is unset and has no default. The message names the variable and
        the key path, never a value.

    Examples
    --------
    >>> expand_env("${NOPE_UNSET:-http://127.0.0.1:9000}/x", "source.path", {})
    'http://127.0.0.1:9000/x'
    """
    env = os.environ if environ is None else environ

    def sub(m: re.Match[str]) -> str:
        var, default = m.group(1), m.group(2)
        if var in env:
            return env[var]
        if default is not None:
            return default
        raise ConfigError(
            f"{where} references ${{{var}}}, which is not set. Fix: export {var}=... before "
            f"running, or give a default: ${{{var}:-value}}."
        )

    return _ENV_REF.sub(sub, text)


def _env_refs(obj: Any) -> set[str]:
    if isinstance(obj, str):
        return {m.group(1) for m in _ENV_REF.finditer(obj) if m.group(2) is None}
    if isinstance(obj, Mapping):
        return set().union(*(_env_refs(v) for v in obj.values())) if obj else set()
    if isinstance(obj, (list, tuple)):
        return set().union(*(_env_refs(v) for v in obj)) if obj else set()
    return set()


def _expand_options(opts: Mapping[str, Any], where: str) -> dict[str, Any]:
    """Expand env references in nested storage options; drop options that expand to ''."""
    out: dict[str, Any] = {}
    for key, value in opts.items():
        path = f"{where}.{key}"
        if isinstance(value, str):
            value = expand_env(value, path)
            if value == "":
                continue
        elif isinstance(value, Mapping):
            value = _expand_options(value, path)
        out[key] = value
    return out


def _check_no_literal_secrets(opts: Mapping[str, Any], where: str = "") -> None:
    for key, value in opts.items():
        path = f"{where}.{key}" if where else str(key)
        if isinstance(value, Mapping):
            _check_no_literal_secrets(value, path)
        elif isinstance(value, str) and _SECRET_KEY.search(str(key)):
            if not _ENV_REF.fullmatch(value.strip()):
                raise ValueError(
                    f"{path!r} holds a literal credential; specs must not contain secrets. Fix: "
                    f"reference an environment variable ({key}: ${{MY_VAR}}), or leave it out "
                    "and let s3fs/botocore read AWS_* variables or profile files."
                )


def _check_url(url: str) -> None:
    """Refuse ``scheme://user:password@host/...``: credentials belong in the environment."""
    if "://" in url and "@" in url.split("://", 1)[1].split("/", 1)[0]:
        raise ValueError(
            "the URL carries credentials (user:password@); specs must not contain secrets. "
            "Fix: remove them from the URL and give them as ${ENV_VAR} storage_options or "
            "through AWS_* environment variables / profile files."
        )


# ----------------------------------------------------------------------------- models
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


# ----------------------------------------------------------------------------- loading
def _load_yaml(path: str | os.PathLike[str]) -> Any:
    p = Path(path)
    try:
        text = p.read_text()
    except OSError as err:
        raise ConfigError(
            f"spec {str(path)!r} cannot be read ({type(err).__name__}). Fix: check the path, "
            "e.g. pipelines/seed-tutorial.yaml."
        ) from err
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise ConfigError(f"spec {str(path)!r} is not valid YAML: {err}") from err


def apply_overrides(data: Mapping[str, Any], overrides: Iterable[str]) -> dict[str, Any]:
    """Return a copy of ``data`` with ``key.path=value`` overrides applied (values as YAML).

    Raises
    ------
    ConfigError
        Malformed override, or a path through a non-container / list index out of range.

    Examples
    --------
    >>> apply_overrides({"filters": [{"threshold": 7.5}]}, ["filters.0.threshold=8"])
    {'filters': [{'threshold': 8}]}
    """
    import copy

    out = copy.deepcopy(dict(data))
    for item in overrides:
        key, sep, raw = str(item).partition("=")
        key = key.strip()
        if not sep or not key or any(not part for part in key.split(".")):
            raise ConfigError(
                f"--set {item!r} is not key.path=value. Fix: e.g. --set filters.0.threshold=8 "
                "or --set source.path=demo-data/hagen2d.ome.zarr."
            )
        try:
            value = yaml.safe_load(raw) if raw.strip() else None
        except yaml.YAMLError:
            value = raw
        _set_path(out, key.split("."), value, key)
    return out


def _set_path(node: Any, parts: list[str], value: Any, key: str) -> None:
    head, rest = parts[0], parts[1:]
    if isinstance(node, list):
        if not head.lstrip("-").isdigit() or not -len(node) <= int(head) < len(node):
            raise ConfigError(
                f"--set {key}: {head!r} is not an index of a list of {len(node)} item(s). "
                f"Fix: use 0..{len(node) - 1}."
            )
        idx: Any = int(head)
    elif isinstance(node, dict):
        idx = head
        if rest and isinstance(node.get(head), str) and head == "source":
            node[head] = {"path": node[head]}
        if rest and node.get(head) is None:
            node[head] = {}
        if rest and not isinstance(node[head], (dict, list)):
            raise ConfigError(
                f"--set {key}: {head!r} holds a {type(node[head]).__name__}, not a mapping or "
                f"list, so it cannot have {'.'.join(rest)!r}. Fix: set {head}=<value> instead."
            )
    else:  # pragma: no cover - only dicts and lists are descended into

        raise ConfigError(f"--set {key}: cannot descend into a {type(node).__name__} at {head!r}.")
    if rest:
        _set_path(node[idx], rest, value, key)
    else:
        node[idx] = value


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


# ----------------------------------------------------------------------------- running
def _resolved_sources(cfg: PipelineConfig) -> list[dict[str, Any]]:
    from patchsieve.volume import strip_credentials

    out = []
    for i, src in enumerate(cfg.sources):
        where = "source" if len(cfg.sources) == 1 else f"source.{i}"
        path = expand_env(src.path, f"{where}.path")
        try:
            _check_url(path)
        except ValueError as err:
            raise ConfigError(f"{where}.path (after ${{...}} expansion): {err}") from None
        output = src.output if src.output is not None else cfg.output
        if output is not None:
            output = expand_env(output, f"{where}.output").replace("{name}", src.stem)
        out.append({
            "path": path,
            "label": strip_credentials(path),
            "name": src.stem,
            "axes": src.axes,
            "level": src.level,
            "storage_options": _expand_options(src.storage_options, f"{where}.storage_options")
            or None,
            "output": output,
        })
    return out


def _resolved_filters(cfg: PipelineConfig) -> dict[str, Any]:
    out = {}
    for i, (key, f) in enumerate(cfg.filter_configs().items()):
        if f.name == "mask" and isinstance(f.mask, str):
            f = f.model_copy(update={"mask": expand_env(f.mask, f"filters.{i}.mask")})
        out[key] = f
    return out


def _epoch_estimate(cfg: PipelineConfig, sidecars: Sequence[Any],
                    filter_name: str) -> dict[str, Any] | None:
    ds = cfg.dataset
    if ds is None:
        return None
    name = ds.filter or filter_name
    per_epoch = sum(int(sc.sample_totals(name)["n_patches_per_epoch"].sum()) for sc in sidecars)
    n = (ds.epoch_length or per_epoch) if ds.mode == "with_replacement" else per_epoch
    batches = n // ds.batch_size if ds.drop_last else math.ceil(n / ds.batch_size)
    return {**ds.model_dump(mode="json"), "filter": name, "expected_epoch_size": n,
            "batches_per_epoch": batches}


def _summarise(sc: Any) -> dict[str, Any]:
    filters = {}
    for name in sc.filter_names:
        fo = sc.filter_out(name)
        tot = sc.sample_totals(name)
        filters[name] = {
            "regions": int(fo.size),
            "background": int(fo.sum()),
            "background_fraction": float(fo.mean()) if fo.size else 0.0,
            "patches_per_epoch": int(tot["n_patches_per_epoch"].sum()),
        }
    return {"sidecar": sc.path, "source": sc.source, "complete": bool(sc.is_complete),
            "filters": filters}


def _dry_run(cfg: PipelineConfig, spec_label: str) -> dict[str, Any]:
    from patchsieve.volume import strip_credentials

    refs = sorted(_env_refs(cfg.model_dump(mode="json")))
    missing = [v for v in refs if v not in os.environ]
    return {
        "spec": spec_label,
        "name": cfg.name,
        "valid": True,
        "dry_run": True,
        "sources": [strip_credentials(s.path) for s in cfg.sources],
        "filters": {k: v.model_dump(mode="json") for k, v in cfg.filter_configs().items()},
        "patch_size": cfg.patch_size,
        "cluster": cfg.cluster.model_dump(mode="json"),
        "env_required": refs,
        "env_missing": missing,
        "dataset": cfg.dataset.model_dump(mode="json") if cfg.dataset else None,
    }


def run_pipeline(
    spec: str | os.PathLike[str] | Mapping[str, Any] | PipelineConfig,
    overrides: Iterable[str] = (),
    dry_run: bool = False,
    client: Any = None,
    *,
    progress: bool = False,
) -> dict[str, Any]:
    """Validate a pipeline spec and run its filter pass(es).

    Parameters
    ----------
    spec : path, mapping or PipelineConfig
        A YAML file, an already parsed mapping or a validated config.
    overrides : iterable of str
        ``key.path=value`` overrides (YAML-typed values), applied before validation.
    dry_run : bool
        Validate only: report the resolved spec and the environment variables it needs.
    client : distributed.Client, optional
        Run on this client instead of the spec's ``cluster``.
    progress : bool
        Show compute's progress bar.

    Returns
    -------
    dict
        JSON-able summary: ``sidecars`` (paths), ``results`` (per source: side-car, source URL
        without credentials, per-filter regions / background / background_fraction /
        patches_per_epoch, seconds), ``background_fraction`` (per filter, over all sources),
        ``dataset`` (with ``expected_epoch_size``) and ``timings``. Credentials never appear.

    Raises
    ------
    ConfigError
        Invalid spec or override (the message names the key path and the fix), or an unset
        environment variable the spec references.
    PatchsieveError
        Whatever :func:`patchsieve.compute` raises (unreachable scheduler, missing source ...).
    """
    t0 = time.perf_counter()
    if isinstance(spec, PipelineConfig):
        if overrides:
            cfg = PipelineConfig.from_dict(spec.model_dump(), overrides, origin="spec")
        else:
            cfg = spec
        label = "<PipelineConfig>"
    elif isinstance(spec, Mapping):
        cfg, label = PipelineConfig.from_dict(spec, overrides), "<mapping>"
    else:
        cfg, label = PipelineConfig.from_yaml(spec, overrides), str(spec)
    if dry_run:
        return _dry_run(cfg, label)
    sources = _resolved_sources(cfg)
    filters = _resolved_filters(cfg)
    out_opts = None
    if cfg.output_storage_options is not None:
        out_opts = _expand_options(cfg.output_storage_options, "output_storage_options")
    scheduler = expand_env(cfg.cluster.scheduler, "cluster.scheduler") \
        if cfg.cluster.scheduler else None
    results, sidecars = _run_sources(cfg, sources, filters, out_opts, scheduler or None, client,
                                     progress)
    first = next(iter(filters))
    fractions = {}
    for name in filters:
        regions = sum(r["filters"][name]["regions"] for r in results)
        bg = sum(r["filters"][name]["background"] for r in results)
        fractions[name] = bg / regions if regions else 0.0
    total = time.perf_counter() - t0
    return {
        "spec": label,
        "name": cfg.name,
        "sidecars": [r["sidecar"] for r in results],
        "background_fraction": fractions,
        "results": results,
        "dataset": _epoch_estimate(cfg, sidecars, first),
        "cluster": scheduler or ("<client>" if client is not None else "local"),
        "timings": {"total_s": round(total, 3),
                    "compute_s": round(sum(r["seconds"] for r in results), 3)},
    }


def _run_sources(cfg: PipelineConfig, sources: Sequence[Mapping[str, Any]],
                 filters: Mapping[str, Any], out_opts: Mapping[str, Any] | None,
                 scheduler: str | None, client: Any,
                 progress: bool) -> tuple[list[dict[str, Any]], list[Any]]:
    from patchsieve.cluster import get_client
    from patchsieve.compute import compute

    c = cfg.cluster
    results, sidecars = [], []
    local = {} if (client is not None or scheduler) else {
        "n_workers": c.n_workers, "threads_per_worker": c.threads_per_worker,
        "processes": c.processes}
    with get_client(scheduler, client, timeout=c.timeout, **local) as cl:
        for src in sources:
            t = time.perf_counter()
            logger.info("pipeline %s: filtering %s", cfg.name or "", src["label"])
            sc = compute(
                src["path"], filters, cfg.patch_size, src["output"], client=cl,
                overwrite=cfg.overwrite, storage_options=src["storage_options"],
                output_storage_options=out_opts, axes=src["axes"], level=src["level"],
                border=cfg.border, labels=cfg.labels, seed=cfg.seed, progress=progress,
            )
            summary = _summarise(sc)
            summary["name"] = src["name"]
            summary["seconds"] = round(time.perf_counter() - t, 3)
            results.append(summary)
            sidecars.append(sc)
            for name, s in summary["filters"].items():
                logger.info("  %s: %d/%d regions background (%.1f %%)", name, s["background"],
                            s["regions"], 100 * s["background_fraction"])
    return results, sidecars
