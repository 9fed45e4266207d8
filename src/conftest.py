"""Doctest collection of the package (``pytest`` runs ``--doctest-modules`` on ``src``).

Modules whose optional extra is missing are left out of collection instead of failing, and the
``python -m patchsieve.cli`` entry point is never imported (it would run the app).
"""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest

collect_ignore = [
    "conftest.py",  # conftest modules are not doctest modules (their names clash)
    "patchsieve/cli/__main__.py",  # the entry point: importing it runs the app
    "patchsieve/inspect.py",  # the deprecated alias: collecting it would warn for every name
]

_EXTRAS = {
    "torch": ["patchsieve/dataset", "patchsieve/transforms.py", "patchsieve/analysis/preview.py"],
    "lightning": ["patchsieve/dataset/lightning.py", "patchsieve/lightning.py"],
    "typer": ["patchsieve/cli"],
    "matplotlib": ["patchsieve/plotting.py"],
}
for _module, _paths in _EXTRAS.items():
    if importlib.util.find_spec(_module) is None:
        collect_ignore += _paths


@pytest.fixture(autouse=True)
def _doctest_numpy(doctest_namespace: dict[str, object]) -> None:
    """Examples may use ``np`` without importing it (numpydoc convention)."""
    doctest_namespace["np"] = np
