"""Names of the side-car format (version 1): constants, array keys, attrs helpers.

The layout is documented in ``docs/sidecar-format.md``; every key the reader, the writer and
the tools use is spelled here once.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
from typing import Any

FORMAT_NAME = "patchsieve-sidecar"
FORMAT_VERSION = 1
SUFFIX = ".patchsieve.zarr"
LOCK_NAME = "patchsieve.lock"
WRITE_PROBE = ".patchsieve-write-probe"
#: a lock whose heartbeat is older than this is stale (seconds); the writer refreshes it per flush
LOCK_STALE_AFTER = 600.0
#: what one block marker of ``progress/`` stands for (attrs key ``block_grid``): one source chunk
#: (all channels). Side-cars begun before it was recorded had other blocks; their markers are
#: dropped when such a side-car is resumed (the missing blocks are computed again, completely).
BLOCK_GRID = "source-chunks"

#: per-sample totals stored under ``decisions/<filter>/``
SAMPLE_TOTALS: tuple[str, ...] = ("n_regions", "n_background", "weight_sum",
                                  "n_patches_per_epoch")

# per-cell partial sums (float64, ``(n_channels, *sample_shape, *cell_shape)`` for sum/sumsq,
# ``(*sample_shape, *cell_shape)`` for the reference channel's and the mask's partials)
CELL_SUM = "cells/sum"
CELL_SUMSQ = "cells/sumsq"
CELL_REF_SUM = "cells/ref_sum"
CELL_REF_M2 = "cells/ref_m2"
CELL_MASK_NONZERO = "cells/mask_nonzero"


def stats_key(stat: str) -> str:
    """Array key of a region statistic, e.g. ``"stats/entropy"``."""
    return f"stats/{stat}"


def decision_key(filter_name: str, what: str) -> str:
    """Array key of a filter's decisions: ``what`` is ``filter_out``, ``weight`` or a total.

    Examples
    --------
    >>> decision_key("shannon", "weight")
    'decisions/shannon/weight'
    """
    return f"decisions/{filter_name}/{what}"


def progress_key(name: str) -> str:
    """Array key of a resume log (block markers), e.g. ``"progress/cells"``."""
    return f"progress/{name}"


def now() -> str:
    """The current UTC time as an ISO 8601 string (seconds)."""
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def canonical_hash(obj: Any) -> str:
    """sha256 of the canonical JSON of ``obj`` (sorted keys), hex, 32 chars.

    Examples
    --------
    >>> canonical_hash({"b": 1, "a": 2}) == canonical_hash({"a": 2, "b": 1})
    True
    """
    blob = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:32]


def config_attrs(config: Any) -> dict[str, Any]:
    """A filter config as stored under ``attrs["patchsieve"]["filters"]`` (JSON; an in-memory
    mask array is left out, its SHA-256 stays)."""
    if config.name == "mask":
        return dict(config.model_dump(mode="json", exclude={"mask"}))
    return dict(config.model_dump(mode="json"))


def jsonable(x: Any) -> Any:
    """``x`` if it serialises as JSON, else its JSON round trip with ``str`` for the rest."""
    try:
        json.dumps(x)
        return x
    except TypeError:
        return json.loads(json.dumps(x, default=str))
