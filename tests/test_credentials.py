"""Credentials never leak: a canary secret used as S3 credentials must not appear anywhere.

Scanned: every object and file a run writes (side-cars on S3 and on local disk, object keys),
log records (DEBUG, all loggers, workers included), CLI stdout/stderr, pipeline summaries and dry
runs, and the full error chain (tracebacks) of a run whose credentials are refused by an S3 server
that enforces authentication.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import traceback
import urllib.request
import uuid
from pathlib import Path

import pytest

pytestmark = [pytest.mark.s3, pytest.mark.cluster]

BIN = Path(sys.executable).parent


@pytest.fixture
def canary():
    """Credentials made of unique canary strings (moto's default server accepts any)."""
    tag = uuid.uuid4().hex
    return {"key": f"AKIACANARY{tag[:10].upper()}", "secret": f"canary-secret-{tag}",
            "token": f"canary-token-{tag[::-1]}"}


def assert_clean(blob, canary, where: str) -> None:
    text = blob.decode("utf-8", "replace") if isinstance(blob, bytes) else str(blob)
    for name, value in canary.items():
        assert value not in text, f"credential {name!r} leaked into {where}"


#: The AWS SDK's own wire log: at DEBUG, botocore logs each signed request (the Authorization header
#: with the access key id, X-Amz-Security-Token). patchsieve never enables it (the CLI pins these
#: loggers at WARNING even with -vv); docs/cluster.md warns against enabling it in production.
AWS_WIRE_LOGGERS = ("botocore", "aiobotocore", "urllib3", "s3transfer", "boto3")


def scan_logs(records, canary) -> int:
    """Scan every record at INFO and above, and DEBUG records outside the AWS SDK's wire log."""
    n = 0
    for r in records:
        wire = r.name.split(".")[0] in AWS_WIRE_LOGGERS
        if r.levelno >= 20 or not wire:
            assert_clean(f"{r.name} {r.getMessage()} {r.exc_text or ''}", canary,
                         f"log record of {r.name!r}")
            n += 1
    return n


def scan_tree(root: Path, canary) -> int:
    n = 0
    for path in root.rglob("*"):
        assert_clean(str(path), canary, "a file name")
        if path.is_file():
            assert_clean(path.read_bytes(), canary, str(path))
            n += 1
    return n


def scan_bucket(fs, bucket: str, canary) -> int:
    fs.invalidate_cache()
    keys = fs.find(bucket)
    for key in keys:
        assert_clean(key, canary, "an object key")
        assert_clean(fs.cat_file(key), canary, f"s3://{key}")
    return len(keys)


@pytest.fixture(scope="module")
def client():
    from distributed import Client, LocalCluster

    with LocalCluster(n_workers=1, threads_per_worker=2, processes=False,
                      dashboard_address=":0") as cl, Client(cl, set_as_default=False) as c:
        yield c


@pytest.fixture
def s3_demo(s3_bucket, tmp_path):
    from patchsieve.demo import write_demo_data

    local = write_demo_data(tmp_path / "demo", kind="hagen2d", size="small")["hagen2d"]
    s3_bucket.fs.put(local, f"{s3_bucket.name}/hagen2d.ome.zarr", recursive=True)
    return f"{s3_bucket.url}/hagen2d.ome.zarr"


def _subprocess_env(extra=None):
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update({"AWS_DEFAULT_REGION": "us-east-1", "NO_PROXY": "127.0.0.1,localhost",
                "PYTHONWARNINGS": "ignore::DeprecationWarning", **(extra or {})})
    return env


# ----------------------------------------------------------------------------- successful runs
def test_api_run_writes_no_credentials(s3_server, s3_bucket, s3_demo, canary, client, tmp_path,
                                       caplog):
    from patchsieve.compute import compute
    from patchsieve.config import ShannonPatchFilterConfig
    from patchsieve.sidecar import open_sidecar

    caplog.set_level("DEBUG")
    opts = {**canary, "endpoint_url": s3_server.endpoint_url}
    cfg = ShannonPatchFilterConfig(threshold=7.5)
    on_s3 = compute(s3_demo, cfg, (64, 64), client=client, storage_options=opts)  # default: S3
    local = compute(s3_demo, cfg, (64, 64), tmp_path / "out" / "local.zarr", client=client,
                    storage_options=opts, labels=True)
    assert on_s3.path.startswith("s3://") and on_s3.is_complete and local.is_complete
    again = open_sidecar(on_s3.path, storage_options=opts)
    for sc in (on_s3, local, again):
        assert_clean(repr(sc), canary, "repr(Sidecar)")
        assert_clean(json.dumps(sc.attrs, default=str), canary, "side-car attrs")
        assert_clean(sc.source, canary, "Sidecar.source")
    assert scan_bucket(s3_bucket.fs, s3_bucket.name, canary) > 10
    assert scan_tree(tmp_path / "out", canary) > 5
    assert scan_logs(caplog.records, canary) > 0, "nothing was logged"


def test_url_credentials_are_stripped(s3_server, s3_demo, canary, client, tmp_path):
    """Credentials embedded in the URL itself (user:password@) are not stored either."""
    from patchsieve.compute import compute
    from patchsieve.config import ShannonPatchFilterConfig

    opts = {**canary, "endpoint_url": s3_server.endpoint_url}
    url = s3_demo.replace("s3://", f"s3://{canary['key']}:{canary['secret']}@")
    try:
        sc = compute(url, ShannonPatchFilterConfig(threshold=7.5), (64, 64),
                     tmp_path / "out" / "url.zarr", client=client, storage_options=opts)
    except Exception as err:  # noqa: BLE001 - a refusal is fine, as long as it does not leak
        assert_clean("".join(traceback.format_exception(err)), canary, "the error")
        return
    assert_clean(json.dumps(sc.attrs, default=str), canary, "side-car attrs")
    scan_tree(tmp_path / "out", canary)


def test_cli_run_leaks_nothing(s3_server, s3_bucket, s3_demo, canary, tmp_path):
    out = tmp_path / "out" / "cli.zarr"
    cmd = [str(BIN / "patchsieve"), "-vv", "compute", s3_demo, "--filter", "shannon",
           "--threshold", "7.5", "--patch", "64,64", "--storage-options", json.dumps(canary),
           "--endpoint-url", s3_server.endpoint_url, "--output", str(out), "--json",
           "--no-progress"]
    res = subprocess.run(cmd, env=_subprocess_env(), capture_output=True, text=True, timeout=180)
    assert res.returncode == 0, res.stderr[-3000:]
    assert json.loads(res.stdout[res.stdout.index("{"):])["complete"]
    assert "DEBUG" in res.stderr  # debug logging really was on
    assert_clean(res.stdout, canary, "CLI stdout")
    assert_clean(res.stderr, canary, "CLI stderr")
    scan_tree(tmp_path / "out", canary)
    scan_bucket(s3_bucket.fs, s3_bucket.name, canary)


def test_pipeline_leaks_nothing(s3_server, s3_demo, canary, client, tmp_path, monkeypatch,
                                caplog):
    from typer.testing import CliRunner

    from patchsieve.cli import app
    from patchsieve.pipeline import run_pipeline

    caplog.set_level("DEBUG")
    monkeypatch.setenv("PS_CANARY_KEY", canary["key"])
    monkeypatch.setenv("PS_CANARY_SECRET", canary["secret"])
    monkeypatch.setenv("PS_CANARY_TOKEN", canary["token"])
    spec = {
        "name": "canary",
        "source": {"path": s3_demo, "storage_options": {
            "key": "${PS_CANARY_KEY}", "secret": "${PS_CANARY_SECRET}",
            "token": "${PS_CANARY_TOKEN}", "endpoint_url": s3_server.endpoint_url}},
        "filters": [{"name": "shannon", "threshold": 7.5}],
        "patch_size": [64, 64],
        "output": str(tmp_path / "out" / "{name}.patchsieve.zarr"),
        "dataset": {"batch_size": 8},
    }
    summary = run_pipeline(spec, client=client)
    assert summary["sidecars"] and summary["results"][0]["complete"]
    assert_clean(json.dumps(summary, default=str), canary, "pipeline summary")
    assert_clean(json.dumps(run_pipeline(spec, dry_run=True), default=str), canary, "dry run")
    spec_file = tmp_path / "spec.yaml"
    spec_file.write_text(json.dumps(spec))  # JSON is YAML
    res = CliRunner().invoke(app, ["run", str(spec_file), "--dry-run", "--json"])
    assert res.exit_code == 0, res.output
    assert_clean(res.output, canary, "`patchsieve run --dry-run` output")
    assert scan_logs(caplog.records, canary) > 0
    scan_tree(tmp_path / "out", canary)


# ----------------------------------------------------------------------------- refused credentials
@pytest.fixture
def auth_s3():
    """A moto S3 server (subprocess) that enforces authentication: unknown keys are refused."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = _subprocess_env({"INITIAL_NO_AUTH_ACTION_COUNT": "0"})
    proc = subprocess.Popen([str(BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                urllib.request.urlopen(f"{url}/moto-api/", timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    pytest.fail("moto_server with authentication did not start")
                time.sleep(0.1)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_refused_credentials_do_not_leak(auth_s3, canary, client, tmp_path, caplog):
    from patchsieve.compute import compute
    from patchsieve.config import ShannonPatchFilterConfig

    caplog.set_level("DEBUG")
    opts = {**canary, "endpoint_url": auth_s3}
    with pytest.raises(Exception) as info:  # noqa: B017 - the class is checked separately below
        compute("s3://private/vol.ome.zarr", ShannonPatchFilterConfig(threshold=7.5), (64, 64),
                tmp_path / "out.zarr", client=client, storage_options=opts)
    chain = "".join(traceback.format_exception(info.value))
    assert "Forbidden" in chain or "denied" in chain.lower() or "403" in chain
    assert_clean(chain, canary, "the error chain")
    scan_logs(caplog.records, canary)
    assert not (tmp_path / "out.zarr").exists()

    cmd = [str(BIN / "patchsieve"), "-vv", "compute", "s3://private/vol.ome.zarr", "--filter",
           "shannon", "--threshold", "7.5", "--patch", "64,64", "--endpoint-url", auth_s3,
           "--output", str(tmp_path / "cli.zarr")]
    env = _subprocess_env({"AWS_ACCESS_KEY_ID": canary["key"],
                           "AWS_SECRET_ACCESS_KEY": canary["secret"],
                           "AWS_SESSION_TOKEN": canary["token"]})
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert res.returncode != 0
    assert_clean(res.stdout, canary, "CLI stdout")
    assert_clean(res.stderr, canary, "CLI stderr")


def test_refused_credentials_error_names_the_object(auth_s3, canary, client, tmp_path):
    from patchsieve.compute import compute
    from patchsieve.config import ShannonPatchFilterConfig
    from patchsieve.errors import PatchsieveError

    opts = {**canary, "endpoint_url": auth_s3}
    with pytest.raises(PatchsieveError, match=r"private/vol\.ome\.zarr"):
        compute("s3://private/vol.ome.zarr", ShannonPatchFilterConfig(threshold=7.5), (64, 64),
                tmp_path / "out.zarr", client=client, storage_options=opts)
