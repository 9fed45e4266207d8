"""The public API survives the restructuring: every name of the earlier ``patchsieve.__all__``,
every earlier public module path (kept as thin aliases where the code moved), and the deprecated
names, which warn once and keep working."""

from __future__ import annotations

import importlib
import warnings

import numpy as np
import pytest

import patchsieve as ps
from patchsieve.errors import PatchsieveDeprecationWarning

#: ``patchsieve.__all__`` before the restructuring (frozen copy)
EARLIER_ALL = [
    "AxesError", "ClusterError", "ConfigError", "DataError", "MaskPatchFilter",
    "MaskPatchFilterConfig", "MaxPatchFilter", "MaxPatchFilterConfig", "MeanStdPatchFilter",
    "MeanStdPatchFilterConfig", "PatchDataset", "PatchFilter", "PatchFilterConfig", "PatchLoader",
    "PatchsieveError", "PatchsieveWarning", "PipelineConfig", "RandomFlipRotate", "RegionGrid",
    "ShannonPatchFilter", "ShannonPatchFilterConfig", "Sidecar", "SidecarError",
    "SidecarIncompleteError", "SidecarLockedError", "SidecarMismatchError", "StorageError",
    "StratifiedPatching", "VolumeError", "VolumeNotFoundError", "__version__", "compute",
    "create_patch_filter", "decide", "filter_map_from_stats", "normalize_patch_size",
    "open_pyramid", "open_sidecar", "open_volume", "parse_axes", "parse_filter_config",
    "region_stats", "run_pipeline", "stat_names", "validate_training_patch_size",
    "write_demo_data",
]

#: module paths used by the README, docs/, pipelines/, deploy/ and benchmarks/ before the
#: restructuring, with the names imported from them
EARLIER_PATHS = {
    "patchsieve.compute": ["compute", "default_output"],
    "patchsieve.lightning": ["PatchDataModule"],
    "patchsieve.transforms": ["RandomFlipRotate"],
    "patchsieve.volume": ["DIM_ORDER", "open_pyramid", "open_volume", "open_zarr_array",
                          "parse_axes", "strip_credentials"],
    "patchsieve.sidecar": ["FORMAT_VERSION", "Sidecar", "SidecarLock", "is_remote",
                           "open_sidecar", "open_store"],
    "patchsieve.regions": ["filter_map_from_stats", "region_stats"],
    "patchsieve.sampling": ["MODES", "SamplingMode", "StratifiedPatching", "careamics_n_patches",
                            "chunk_groups", "pack_regions", "plan_dtype", "region_areas",
                            "shard_positions", "worker_orders", "worker_positions_from_batches",
                            "zorder_chunk_ids"],
    "patchsieve.dataset": ["PatchDataset", "PatchLoader"],
    "patchsieve.pipeline": ["ClusterSpec", "DatasetSpec", "PipelineConfig", "SourceSpec",
                            "apply_overrides", "expand_env", "run_pipeline"],
    "patchsieve.grid": ["RegionGrid", "normalize_patch_size", "region_chunks",
                        "validate_training_patch_size"],
    "patchsieve.config": ["MaskPatchFilterConfig", "MaxPatchFilterConfig",
                          "MeanStdPatchFilterConfig", "PatchFilterConfig",
                          "ShannonPatchFilterConfig", "mask_sha256", "parse_filter_config"],
    "patchsieve.filters": ["MaskPatchFilter", "MaxPatchFilter", "MeanStdPatchFilter",
                           "PatchFilter", "ShannonPatchFilter", "create_patch_filter",
                           "expand_region_values", "shannon_entropy"],
    "patchsieve.demo": ["DEMO_KINDS", "DEMO_SIZES", "write_demo_data", "write_ome_zarr"],
    "patchsieve.cluster": ["default_cluster_kwargs", "get_client"],
    "patchsieve.errors": ["PatchsieveDeprecationWarning", "PatchsieveError"],
    "patchsieve.plotting": ["plot_filter_map", "plot_meanstd_filter_map", "select_slice"],
    "patchsieve.cli": ["app", "main"],
}

#: ``patchsieve.inspect`` (deprecated alias of ``patchsieve.analysis``)
EARLIER_INSPECT = [
    "RegionGridGeometry", "ThresholdSuggestion", "apply_threshold", "decisions_at",
    "decisions_at_level0", "find_level_sidecars", "level0_geometry", "level_agreement",
    "level_patch_size", "plot_filter_maps", "plot_preview", "plot_threshold_histogram",
    "preview_patches", "region_index_map", "sidecar_nbytes", "suggest_threshold", "summarize",
    "threshold_field",
]


@pytest.mark.parametrize("name", EARLIER_ALL)
def test_every_earlier_public_name_is_still_there(name: str) -> None:
    assert name in ps.__all__
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PatchsieveDeprecationWarning)
        assert getattr(ps, name) is not None


def test_compute_stays_the_function_after_the_alias_module_is_imported() -> None:
    alias = importlib.import_module("patchsieve.compute")
    from patchsieve.compute import compute
    from patchsieve.filterpass import compute as moved

    assert ps.compute is compute is moved and callable(ps.compute)
    assert alias.__name__ == "patchsieve.compute"


@pytest.mark.parametrize(("path", "names"), sorted(EARLIER_PATHS.items()))
def test_every_earlier_module_path_imports(path: str, names: list[str]) -> None:
    module = importlib.import_module(path)
    missing = [n for n in names if not hasattr(module, n)]
    assert not missing, f"{path} lacks {missing}"


def test_moved_classes_are_the_same_objects() -> None:
    from patchsieve.dataset.lightning import PatchDataModule
    from patchsieve.dataset.transforms import RandomFlipRotate
    from patchsieve.lightning import PatchDataModule as old_module
    from patchsieve.transforms import RandomFlipRotate as old_transform

    assert old_module is PatchDataModule and old_transform is RandomFlipRotate


@pytest.mark.parametrize("name", EARLIER_INSPECT)
def test_patchsieve_inspect_warns_and_serves_analysis(name: str) -> None:
    inspect_alias = importlib.import_module("patchsieve.inspect")
    with pytest.warns(PatchsieveDeprecationWarning, match="patchsieve.analysis"):
        value = getattr(inspect_alias, name)
    if name == "RegionGridGeometry":
        from patchsieve.grid import VolumeGeometry

        assert value is VolumeGeometry
    else:
        assert value is getattr(importlib.import_module("patchsieve.analysis"), name)


def test_renamed_functions_warn_and_give_the_same_result() -> None:
    cfg = ps.ShannonPatchFilterConfig(threshold=2.0)
    stats = {"entropy": np.array([[1.0, 2.0, 3.0]])}
    with pytest.warns(PatchsieveDeprecationWarning, match="filter_out_from_stats"):
        old = ps.decide(cfg, stats)
    np.testing.assert_array_equal(old, ps.filter_out_from_stats(cfg, stats))
    with pytest.warns(PatchsieveDeprecationWarning, match="required_stats"):
        assert ps.stat_names(cfg, 2) == ps.required_stats(cfg, 2) == ["entropy"]
