"""The one store and URL layer: what is remote, where a local path is, how a store is opened.

Every module of patchsieve that touches storage goes through these functions (re-exported by
:mod:`patchsieve.volume`): a local path and a ``file://`` URL are local; any other
``protocol://`` URL is opened with fsspec (``s3://``, ``gs://``, ``memory://``...), with
credentials only in ``storage_options`` (never in the URL, never stored). It imports zarr and
fsspec only (no dask, no xarray), so DataLoader workers that re-open stores stay light.
"""

from __future__ import annotations

import os
import re
import urllib.parse
from collections.abc import Mapping
from typing import Any

import zarr
from zarr.abc.store import Store

from patchsieve.errors import StorageError, VolumeError, VolumeNotFoundError

_SECRET_QUERY = re.compile(
    r"(key|secret|token|passw|pwd|signature|sig|credential|auth|session|x-amz-)", re.IGNORECASE
)


def strip_credentials(url: str) -> str:
    """Remove ``user:password@`` and secret-looking query parameters from a URL.

    Parameters
    ----------
    url : str
        A path or URL.

    Returns
    -------
    str
        The URL without credentials (paths are returned unchanged).

    Examples
    --------
    >>> strip_credentials("s3://AKIA:s3cr3t@bucket/img.zarr?token=abc&version=2")
    's3://bucket/img.zarr?version=2'
    """
    if "://" not in url:
        return url
    parts = urllib.parse.urlsplit(url)
    netloc = parts.netloc.rsplit("@", 1)[-1]
    query = [
        (k, v)
        for k, v in urllib.parse.parse_qsl(parts.query, keep_blank_values=True)
        if not _SECRET_QUERY.search(k)
    ]
    return urllib.parse.urlunsplit(
        (parts.scheme, netloc, parts.path, urllib.parse.urlencode(query), parts.fragment)
    )


def split_url(source: str) -> tuple[str | None, str]:
    """Return ``(protocol, rest)``; protocol is None for local paths and ``file://`` URLs.

    Examples
    --------
    >>> split_url("s3://bucket/a.zarr"), split_url("file:///tmp/a%20b.zarr")
    (('s3', 'bucket/a.zarr'), (None, '/tmp/a b.zarr'))
    """
    if "://" not in source:
        return None, source
    protocol, rest = source.split("://", 1)
    if protocol == "file":
        return None, urllib.parse.unquote(urllib.parse.urlsplit(source).path)
    return protocol, rest


def is_remote(path: str | os.PathLike[str]) -> bool:
    """True for an fsspec URL other than a local ``file://`` one.

    Examples
    --------
    >>> is_remote("s3://bucket/a.zarr"), is_remote("file:///tmp/a.zarr"), is_remote("a.zarr")
    (True, False, False)
    """
    return split_url(os.fspath(path))[0] is not None


def local_path(path: str | os.PathLike[str]) -> str:
    """The file-system path of a local path or ``file://`` URL (a remote URL is returned as is)."""
    text = os.fspath(path)
    protocol, rest = split_url(text)
    return rest if protocol is None else text


def same_location(a: str | os.PathLike[str], b: str | os.PathLike[str]) -> bool:
    """Whether two paths or URLs name the same location (local paths resolved)."""
    def norm(x: str | os.PathLike[str]) -> str:
        text = os.fspath(x).rstrip("/")
        return text if is_remote(text) else os.path.realpath(local_path(text))

    return norm(a) == norm(b)


def open_store(
    path: str | os.PathLike[str],
    *,
    storage_options: Mapping[str, Any] | None = None,
    read_only: bool = True,
) -> Store:
    """A zarr store for a local path or an fsspec URL (credentials only in ``storage_options``).

    Unlike :func:`source_store` nothing is checked: the location may not exist yet (outputs).
    """
    text = os.fspath(path)
    if is_remote(text):
        return zarr.storage.FsspecStore.from_url(
            text, storage_options=dict(storage_options or {}), read_only=read_only)
    return zarr.storage.LocalStore(local_path(text), read_only=read_only)


def source_store(source: str, storage_options: Mapping[str, Any] | None) -> Store:
    """A read-only zarr store for a local path or fsspec URL; missing paths raise."""
    protocol, path = split_url(source)
    if protocol is None:
        if not os.path.exists(path):
            raise VolumeNotFoundError(
                f"source={strip_credentials(source)!r} does not exist. "
                f"Fix: check the path (cwd is {os.getcwd()!r})."
            )
        return zarr.storage.LocalStore(path, read_only=True)
    if "@" in urllib.parse.urlsplit(source).netloc:
        raise VolumeError(
            f"source={strip_credentials(source)!r} carries credentials in the URL (user:secret@). "
            "Fix: remove them from the URL and pass them in storage_options (e.g. {'key': ..., "
            "'secret': ...}), the environment or a profile file."
        )
    try:
        return zarr.storage.FsspecStore.from_url(
            source, storage_options=dict(storage_options or {}), read_only=True
        )
    except (ImportError, ValueError) as err:
        raise VolumeError(
            f"source={strip_credentials(source)!r}: cannot open an fsspec store for protocol "
            f"{protocol!r} ({err}). Fix: install the fsspec backend (e.g. s3fs) and check "
            f"storage_options."
        ) from err


def is_connection_error(err: BaseException) -> bool:
    """True for the connection failures of fsspec backends (botocore, aiohttp) and the OS."""
    if isinstance(err, (ConnectionError, TimeoutError)):
        return True
    names = {c.__name__ for c in type(err).__mro__}
    return bool(names & {"EndpointConnectionError", "ConnectTimeoutError", "ClientConnectorError",
                         "ClientConnectionError", "ServerTimeoutError", "ConnectionClosedError"})


def open_zarr_node(store: Store | str, path: str, label: str) -> zarr.Array | zarr.Group:
    """Open the zarr node at ``path`` read-only, mapping 'not found' to VolumeNotFoundError."""
    where = f"{label}/{path}" if path else label
    try:
        return zarr.open(store, mode="r", path=path)
    except FileNotFoundError as err:  # zarr's NodeNotFoundError, fsspec/s3fs missing keys
        raise VolumeNotFoundError(
            f"source={where!r} holds no Zarr array or group (no zarr.json/.zarray/.zgroup). "
            f"Fix: check the path or URL and storage_options."
        ) from err
    except Exception as err:  # noqa: BLE001 - backend errors are mapped or re-raised
        if is_connection_error(err):
            raise VolumeNotFoundError(
                f"source={where!r} is not reachable ({type(err).__name__}). Fix: check the URL, "
                "endpoint_url and network."
            ) from None
        if isinstance(err, OSError):  # denied / wrong credentials
            raise StorageError(
                f"reading the metadata object {where.rstrip('/')}/zarr.json (or .zgroup/.zarray) "
                f"failed: {type(err).__name__} (access denied or wrong credentials). Fix: check "
                "the credentials in storage_options / the environment, the endpoint_url and the "
                "bucket policy."
            ) from None
        raise


def open_zarr_array(
    url_or_store: str | os.PathLike[str] | Store,
    path: str = "",
    *,
    storage_options: Mapping[str, Any] | None = None,
) -> zarr.Array:
    """Open one zarr array read-only (used by dataset workers to re-open lazily).

    Parameters
    ----------
    url_or_store : str, path-like or zarr store
        Local path, fsspec URL or store.
    path : str
        Array path inside the store (e.g. ``"s0"``), ``""`` for a root array.
    storage_options : mapping, optional
        fsspec options (credentials, ``endpoint_url`` ...) for URLs.

    Returns
    -------
    zarr.Array
        A read-only array; no chunk is read.

    Raises
    ------
    VolumeNotFoundError
        Nothing exists at the location.
    VolumeError
        The node is a group, not an array.
    """
    if isinstance(url_or_store, Store):
        store, label = url_or_store, "<zarr store>"
    else:
        text = os.fspath(url_or_store)
        store, label = source_store(text, storage_options), strip_credentials(text)
    node = open_zarr_node(store, path, label)
    if not isinstance(node, zarr.Array):
        raise VolumeError(
            f"path={path!r} in {label!r} is a Zarr group, not an array. "
            f"Fix: pass the array path, e.g. path='s0'."
        )
    return node



# ----------------------------------------------------------------------------- raw keys
def read_key(store: Store, key: str) -> bytes | None:
    """The bytes stored under ``key``, or None when absent."""
    from zarr.core.buffer import default_buffer_prototype
    from zarr.core.sync import sync

    buf = sync(store.get(key, prototype=default_buffer_prototype()))
    return None if buf is None else buf.to_bytes()


def write_key(store: Store, key: str, value: bytes) -> None:
    """Store ``value`` under ``key`` (atomic on local and object stores)."""
    from zarr.core.buffer import default_buffer_prototype
    from zarr.core.sync import sync

    sync(store.set(key, default_buffer_prototype().buffer.from_bytes(value)))


def write_key_if_absent(store: Store, key: str, value: bytes) -> bool:
    """Create ``key`` only if absent (atomic where the store supports it); True if created."""
    from zarr.core.buffer import default_buffer_prototype
    from zarr.core.sync import sync

    buf = default_buffer_prototype().buffer.from_bytes(value)
    try:
        sync(store.set_if_not_exists(key, buf))
    except (NotImplementedError, AttributeError):  # a store without conditional writes
        if read_key(store, key) is not None:
            return False
        write_key(store, key, value)
    return read_key(store, key) == value


def delete_key(store: Store, key: str) -> None:
    """Delete ``key`` (no error when absent)."""
    from zarr.core.sync import sync

    sync(store.delete(key))


def list_keys(store: Store) -> list[str]:
    """Every key of ``store`` (an empty list for a location that does not exist)."""
    from zarr.core.sync import sync

    async def collect() -> list[str]:
        return [k async for k in store.list()]

    try:
        return sync(collect())
    except FileNotFoundError:
        return []


def safe_message(err: BaseException) -> str:
    """First line of an error message, capped (never includes storage options)."""
    return str(err).splitlines()[0][:200] if str(err) else ""
