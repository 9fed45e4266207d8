"""Deploy recipes (deploy/): what can be checked without a container daemon or a Kubernetes cluster.

Files parse and carry the required keys; `docker compose config` runs when the docker CLI has
its compose plugin (else skipped with a message); every patchsieve / dask command line they use
names existing subcommands and flags (checked against `--help`, and `patchsieve run` lines are
dry-run on the shipped spec); dask-jobqueue renders the Slurm job script.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
DEPLOY = REPO / "deploy"
BIN = Path(sys.executable).parent
IMAGE_ROOT = "/opt/patchsieve/"  # where deploy/Dockerfile puts the repository files


def compose() -> dict:
    return yaml.safe_load((DEPLOY / "docker-compose.yaml").read_text())


def k8s_docs() -> list[dict]:
    docs = []
    for path in sorted((DEPLOY / "k8s").glob("*.yaml")):
        docs += [d for d in yaml.safe_load_all(path.read_text()) if d]
    return docs


# ----------------------------------------------------------------------------- Dockerfile
def test_dockerfile_is_non_root_pinned_and_copies_existing_paths():
    text = (DEPLOY / "Dockerfile").read_text()
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.startswith("#")]
    froms = [ln.split()[1] for ln in lines if ln.startswith("FROM ")]
    assert froms and all(re.search(r":\d+\.\d+\.\d+", f) for f in froms), froms
    users = [ln.split()[1] for ln in lines if ln.startswith("USER ")]
    assert users and users[-1].split(":")[0] not in ("root", "0")
    assert "-c constraints/constraints-py311.txt" in text
    assert (REPO / "constraints/constraints-py311.txt").is_file()
    for ln in lines:
        if ln.startswith("COPY "):
            for src in ln.split()[1:-1]:
                assert (REPO / src).exists(), f"Dockerfile copies missing {src}"
    # the extras it installs exist in pyproject.toml
    extras = re.search(r'"\.\[([a-z0-9,]+)\]"', text).group(1).split(",")
    pyproject = (REPO / "pyproject.toml").read_text()
    for extra in extras:
        assert re.search(rf"^{extra} = \[", pyproject, re.M), extra


# ----------------------------------------------------------------------------- compose
def test_compose_has_scheduler_two_workers_store_and_job():
    doc = compose()
    services = doc["services"]
    assert {"scheduler", "worker", "minio", "job"} <= set(services)
    assert services["worker"]["deploy"]["replicas"] == 2
    assert services["minio"]["image"].startswith("minio/minio:RELEASE.")
    for name, svc in services.items():
        image = svc.get("image", "")
        assert not image.endswith(":latest") and (":" in image or "build" in svc), name
        if "build" in svc:
            assert svc["build"]["dockerfile"] == "deploy/Dockerfile"
            assert (DEPLOY / svc["build"]["context"] / svc["build"]["dockerfile"]).is_file()
    assert services["job"]["command"][:2] == ["patchsieve", "run"]
    assert "tcp://scheduler:8786" in " ".join(services["worker"]["command"])


def test_compose_holds_no_literal_secrets():
    for name, svc in compose()["services"].items():
        env = svc.get("environment") or {}
        for key, value in env.items():
            if re.search(r"SECRET|PASSWORD|TOKEN", key):
                assert str(value).startswith("${") and ":?" in str(value), (name, key)


def test_docker_compose_config():
    docker = shutil.which("docker")
    if docker is None:
        pytest.skip("docker CLI not installed: `docker compose config` not run")
    probe = subprocess.run([docker, "compose", "version"], capture_output=True, text=True)
    if probe.returncode != 0:
        pytest.skip("the docker CLI has no compose plugin: `docker compose config` not run "
                    f"({(probe.stderr or probe.stdout).strip()[:100]})")
    env = dict(os.environ, MINIO_ROOT_PASSWORD="not-a-real-password")
    res = subprocess.run([docker, "compose", "-f", str(DEPLOY / "docker-compose.yaml"), "config"],
                         capture_output=True, text=True, env=env, timeout=60)
    assert res.returncode == 0, res.stderr
    env.pop("MINIO_ROOT_PASSWORD")
    res = subprocess.run([docker, "compose", "-f", str(DEPLOY / "docker-compose.yaml"), "config"],
                         capture_output=True, text=True, env=env, timeout=60)
    assert res.returncode != 0 and "MINIO_ROOT_PASSWORD" in res.stderr


# ----------------------------------------------------------------------------- Kubernetes
def test_k8s_daskcluster_and_job():
    docs = {d["kind"]: d for d in k8s_docs()}
    assert set(docs) == {"DaskCluster", "Job"}
    dc, job = docs["DaskCluster"], docs["Job"]
    assert dc["apiVersion"] == "kubernetes.dask.org/v1"
    assert dc["spec"]["worker"]["replicas"] >= 2
    sched_svc = dc["spec"]["scheduler"]["service"]
    assert {p["port"] for p in sched_svc["ports"]} >= {8786}
    assert job["apiVersion"] == "batch/v1"
    pod = job["spec"]["template"]["spec"]
    assert pod["restartPolicy"] in ("Never", "OnFailure")
    cmd = " ".join(pod["containers"][0]["command"])
    # the Job talks to the operator's scheduler service: <DaskCluster name>-scheduler
    assert f"tcp://{dc['metadata']['name']}-scheduler:8786" in cmd
    for spec in (pod, dc["spec"]["worker"]["spec"], dc["spec"]["scheduler"]["spec"]):
        assert spec["securityContext"]["runAsNonRoot"] is True
        for c in spec["containers"]:
            assert c["image"].rsplit(":", 1)[-1] not in ("latest", c["image"])
            for e in c.get("env", []):
                assert not re.search(r"SECRET|PASSWORD|TOKEN|ACCESS_KEY", e["name"]), e
    assert pod["containers"][0]["envFrom"][0]["secretRef"]["name"]


def test_k8s_manifests_match_schema_when_available():
    """Validate against the official JSON schema if a schema package is installed offline."""
    try:
        from kubernetes_validate import validate  # type: ignore[import-not-found]
    except ImportError:
        pytest.skip("no offline Kubernetes schema package (kubernetes-validate) installed; "
                    "structure checked by test_k8s_daskcluster_and_job")
    for doc in k8s_docs():
        if doc["kind"] == "Job":
            validate(doc, "1.30", strict=True)


# ----------------------------------------------------------------------------- command lines
def _command_lines() -> list[list[str]]:
    """Every patchsieve / dask command line in the deploy files and the docs."""
    cmds = []
    for svc in compose()["services"].values():
        cmd = svc.get("command")
        if isinstance(cmd, list) and cmd and cmd[0] in ("patchsieve", "dask"):
            cmds.append(cmd)
    for doc in k8s_docs():
        specs = [doc["spec"]["template"]["spec"]] if doc["kind"] == "Job" else \
            [doc["spec"]["worker"]["spec"], doc["spec"]["scheduler"]["spec"]]
        for spec in specs:
            for c in spec["containers"]:
                cmd = c.get("command") or c.get("args")
                cmds.append(cmd)
    for doc in (REPO / "docs/cluster.md", DEPLOY / "README.md"):
        in_code = False
        for line in doc.read_text().splitlines():
            if line.strip().startswith("```"):
                in_code = not in_code
                continue
            line = line.strip().removeprefix("$ ")
            if in_code and line.startswith(("patchsieve ", "dask scheduler", "dask worker")):
                cmds.append(shlex.split(line.split(" #")[0].replace("\\", "")))
    return cmds


def _help(args: list[str]) -> str:
    res = subprocess.run([str(BIN / args[0]), *args[1:], "--help"], capture_output=True,
                         text=True, timeout=60, env=dict(os.environ, COLUMNS="200"))
    assert res.returncode == 0, (args, res.stderr)
    return res.stdout


def test_every_flag_used_exists():
    cmds = _command_lines()
    assert len(cmds) >= 8
    helps: dict[tuple[str, str], str] = {}
    for cmd in cmds:
        tool, sub = cmd[0], cmd[1]
        key = (tool, sub)
        if key not in helps:
            helps[key] = _help([tool, sub])
        for arg in cmd[2:]:
            if arg.startswith("--"):
                flag = arg.split("=", 1)[0]
                assert re.search(rf"(?<![\w-]){re.escape(flag)}(?![\w-])", helps[key]), \
                    f"{tool} {sub}: flag {flag} does not exist ({' '.join(cmd)})"


def test_pipeline_command_lines_dry_run():
    runs = [c for c in _command_lines() if c[:2] == ["patchsieve", "run"]]
    assert runs
    for cmd in runs:
        args = [a.replace(IMAGE_ROOT, f"{REPO}/") for a in cmd[1:]]
        if "--dry-run" not in args:
            args.append("--dry-run")
        res = subprocess.run([str(BIN / "patchsieve"), *args], capture_output=True, text=True,
                             timeout=60, cwd=REPO)
        assert res.returncode == 0, (cmd, res.stderr[-2000:])


# ----------------------------------------------------------------------------- Slurm
def _slurm_module():
    path = DEPLOY / "slurm" / "slurm_pipeline.py"
    spec = importlib.util.spec_from_file_location("slurm_pipeline", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_slurm_job_script_renders(tmp_path, monkeypatch):
    pytest.importorskip("dask_jobqueue", reason="dask-jobqueue (the `cluster` extra) missing")
    monkeypatch.chdir(tmp_path)  # log_directory is created relative to the cwd
    mod = _slurm_module()
    with mod.make_cluster(queue="compute", account="proj42", cores=4, memory="16GiB",
                          walltime="01:30:00", scheduler_host="127.0.0.1") as cluster:
        script = cluster.job_script()
    assert script.startswith("#!")
    for directive in ("#SBATCH -p compute", "#SBATCH -A proj42", "#SBATCH --cpus-per-task=4",
                      "#SBATCH -t 01:30:00", "#SBATCH --mem="):
        assert directive in script, directive
    assert "distributed.cli.dask_worker tcp://127.0.0.1:" in script
    assert "--nthreads 4" in script and "--memory-limit 16.00GiB" in script


def test_slurm_driver_validates_spec_before_submitting(tmp_path, monkeypatch):
    from patchsieve.errors import ConfigError

    pytest.importorskip("dask_jobqueue")
    monkeypatch.chdir(tmp_path)
    mod = _slurm_module()
    bad = tmp_path / "bad.yaml"
    bad.write_text("source: x.zarr\nfilters: [{name: shannon}]\npatch_size: [64, 64]\n")
    with pytest.raises(ConfigError, match=r"filters\.0\.threshold"):
        mod.main([str(bad), "--jobs", "1"])
    assert not (tmp_path / "patchsieve-slurm-logs").exists()  # nothing was started


def test_sbatch_script():
    text = (DEPLOY / "slurm" / "run_pipeline.sbatch").read_text()
    assert text.startswith("#!/bin/bash")
    directives = [ln for ln in text.splitlines() if ln.startswith("#SBATCH")]
    assert any("--time=" in d for d in directives) and any("--mem=" in d for d in directives)
    assert "deploy/slurm/slurm_pipeline.py" in text
    assert (DEPLOY / "slurm" / "slurm_pipeline.py").is_file()
    res = subprocess.run(["bash", "-n", str(DEPLOY / "slurm" / "run_pipeline.sbatch")],
                         capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    help_text = subprocess.run([sys.executable, str(DEPLOY / "slurm" / "slurm_pipeline.py"),
                                "--help"], capture_output=True, text=True, timeout=60)
    assert help_text.returncode == 0 and "--jobs" in help_text.stdout
