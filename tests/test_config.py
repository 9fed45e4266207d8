"""Filter configs: CAREamics names/fields, validation, the one coverage rule, JSON round trip."""

from __future__ import annotations

import numpy as np
import pytest

from patchsieve.config import (
    MaskPatchFilterConfig,
    MaxPatchFilterConfig,
    MeanStdPatchFilterConfig,
    ShannonPatchFilterConfig,
    mask_sha256,
    parse_filter_config,
    resolve_coverage,
)
from patchsieve.errors import ConfigError

NAN = float("nan")


@pytest.mark.parametrize(
    ("cls", "kwargs", "match"),
    [
        (MaxPatchFilterConfig, {}, "threshold"),
        (MaxPatchFilterConfig, {"threshold": NAN}, "threshold"),
        (MaxPatchFilterConfig, {"threshold": 1.0, "coverage": 1.5}, "coverage"),
        (MaxPatchFilterConfig, {"threshold": 1.0, "coverage": -0.1}, "coverage"),
        (MaxPatchFilterConfig, {"threshold": 1.0, "coverage": NAN}, "coverage"),
        (MaxPatchFilterConfig, {"threshold": 1.0, "filtered_patch_prob": 1.1},
         "filtered_patch_prob"),
        (MaxPatchFilterConfig, {"threshold": 1.0, "filtered_patch_prob": -0.5},
         "filtered_patch_prob"),
        (MaxPatchFilterConfig, {"threshold": 1.0, "ref_channel": -1}, "ref_channel"),
        (MaxPatchFilterConfig, {"threshold": 1.0, "bogus": 1}, "bogus"),
        (MeanStdPatchFilterConfig, {}, "mean_threshold"),
        (MeanStdPatchFilterConfig, {"mean_threshold": -1.0}, "mean_threshold"),
        (MeanStdPatchFilterConfig, {"mean_threshold": NAN}, "mean_threshold"),
        (MeanStdPatchFilterConfig, {"mean_threshold": 1.0, "std_threshold": NAN},
         "std_threshold"),
        (ShannonPatchFilterConfig, {}, "threshold"),
        (ShannonPatchFilterConfig, {"threshold": NAN}, "threshold"),
        (ShannonPatchFilterConfig, {"threshold": float("inf")}, "threshold"),
        (MaskPatchFilterConfig, {"coverage": 2.0}, "coverage"),
        (MaskPatchFilterConfig, {"mask": np.zeros(0)}, "mask"),
        (MaskPatchFilterConfig, {"mask": np.array(["a"])}, "mask"),
    ],
)
def test_bad_config_values(cls, kwargs, match):
    with pytest.raises(ConfigError, match=match):
        cls(**kwargs)


def test_names_and_defaults_mirror_careamics():
    assert MaxPatchFilterConfig(threshold=1.0).name == "max"
    assert MeanStdPatchFilterConfig(mean_threshold=1.0).name == "mean_std"
    assert ShannonPatchFilterConfig(threshold=7.5).name == "shannon"
    m = MaskPatchFilterConfig()
    assert (m.name, m.coverage, m.ref_channel, m.filtered_patch_prob) == ("mask", 0.25, 0, 0.1)
    assert MeanStdPatchFilterConfig(mean_threshold=1.0).std_threshold is None


@pytest.mark.parametrize(("cov", "ndim", "expected"),
                         [(None, 2, 0.25), (None, 3, 0.125), (0.25, 3, 0.25), (0.5, 2, 0.5)])
def test_one_coverage_rule(cov, ndim, expected):
    assert MaxPatchFilterConfig(threshold=0.0, coverage=cov).resolved_coverage(ndim) == expected
    assert resolve_coverage(cov, ndim) == expected


def test_resolve_coverage_errors():
    with pytest.raises(ConfigError, match="ndim"):
        resolve_coverage(None, 4)
    with pytest.raises(ConfigError, match="coverage"):
        resolve_coverage(1.2, 2)


@pytest.mark.parametrize(
    "cfg",
    [
        MaxPatchFilterConfig(threshold=300.0),
        MaxPatchFilterConfig(threshold=300.0, coverage=0.5, ref_channel=1),
        MeanStdPatchFilterConfig(mean_threshold=150.0, std_threshold=50.0),
        ShannonPatchFilterConfig(threshold=7.5, filtered_patch_prob=0.0),
        MaskPatchFilterConfig(coverage=0.3, mask="s3://bucket/mask.zarr"),
    ],
)
def test_json_round_trip(cfg):
    dumped = cfg.model_dump(mode="json")
    assert parse_filter_config(dumped) == cfg
    assert type(cfg).model_validate_json(cfg.model_dump_json()) == cfg


def test_array_mask_is_hashed_not_serialised():
    mask = np.zeros((8, 8), bool)
    mask[:4] = True
    cfg = MaskPatchFilterConfig(mask=mask)
    dumped = cfg.model_dump(mode="json")
    assert dumped["mask"] is None
    assert dumped["mask_sha256"] == mask_sha256(mask)
    again = parse_filter_config(dumped)
    assert again.mask is None and again.mask_sha256 == cfg.mask_sha256
    # giving the array back with its hash validates; another array does not
    MaskPatchFilterConfig(mask=mask, mask_sha256=cfg.mask_sha256)
    with pytest.raises(ConfigError, match="mask_sha256"):
        MaskPatchFilterConfig(mask=~mask, mask_sha256=cfg.mask_sha256)


def test_parse_filter_config_errors():
    with pytest.raises(ConfigError, match="invalid patch filter config"):
        parse_filter_config({"name": "median", "threshold": 1})
    with pytest.raises(ConfigError):
        parse_filter_config({"name": "shannon"})


def test_configs_are_frozen():
    cfg = ShannonPatchFilterConfig(threshold=7.5)
    with pytest.raises(Exception):  # noqa: B017 - pydantic's frozen error
        cfg.threshold = 1.0  # type: ignore[misc]
