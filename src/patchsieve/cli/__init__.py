"""The ``patchsieve`` command line (typer). Commands parse, set up logging and delegate.

Modules: ``_app`` (the app, logging, ``compute``, ``demo-data``, ``demo``, ``run``,
``sample``), ``thresholds`` (``inspect``, ``plot``, ``suggest-threshold``, ``preview``),
``_options`` (option parsing shared by the commands), ``_demo_job`` (what ``make demo`` runs).
``PATCHSIEVE_*`` environment variables are read here only.
"""

from __future__ import annotations

from patchsieve.cli._app import app, main

__all__ = ["app", "main"]
