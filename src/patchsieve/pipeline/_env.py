"""Environment references, URL checks, YAML loading and ``--set`` overrides of pipeline specs
(private to :mod:`patchsieve.pipeline`)."""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml

from patchsieve.errors import ConfigError

_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
_SECRET_KEY = re.compile(r"(^key$|secret|token|passw|credential|session|private)", re.I)


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
