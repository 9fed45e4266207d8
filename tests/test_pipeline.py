"""YAML pipeline specs (patchsieve.pipeline): every shipped spec validates and runs on demo data."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import yaml

from patchsieve.errors import ConfigError, PatchsieveError
from patchsieve.pipeline import PipelineConfig, apply_overrides, expand_env, run_pipeline

REPO = Path(__file__).resolve().parents[1]
SPECS = sorted((REPO / "pipelines").glob("*.yaml"))
REQUIRED = {"seed-tutorial.yaml", "3d-multichannel.yaml", "mask-filter.yaml", "s3-source.yaml"}
BASE = {
    "source": {"path": "demo-data/hagen2d.ome.zarr"},
    "filters": [{"name": "shannon", "threshold": 7.5}],
    "patch_size": [64, 64],
}


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    from patchsieve.demo import write_demo_data

    return write_demo_data(tmp_path_factory.mktemp("demo"), size="small")


@pytest.fixture(scope="module")
def client():
    from distributed import Client, LocalCluster

    with LocalCluster(n_workers=1, threads_per_worker=2, processes=False,
                      dashboard_address=None) as cl, Client(cl, set_as_default=False) as c:
        yield c


def _local_overrides(spec: Path, demo: dict, out: Path) -> list[str]:
    """Point a shipped spec's demo-data paths at the small demo data in a tmp dir."""
    raw = yaml.safe_load(spec.read_text())
    src = raw["source"]["path"] if isinstance(raw["source"], dict) else raw["source"]
    name = Path(src).name.removesuffix(".ome.zarr")
    sets = [f"source.path={demo[name]}", f"output={out / (spec.stem + '.patchsieve.zarr')}"]
    for i, f in enumerate(raw["filters"]):
        if f["name"] == "mask":
            sets.append(f"filters.{i}.mask={demo[Path(f['mask']).name.removesuffix('.ome.zarr')]}")
    return sets


# ----------------------------------------------------------------------------- shipped specs
def test_required_specs_are_shipped():
    assert REQUIRED <= {p.name for p in SPECS}


@pytest.mark.parametrize("spec", SPECS, ids=lambda p: p.name)
def test_shipped_spec_validates(spec):
    cfg = PipelineConfig.from_yaml(spec)
    assert cfg.sources and cfg.filters
    assert "demo-data/" in cfg.sources[0].path or cfg.sources[0].path.startswith("s3://")
    # no literal credentials anywhere in a shipped spec
    text = spec.read_text().lower()
    for word in ("aws_secret_access_key:", "secret: '", 'secret: "', "password:"):
        assert word not in text


def test_shipped_specs_match_the_issue():
    seed = PipelineConfig.from_yaml(REPO / "pipelines/seed-tutorial.yaml")
    assert seed.filters[0].name == "shannon" and seed.filters[0].threshold == 7.5
    assert seed.patch_size == [64, 64]
    multi = PipelineConfig.from_yaml(REPO / "pipelines/3d-multichannel.yaml")
    assert multi.patch_size == [16, 64, 64]
    assert {f.ref_channel for f in multi.filters} == {1}
    mask = PipelineConfig.from_yaml(REPO / "pipelines/mask-filter.yaml")
    assert mask.filters[0].name == "mask" and mask.filters[0].mask.endswith(".zarr")
    s3 = PipelineConfig.from_yaml(REPO / "pipelines/s3-source.yaml")
    assert s3.sources[0].path.startswith("s3://")
    assert "${AWS_ENDPOINT_URL_S3" in s3.sources[0].storage_options["endpoint_url"]


@pytest.mark.cluster
@pytest.mark.parametrize("name", ["seed-tutorial", "3d-multichannel", "mask-filter"])
def test_shipped_spec_runs_on_demo_data(name, demo, client, tmp_path):
    from patchsieve import open_sidecar

    spec = REPO / "pipelines" / f"{name}.yaml"
    result = run_pipeline(spec, overrides=_local_overrides(spec, demo, tmp_path), client=client)
    assert result["name"] == name
    [path] = result["sidecars"]
    assert path == str(tmp_path / f"{name}.patchsieve.zarr")
    sc = open_sidecar(path)
    assert sc.is_complete
    cfg = PipelineConfig.from_yaml(spec)
    assert sc.filter_names == list(cfg.filter_configs())
    for fname, frac in result["background_fraction"].items():
        assert frac == pytest.approx(float(sc.filter_out(fname).mean()))
        assert result["results"][0]["filters"][fname]["regions"] == sc.filter_out(fname).size
    ds = result["dataset"]
    per_epoch = int(sc.sample_totals(ds["filter"])["n_patches_per_epoch"].sum())
    expected = ds["epoch_length"] if ds["mode"] == "with_replacement" else per_epoch
    assert ds["expected_epoch_size"] == expected
    assert ds["batches_per_epoch"] == math.ceil(expected / ds["batch_size"])
    assert result["timings"]["total_s"] >= result["timings"]["compute_s"] > 0
    json.dumps(result)  # the summary is JSON-able


@pytest.mark.cluster
def test_seed_spec_matches_direct_compute(demo, client, tmp_path):
    from patchsieve.compute import compute
    from patchsieve.config import ShannonPatchFilterConfig

    spec = REPO / "pipelines/seed-tutorial.yaml"
    result = run_pipeline(spec, overrides=_local_overrides(spec, demo, tmp_path), client=client)
    direct = compute(demo["hagen2d"], [ShannonPatchFilterConfig(threshold=7.5)], (64, 64),
                     tmp_path / "direct.zarr", client=client)
    fo = direct.filter_out("shannon")
    assert 0 < fo.mean() < 1  # the demo data has both structure and background
    assert result["background_fraction"]["shannon"] == pytest.approx(float(fo.mean()))


@pytest.mark.s3
@pytest.mark.cluster
def test_s3_spec_runs_against_s3(demo, client, s3_bucket, monkeypatch):
    """The shipped S3 spec, unmodified: bucket, endpoint and credentials from the environment."""
    from patchsieve import open_sidecar

    s3_bucket.fs.put(demo["hagen2d"], f"{s3_bucket.name}/hagen2d.ome.zarr", recursive=True)
    opts = s3_bucket.storage_options
    monkeypatch.setenv("PATCHSIEVE_BUCKET", s3_bucket.name)
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", opts["endpoint_url"])
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", opts["key"])
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", opts["secret"])
    result = run_pipeline(REPO / "pipelines/s3-source.yaml", client=client)
    [path] = result["sidecars"]
    assert path == f"s3://{s3_bucket.name}/hagen2d.patchsieve.zarr"  # default: beside the source
    sc = open_sidecar(path, storage_options=opts)
    assert sc.is_complete and sc.source == f"s3://{s3_bucket.name}/hagen2d.ome.zarr"
    assert result["background_fraction"]["shannon"] == pytest.approx(
        float(sc.filter_out("shannon").mean()))


@pytest.mark.cluster
def test_several_sources_one_sidecar_each(demo, client, tmp_path):
    spec = {
        **BASE,
        "source": [{"path": demo["hagen2d"], "name": "a"}, {"path": demo["hagen2d"], "name": "b"}],
        "output": str(tmp_path / "{name}.patchsieve.zarr"),
        "dataset": {"mode": "per_epoch", "batch_size": 4},
    }
    result = run_pipeline(spec, client=client)
    assert result["sidecars"] == [str(tmp_path / "a.patchsieve.zarr"),
                                  str(tmp_path / "b.patchsieve.zarr")]
    a, b = (r["filters"]["shannon"] for r in result["results"])
    assert a == b
    assert result["dataset"]["expected_epoch_size"] == 2 * a["patches_per_epoch"]


# ----------------------------------------------------------------------------- the CLI
def _cli(args):
    from typer.testing import CliRunner

    from patchsieve.cli import app

    return CliRunner().invoke(app, args)


@pytest.mark.parametrize("spec", SPECS, ids=lambda p: p.name)
def test_cli_dry_run(spec):
    res = _cli(["run", str(spec), "--dry-run", "--json"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    assert out["valid"] and out["dry_run"]
    assert out["filters"]


@pytest.mark.cluster
def test_cli_run_with_overrides(demo, tmp_path):
    spec = REPO / "pipelines/seed-tutorial.yaml"
    args = ["run", str(spec), "--json", "--set", "cluster.n_workers=1",
            "--set", "cluster.threads_per_worker=2", "--set", "filters.0.threshold=8.0"]
    for item in _local_overrides(spec, demo, tmp_path):
        args += ["--set", item]
    res = _cli(args)
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout[res.stdout.index("{"):])
    from patchsieve import open_sidecar

    sc = open_sidecar(out["sidecars"][0])
    assert sc.config("shannon").threshold == 8.0


def test_cli_bad_spec_names_key_path(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({**BASE, "filters": [{"name": "shannon", "threshold": "high"}]}))
    res = _cli(["run", str(bad), "--dry-run"])
    assert res.exit_code == 2
    assert "filters.0.threshold" in res.output and "Fix" in res.output


# ----------------------------------------------------------------------------- bad specs
BAD = [
    # (override or replacement, key path in the message, fix hint in the message)
    ({"colour": "red"}, "colour: unknown key 'colour'", "remove it"),
    ({"filters": [{"name": "shannon", "treshold": 7.5}]}, "filters.0.treshold",
     "rename it to 'threshold'"),
    ({"source": {"path": "x.zarr", "leve": 1}}, "source.leve", "rename it to 'level'"),
    ({"filters": [{"name": "shannon", "threshold": "high"}]}, "filters.0.threshold",
     "expected type"),
    ({"filters": [{"name": "max", "threshold": 1, "coverage": 2}]}, "filters.0.coverage",
     "less than or equal to 1"),
    ({"filters": [{"name": "entropy", "threshold": 1}]}, "filters.0", "must be one of"),
    ({"filters": []}, "filters", "at least 1"),
    ({"patch_size": "sixty-four"}, "patch_size", "expected type"),
    ({"patch_size": [64]}, "patch_size", "Fix"),
    ({"cluster": {"n_workers": 0}}, "cluster.n_workers", "greater than or equal to 1"),
    ({"cluster": {"scheduler": "tcp://h:1", "n_workers": 2}}, "cluster", "Fix: remove"),
    ({"cluster": {"scheduler": "localhost"}}, "cluster", "tcp://HOST:PORT"),
    ({"dataset": {"mode": "random"}}, "dataset.mode", "per_epoch"),
    ({"dataset": {"epoch_length": 10}}, "dataset", "with_replacement"),
    ({"source": {"path": "s3://b/x", "storage_options": {"secret": "hunter2"}}},
     "source.storage_options", "environment variable"),
    ({"source": "s3://AKIAX:hunter2@bucket/v.zarr"}, "source.path", "remove them from the URL"),
    ({"output": "s3://u:hunter2@bucket/o.zarr"}, "output", "user:password@"),
    ({"source": [{"path": "a.zarr"}, {"path": "b.zarr"}], "output": "out.zarr"}, "output",
     "{name}"),
    ({"ref_channel": 1, "filters": [{"name": "max", "threshold": 1, "ref_channel": 0}]},
     "ref_channel", "Fix"),
    ({"filters": [{"name": "mask"}]}, "mask", "mask"),
]


@pytest.mark.parametrize("change,where,fix", BAD, ids=[str(i) for i in range(len(BAD))])
def test_bad_spec_names_key_path_and_fix(change, where, fix):
    with pytest.raises(ConfigError) as info:
        PipelineConfig.from_dict({**BASE, **change})
    msg = str(info.value)
    assert where in msg and fix in msg
    assert "hunter2" not in msg


def test_missing_source():
    with pytest.raises(ConfigError, match=r"source: missing source\. Fix: add `source:"):
        PipelineConfig.from_dict({k: v for k, v in BASE.items() if k != "source"})


def test_bad_spec_reports_every_problem():
    with pytest.raises(ConfigError, match=r"3 problems") as info:
        PipelineConfig.from_dict({"filters": [{"name": "max"}], "patch_size": [64, 64],
                                  "extra": 1})
    msg = str(info.value)
    assert "source: missing" in msg and "filters.0.threshold" in msg and "extra" in msg


@pytest.mark.parametrize("text,match", [
    ("source: [unclosed", "not valid YAML"),
    ("- just\n- a list\n", "must be a YAML mapping"),
])
def test_unreadable_specs(tmp_path, text, match):
    path = tmp_path / "spec.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=match):
        PipelineConfig.from_yaml(path)


def test_missing_spec_file(tmp_path):
    with pytest.raises(ConfigError, match="cannot be read"):
        run_pipeline(tmp_path / "nope.yaml")


@pytest.mark.cluster
def test_missing_source_path_fails_clearly(client, tmp_path):
    with pytest.raises(PatchsieveError, match="does not exist"):
        run_pipeline({**BASE, "source": str(tmp_path / "absent.ome.zarr")}, client=client)


# ----------------------------------------------------------------------------- overrides and env
def test_overrides_are_yaml_typed():
    out = apply_overrides(BASE, ["filters.0.threshold=8", "labels=true", "patch_size=[32, 32]",
                                 "cluster.scheduler=tcp://127.0.0.1:8786", "output=null",
                                 "source.storage_options.anon=false"])
    assert out["filters"][0]["threshold"] == 8 and out["labels"] is True
    assert out["patch_size"] == [32, 32] and out["output"] is None
    assert out["cluster"] == {"scheduler": "tcp://127.0.0.1:8786"}
    assert out["source"]["storage_options"] == {"anon": False}
    assert BASE["filters"][0]["threshold"] == 7.5  # the input is not modified
    cfg = PipelineConfig.from_dict(BASE, ["filters.0.threshold=8", "patch_size=[32, 32]"])
    assert cfg.filters[0].threshold == 8.0 and cfg.patch_size == [32, 32]


@pytest.mark.parametrize("item,match", [
    ("labels", "key.path=value"),
    ("=3", "key.path=value"),
    ("filters.a.threshold=1", "not an index"),
    ("filters.3.threshold=1", "not an index"),
    ("filters.0.threshold.x=1", "cannot have 'x'"),
])
def test_bad_overrides(item, match):
    with pytest.raises(ConfigError, match=match):
        apply_overrides({**BASE, "patch_size": [64, 64]}, [item])


def test_source_shorthand_and_ref_channel_default():
    cfg = PipelineConfig.from_dict({**BASE, "source": "vol.zarr", "ref_channel": 1,
                                    "filters": [{"name": "max", "threshold": 1},
                                                {"name": "mask", "mask": "m.zarr"}]})
    assert cfg.sources[0].path == "vol.zarr" and cfg.sources[0].stem == "vol"
    assert cfg.filters[0].ref_channel == 1


def test_env_expansion(monkeypatch):
    monkeypatch.setenv("PS_TEST_EP", "http://127.0.0.1:9")
    monkeypatch.delenv("PS_TEST_UNSET", raising=False)
    assert expand_env("${PS_TEST_EP}/a", "x") == "http://127.0.0.1:9/a"
    assert expand_env("${PS_TEST_UNSET:-d}", "x") == "d"
    with pytest.raises(ConfigError, match=r"source\.path references \$\{PS_TEST_UNSET\}"):
        expand_env("${PS_TEST_UNSET}", "source.path")


def test_env_references_resolved_only_at_run_time(monkeypatch, tmp_path):
    """Dry runs report needed variables but never their values; unset ones fail the real run."""
    monkeypatch.setenv("PS_TEST_SECRET", "canary-7f3a9c")
    monkeypatch.delenv("PS_TEST_MISSING", raising=False)
    spec = {**BASE, "source": {"path": "s3://b/x.zarr",
                               "storage_options": {"secret": "${PS_TEST_SECRET}",
                                                   "key": "${PS_TEST_MISSING}"}}}
    out = run_pipeline(spec, dry_run=True)
    assert out["env_required"] == ["PS_TEST_MISSING", "PS_TEST_SECRET"]
    assert out["env_missing"] == ["PS_TEST_MISSING"]
    assert "canary-7f3a9c" not in json.dumps(out)
    with pytest.raises(ConfigError, match=r"source\.storage_options\.key references "
                                          r"\$\{PS_TEST_MISSING\}") as info:
        run_pipeline(spec)
    assert "canary-7f3a9c" not in str(info.value)


def test_empty_env_option_is_dropped(monkeypatch):
    from patchsieve.pipeline._run import _resolved_sources

    monkeypatch.delenv("PS_TEST_EMPTY", raising=False)
    cfg = PipelineConfig.from_dict({**BASE, "source": {
        "path": "x.zarr", "storage_options": {"endpoint_url": "${PS_TEST_EMPTY:-}",
                                              "config_kwargs": {"retries": {"max_attempts": 3}}}}})
    [src] = _resolved_sources(cfg)
    assert src["storage_options"] == {"config_kwargs": {"retries": {"max_attempts": 3}}}


def test_epoch_estimate_with_replacement_and_drop_last():
    from patchsieve.pipeline._run import _epoch_estimate

    class FakeSidecar:  # the two numbers _epoch_estimate reads
        def sample_totals(self, name):
            return {"n_patches_per_epoch": np.array([5, 6])}

    cfg = PipelineConfig.from_dict({**BASE, "dataset": {"batch_size": 4, "drop_last": True}})
    est = _epoch_estimate(cfg, [FakeSidecar()], "shannon")
    assert est["expected_epoch_size"] == 11 and est["batches_per_epoch"] == 2
    cfg = PipelineConfig.from_dict({**BASE, "dataset": {"mode": "with_replacement",
                                                        "epoch_length": 100, "batch_size": 8}})
    est = _epoch_estimate(cfg, [FakeSidecar()], "shannon")
    assert est["expected_epoch_size"] == 100 and est["batches_per_epoch"] == 13
