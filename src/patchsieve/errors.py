"""Exception and warning classes of patchsieve.

Every error raised on purpose by patchsieve derives from :class:`PatchsieveError`.
Each concrete class also derives from the closest builtin (``ValueError``,
``FileNotFoundError``, ``OSError``, ``ConnectionError``) so callers can catch either.

Messages name the offending parameter, what was expected, what was received and,
when possible, the fix::

    patch_size must have one entry per spatial dim ('y', 'x'); got (64,). Fix: pass e.g. (64, 64).

This module imports nothing from patchsieve.
"""

from __future__ import annotations

__all__ = [
    "AxesError",
    "ClusterError",
    "ConfigError",
    "DataError",
    "PatchsieveDeprecationWarning",
    "PatchsieveError",
    "PatchsieveWarning",
    "SidecarError",
    "SidecarIncompleteError",
    "SidecarLockedError",
    "SidecarMismatchError",
    "StorageError",
    "VolumeError",
    "VolumeNotFoundError",
]


class PatchsieveError(Exception):
    """Base of every patchsieve error."""


class ConfigError(PatchsieveError, ValueError):
    """A parameter or configuration value is invalid (patch size, threshold, coverage, spec key...)."""


class AxesError(ConfigError):
    """An axes string or dimension list is invalid (unknown letter, repeat, order, length)."""


class VolumeError(PatchsieveError, ValueError):
    """A volume cannot be opened as asked: unsupported type, broken metadata, bad level/channel."""


class VolumeNotFoundError(VolumeError, FileNotFoundError):
    """The source path or URL does not exist (or is not reachable)."""


class DataError(PatchsieveError, ValueError):
    """The data itself cannot be filtered: unsupported dtype, NaN/inf, empty, corrupt chunk."""


class StorageError(PatchsieveError, OSError):
    """Reading or writing a store failed permanently (read-only location, disk full, denied)."""


class SidecarError(PatchsieveError):
    """Base of side-car errors."""


class SidecarMismatchError(SidecarError, ValueError):
    """A side-car was built for another source, other parameters or another format version."""


class SidecarIncompleteError(SidecarError, RuntimeError):
    """A side-car is not marked complete: a run was interrupted or is still going."""


class SidecarLockedError(SidecarError, RuntimeError):
    """Another live process holds the side-car's write lock."""


class ClusterError(PatchsieveError, ConnectionError):
    """The Dask scheduler is unreachable or has no workers."""


class PatchsieveWarning(UserWarning):
    """Base of patchsieve warnings (e.g. Shannon entropy on float data, CAREamics quirks)."""


class PatchsieveDeprecationWarning(DeprecationWarning):
    """A public name or parameter will be removed after one release."""
