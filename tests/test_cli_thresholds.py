"""CLI tests of ``inspect``, ``plot``, ``suggest-threshold`` and ``preview`` on both demo datasets."""

from __future__ import annotations

import json

import matplotlib
import numpy as np
import pytest
import typer
from typer.testing import CliRunner

matplotlib.use("Agg")

from patchsieve.cli.thresholds import register  # noqa: E402
from patchsieve.compute import compute  # noqa: E402
from patchsieve.config import (  # noqa: E402
    MaxPatchFilterConfig,
    MeanStdPatchFilterConfig,
    ShannonPatchFilterConfig,
)
from patchsieve.demo import write_demo_data  # noqa: E402
from patchsieve.sidecar import open_sidecar  # noqa: E402

pytestmark = pytest.mark.cluster


def make_app() -> typer.Typer:
    app = typer.Typer()

    @app.callback()
    def _main() -> None:
        """test app"""

    register(app)
    return app


APP = make_app()
runner = CliRunner()


def run(*args: str, code: int = 0):
    res = runner.invoke(APP, [str(a) for a in args])
    assert res.exit_code == code, (res.output, res.exception)
    return res


@pytest.fixture(scope="module")
def client():
    from distributed import Client, LocalCluster

    with LocalCluster(n_workers=1, threads_per_worker=2, processes=False,
                      dashboard_address=None) as cl, Client(cl, set_as_default=False) as c:
        yield c


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    return write_demo_data(tmp_path_factory.mktemp("demo"), size="small")


@pytest.fixture(scope="module")
def sidecars(demo, client, tmp_path_factory):
    out = tmp_path_factory.mktemp("sc")
    return {
        "hagen2d": compute(demo["hagen2d"], {"shannon": ShannonPatchFilterConfig(threshold=7.5),
                                             "max": MaxPatchFilterConfig(threshold=300.0)},
                           (64, 64), out / "hagen2d.patchsieve.zarr", client=client).path,
        "vol3d2c": compute(demo["vol3d2c"],
                           {"shannon": ShannonPatchFilterConfig(threshold=6.5),
                            "mean_std": MeanStdPatchFilterConfig(mean_threshold=150.0)},
                           (8, 32, 32), out / "vol3d2c.patchsieve.zarr", client=client).path,
    }


def png_ok(path, min_colours=50):
    import matplotlib.image as mpimg

    img = mpimg.imread(str(path))
    assert img.shape[0] > 300 and img.shape[1] > 300
    assert np.unique(img[..., :3].reshape(-1, 3), axis=0).shape[0] > min_colours
    return img.shape[:2]


def test_register_adds_commands():
    names = {c.name for c in APP.registered_commands}
    assert names == {"inspect", "plot", "suggest-threshold", "preview"}


# ------------------------------------------------------------------------------ inspect
@pytest.mark.parametrize("kind", ["hagen2d", "vol3d2c"])
def test_inspect_table_json_quiet(sidecars, kind):
    path = sidecars[kind]
    sc = open_sidecar(path)
    table = run("inspect", path).output
    for name in sc.filter_names:
        assert name in table
    assert "per_epoch" in table and "fixed_subset" in table and "complete" in table
    data = json.loads(run("inspect", path, "--json").output)
    assert data["sidecar"] == path and set(data["filters"]) == set(sc.filter_names)
    name = sc.filter_names[0]
    assert data["filters"][name]["n_background"] == int(sc.filter_out(name).sum())
    quiet = run("inspect", path, "--quiet").output.strip().splitlines()
    assert len(quiet) == len(sc.filter_names)
    assert quiet[0].startswith(f"{name}: {int(sc.filter_out(name).sum())}/")


def test_inspect_missing_sidecar(tmp_path):
    res = run("inspect", tmp_path / "nope.patchsieve.zarr", code=2)
    assert "error:" in res.output and "Fix" in res.output


# ------------------------------------------------------------------------------ plot
@pytest.mark.parametrize("kind,extra", [("hagen2d", ["--sample", "3"]),
                                        ("vol3d2c", ["--z", "2", "--channel", "1"])])
def test_plot_sidecar(sidecars, tmp_path, kind, extra):
    out = tmp_path / "p.png"
    res = run("plot", sidecars[kind], "-o", out, *extra)
    assert res.output.strip() == f"wrote {out}"
    png_ok(out)


def test_plot_sidecar_one_filter(sidecars, tmp_path):
    out = tmp_path / "one.png"
    assert run("plot", sidecars["hagen2d"], "-f", "max", "-o", out, "-q").output.strip() == \
        str(out)
    h, w = png_ok(out)
    assert w < 1000  # one panel


@pytest.mark.parametrize("kind,args", [
    ("hagen2d", ["--patch", "64,64", "--sample", "1"]),
    ("vol3d2c", ["--patch", "8,32,32", "-f", "shannon", "-t", "6.5", "-f", "max", "-t", "300",
                 "--channel", "1"]),
])
def test_plot_source(demo, tmp_path, kind, args):
    out = tmp_path / "s.png"
    res = run("plot", demo[kind], "-o", out, "--json", *args)
    assert json.loads(res.output)["output"] == str(out)
    png_ok(out)


@pytest.mark.parametrize("args,match", [
    (["--sample", "99"], "sample"),
    (["--z", "3"], "z applies"),
])
def test_plot_errors(sidecars, tmp_path, args, match):
    res = run("plot", sidecars["hagen2d"], "-o", tmp_path / "x.png", *args, code=2)
    assert match in res.output


def test_plot_source_needs_patch(demo, tmp_path):
    res = run("plot", demo["hagen2d"], "-o", tmp_path / "x.png", code=2)
    assert "--patch" in res.output
    res = run("plot", demo["hagen2d"], "-p", "64,64", "-f", "max", "-t", "1", "-t", "2",
              "-o", tmp_path / "x.png", code=2)
    assert "--threshold" in res.output


# ------------------------------------------------------------------------------ suggest
@pytest.mark.parametrize("kind", ["hagen2d", "vol3d2c"])
def test_suggest_threshold(sidecars, tmp_path, kind):
    out = tmp_path / "h.png"
    res = run("suggest-threshold", sidecars[kind], "--filter", "shannon",
              "--background-fraction", "0.6", "-o", out, "--json")
    data = json.loads(res.output)
    assert data["histogram"] == str(out) and data["applied"] is False
    assert abs(data["background_fraction"] - 0.6) < 0.25
    png_ok(out, min_colours=5)
    text = run("suggest-threshold", sidecars[kind], "-f", "shannon", "--method", "otsu",
               "-o", out).output
    assert "threshold =" in text and "background" in text and "--apply" in text
    quiet = run("suggest-threshold", sidecars[kind], "-f", "shannon", "-o", out, "-q").output
    float(quiet.strip())


def test_suggest_threshold_apply(demo, client, tmp_path):
    path = compute(demo["hagen2d"], ShannonPatchFilterConfig(threshold=7.5), (64, 64),
                   tmp_path / "a.patchsieve.zarr", client=client).path
    res = run("suggest-threshold", path, "-b", "0.5", "--apply", "-o", tmp_path / "h.png",
              "--json")
    data = json.loads(res.output)
    sc = open_sidecar(path)
    assert data["applied"] is True and sc.is_complete
    assert sc.config("shannon").threshold == pytest.approx(data["threshold"])
    assert sc.filter_out("shannon").mean() == pytest.approx(data["background_fraction"])


def test_suggest_threshold_errors(sidecars, tmp_path):
    res = run("suggest-threshold", sidecars["hagen2d"], "-o", tmp_path / "h.png", code=2)
    assert "--filter" in res.output or "filter=" in res.output
    res = run("suggest-threshold", sidecars["hagen2d"], "-f", "shannon", "-b", "2",
              "-o", tmp_path / "h.png", code=2)
    assert "background_fraction" in res.output


# ------------------------------------------------------------------------------ preview
@pytest.mark.parametrize("kind,filt", [("hagen2d", "shannon"), ("vol3d2c", "mean_std")])
def test_preview(sidecars, tmp_path, kind, filt):
    out = tmp_path / "g.png"
    res = run("preview", sidecars[kind], "-n", "16", "-f", filt, "-o", out)
    assert res.output.strip().startswith(f"wrote {out}: 16 patches")
    png_ok(out, min_colours=20)
    data = json.loads(run("preview", sidecars[kind], "-n", "9", "-f", filt, "-o", out,
                          "--json", "--mode", "fixed_subset", "--seed", "3").output)
    assert data["n"] == 9 and len(data["origins"]) == 9
    assert data["realized_background_fraction"] == pytest.approx(data["n_background"] / 9)
    assert run("preview", sidecars[kind], "-n", "4", "-f", filt, "-o", out, "-q").output.strip() \
        == str(out)


def test_preview_bad_mode(sidecars, tmp_path):
    res = run("preview", sidecars["hagen2d"], "-f", "shannon", "--mode", "nope",
              "-o", tmp_path / "g.png", code=2)
    assert "mode" in res.output


def test_inspect_incomplete(sidecars, tmp_path):
    import shutil

    import zarr

    dst = tmp_path / "inc.patchsieve.zarr"
    shutil.copytree(sidecars["vol3d2c"], dst)
    g = zarr.open_group(str(dst), mode="r+")
    meta = dict(g.attrs["patchsieve"])
    meta["complete"] = False
    meta["status"] = {k: v for k, v in meta["status"].items() if k != "decisions/shannon"}
    g.attrs["patchsieve"] = meta
    out = run("inspect", dst).output
    assert "INCOMPLETE" in out and "pending" in out
    quiet = run("inspect", dst, "-q").output
    assert "shannon: INCOMPLETE" in quiet and "mean_std: " in quiet
