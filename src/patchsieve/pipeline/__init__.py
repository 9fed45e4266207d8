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

Modules: ``_env`` (environment references, YAML, overrides), ``_spec`` (the models and their
error messages), ``_run`` (:func:`run_pipeline`).
"""

from __future__ import annotations

from patchsieve.pipeline._env import apply_overrides, expand_env
from patchsieve.pipeline._run import run_pipeline
from patchsieve.pipeline._spec import ClusterSpec, DatasetSpec, PipelineConfig, SourceSpec

__all__ = [
    "ClusterSpec",
    "DatasetSpec",
    "PipelineConfig",
    "SourceSpec",
    "apply_overrides",
    "expand_env",
    "run_pipeline",
]
