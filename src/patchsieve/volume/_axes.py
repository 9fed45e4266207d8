"""CAREamics axes strings -> lowercase dim names (private to :mod:`patchsieve.volume`)."""

from __future__ import annotations

from collections.abc import Sequence

from patchsieve.errors import AxesError

CAREAMICS_LETTERS = "STCZYX"


def parse_axes(axes: str | Sequence[str], ndim: int | None = None) -> tuple[str, ...]:
    """Validate a CAREamics-style axes string and return lowercase dim names.

    Parameters
    ----------
    axes : str or sequence of str
        Axes such as ``"SYX"``, ``"ZYX"``, ``"CZYX"``, ``"SCZYX"``, ``"TCZYX"`` (any case), or a
        sequence of one-letter names such as ``("z", "y", "x")``.
    ndim : int, optional
        Number of dimensions of the data the axes describe; checked when given.

    Returns
    -------
    tuple of str
        Lowercase dim names in the order given, e.g. ``("c", "z", "y", "x")``.

    Raises
    ------
    AxesError
        Unknown letter, repeated letter, missing or non-adjacent ``Y``/``X``, wrong length.

    Notes
    -----
    Mirrors ``check_axes_validity`` of CAREamics 0.3.x: letters from ``STCZYX``, no duplicates,
    ``YX`` or ``XY`` adjacent, 2 to 6 letters; any order otherwise.

    Examples
    --------
    >>> parse_axes("SYX")
    ('s', 'y', 'x')
    >>> parse_axes("czyx", ndim=4)
    ('c', 'z', 'y', 'x')
    """
    text = axes_text(axes)
    upper = text.upper()
    unknown = sorted({ch for ch in upper if ch not in CAREAMICS_LETTERS})
    if unknown:
        raise AxesError(
            f"axes={axes!r} contains unknown letter(s) {unknown}; allowed letters are "
            f"{', '.join(CAREAMICS_LETTERS)} (CAREamics convention). Fix: e.g. axes='ZYX'."
        )
    repeated = sorted({ch for ch in upper if upper.count(ch) > 1})
    if repeated:
        raise AxesError(
            f"axes={axes!r} repeats axis {repeated}; each letter may appear once. "
            f"Fix: name every dimension once, e.g. axes='SCZYX'."
        )
    missing = [ch for ch in "YX" if ch not in upper]
    if missing:
        raise AxesError(
            f"axes={axes!r} lacks {' and '.join(missing)}; Y and X are required. "
            f"Fix: include both, e.g. axes='{upper}{''.join(missing)}' if the last dims are YX."
        )
    if "YX" not in upper and "XY" not in upper:
        raise AxesError(
            f"axes={axes!r}: Y and X must be adjacent (CAREamics rule). "
            f"Fix: reorder the data so that Y and X are its last two dims, e.g. axes='ZYX'."
        )
    if ndim is not None and len(upper) != ndim:
        raise AxesError(
            f"axes={axes!r} names {len(upper)} dims but the data has ndim={ndim}. "
            f"Fix: give exactly one letter per dimension."
        )
    return tuple(ch.lower() for ch in upper)


def axes_text(axes: object) -> str:
    """Turn an axes string or a sequence of one-letter names into a string."""
    if isinstance(axes, str):
        text = axes
    elif isinstance(axes, Sequence) and all(isinstance(a, str) and len(a) == 1 for a in axes):
        text = "".join(axes)
    else:
        raise AxesError(
            f"axes must be a string such as 'ZYX' or a sequence of one-letter names; got {axes!r}."
        )
    if not text:
        raise AxesError("axes is empty; Y and X are required. Fix: e.g. axes='YX'.")
    return text


def example_axes(ndim: int) -> str:
    """An example axes string for an error message."""
    return {2: "YX", 3: "ZYX", 4: "CZYX", 5: "SCZYX", 6: "STCZYX"}.get(ndim, "ZYX")

