"""Shared helpers of the patchsieve benchmark suite (no patchsieve import needed).

Every ``benchmarks/bench_*.py`` script uses these pieces so that all results look alike:

- :func:`machine_info`, :func:`versions`, :func:`thread_settings` describe where a number came from;
- :func:`median_time` times a callable (median of >= 3 runs, every run kept);
- :class:`PeakRSS` samples the resident memory of a process *tree* (client + workers) in a
  thread; :func:`run_with_peak_rss` runs a command and reports its tree's peak RSS;
- :func:`mb_per_s`, :func:`mpix_per_s`, :func:`ratio`, :func:`summary_row` are the throughput
  and ratio conventions;
- :func:`print_table` prints a rich table, :func:`write_results` writes
  ``benchmarks/results/<name>.json``;
- :func:`run_careamics` and :func:`run_peers` drive the CAREamics / peer libraries, which live in
  their own virtualenvs (``careamics-env.sh``, ``peers-env.sh``), as subprocesses reporting JSON.

Ratio convention
----------------
``ratio = value / baseline`` where both were measured **in the same run**. Compare speeds in
throughput units (MB/s, patches/s: higher is better, so ``ratio`` is the speed-up over the
baseline) and costs in seconds (``filter pass s / plain read s``: lower is better). Every summary
row says which (``better``), and a ``target`` such as ``">=5"`` or ``"<=2.5"`` is checked against
the ratio.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent
RESULTS_DIR = BENCH_DIR / "results"
CAREAMICS_VENV = BENCH_DIR / ".venv-careamics"
PEERS_VENV = BENCH_DIR / ".venv-peers"
ZARRDATASET_VENV = BENCH_DIR / ".venv-zarrdataset"

__all__ = [
    "PeakRSS",
    "Timing",
    "machine_info",
    "versions",
    "thread_settings",
    "median_time",
    "run_with_peak_rss",
    "mb_per_s",
    "mpix_per_s",
    "ratio",
    "summary_row",
    "print_table",
    "write_results",
    "venv_python",
    "run_venv_driver",
    "run_careamics",
    "run_peers",
]


# ----------------------------------------------------------------------------- description
def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info() -> dict[str, Any]:
    """Describe the machine: cores (logical, physical, usable), memory, CPU model, OS.

    Returns
    -------
    dict
        JSON-serialisable description.
    """
    import psutil

    vm = psutil.virtual_memory()
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:  # macOS / Windows
        usable = os.cpu_count()
    return {
        "cpu_model": _cpu_model(),
        "cores_logical": os.cpu_count(),
        "cores_physical": psutil.cpu_count(logical=False),
        "cores_usable": usable,
        "memory_total_bytes": int(vm.total),
        "memory_total_gib": round(vm.total / 2**30, 2),
        "memory_available_gib": round(vm.available / 2**30, 2),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "load_avg_1min": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
    }


_VERSION_MODULES = (
    "numpy", "scipy", "zarr", "numcodecs", "ome_zarr", "dask", "distributed", "xarray",
    "skimage", "torch", "numba", "patchsieve",
)


def versions(extra: Iterable[str] = ()) -> dict[str, str | None]:
    """Versions of python and of the stack's packages (None when not importable).

    Parameters
    ----------
    extra : iterable of str
        More module names to report.
    """
    import importlib

    out: dict[str, str | None] = {"python": platform.python_version()}
    for name in (*_VERSION_MODULES, *extra):
        try:
            mod = importlib.import_module(name)
        except Exception:  # noqa: BLE001 - any import failure means "not available"
            out[name] = None
            continue
        out[name] = str(getattr(mod, "__version__", "unknown"))
    return out


def thread_settings() -> dict[str, Any]:
    """Thread settings that change results several-fold on small machines.

    Reports ``torch.get_num_threads()`` (only when torch is already imported, so that calling
    this never pays torch's import) and the ``*_NUM_THREADS`` environment variables.
    """
    env = {k: os.environ.get(k) for k in
           ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMBA_NUM_THREADS")}
    out: dict[str, Any] = {"env": env}
    torch = sys.modules.get("torch")
    if torch is not None:
        out["torch_num_threads"] = torch.get_num_threads()
        out["torch_num_interop_threads"] = torch.get_num_interop_threads()
    return out


# ----------------------------------------------------------------------------- timing
@dataclass
class Timing:
    """Result of :func:`median_time`.

    Attributes
    ----------
    median_s : float
        Median of ``runs_s``.
    runs_s : list of float
        Every run's wall time (seconds), setup excluded.
    result : Any
        What the last run of ``fn`` returned.
    """

    median_s: float
    runs_s: list[float]
    result: Any = None

    def as_dict(self) -> dict[str, Any]:
        """JSON-friendly ``{"median_s", "runs_s", "min_s"}`` (the result is left out)."""
        return {"median_s": self.median_s, "runs_s": list(self.runs_s), "min_s": min(self.runs_s)}


def median_time(fn: Callable[..., Any], repeat: int = 3,
                setup: Callable[[], Any] | None = None, warmup: int = 0) -> Timing:
    """Time ``fn`` ``repeat`` times and return the median.

    Parameters
    ----------
    fn : callable
        ``fn()``, or ``fn(setup())`` when ``setup`` is given.
    repeat : int
        Number of timed runs (>= 1; benchmarks use >= 3).
    setup : callable, optional
        Called before every run, outside the timed region; its return value is passed to ``fn``.
    warmup : int
        Untimed runs before the timed ones (e.g. to warm a cluster or a JIT).
    """
    if repeat < 1:
        raise ValueError(f"repeat={repeat!r} must be >= 1; pass repeat=3 for a median of three")
    for _ in range(warmup):
        fn(setup()) if setup is not None else fn()
    runs: list[float] = []
    result = None
    for _ in range(repeat):
        arg = setup() if setup is not None else None
        t0 = time.perf_counter()
        result = fn(arg) if setup is not None else fn()
        runs.append(time.perf_counter() - t0)
    return Timing(statistics.median(runs), runs, result)


# ----------------------------------------------------------------------------- memory
def _tree_rss(proc: Any, include_children: bool) -> int:
    import psutil

    procs = [proc]
    if include_children:
        try:
            procs += proc.children(recursive=True)
        except psutil.Error:
            pass
    total = 0
    for p in procs:
        try:
            total += p.memory_info().rss
        except psutil.Error:  # exited between listing and reading
            pass
    return total


class PeakRSS:
    """Sample the resident memory of a process and (by default) all its descendants.

    Use as a context manager around the measured work; a daemon thread samples every
    ``interval`` seconds. The peak is the largest *sum* over the tree seen in one sample, which
    is what "client + workers" peak RSS means for a LocalCluster (workers and nannies are
    children of the client process).

    Parameters
    ----------
    pid : int, optional
        Process to watch; default: this process.
    interval : float
        Sampling period in seconds.
    include_children : bool
        Add the RSS of every descendant process.

    Attributes
    ----------
    peak_bytes : int
        Peak tree RSS seen (0 before the first sample).
    baseline_bytes : int
        Tree RSS at start.
    samples : int
        Number of samples taken.
    """

    def __init__(self, pid: int | None = None, interval: float = 0.02,
                 include_children: bool = True) -> None:
        import psutil

        self.proc = psutil.Process(pid if pid is not None else os.getpid())
        self.interval = interval
        self.include_children = include_children
        self.peak_bytes = 0
        self.baseline_bytes = 0
        self.peak_processes = 0
        self.samples = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def sample(self) -> int:
        """Take one sample now; return the tree RSS in bytes."""
        import psutil

        try:
            rss = _tree_rss(self.proc, self.include_children)
            nproc = 1 + (len(self.proc.children(recursive=True)) if self.include_children else 0)
        except psutil.Error:
            return 0
        self.samples += 1
        if rss > self.peak_bytes:
            self.peak_bytes = rss
        self.peak_processes = max(self.peak_processes, nproc)
        return rss

    def _run(self) -> None:
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(self.interval)

    def start(self) -> PeakRSS:
        """Start sampling in a background thread."""
        self.baseline_bytes = self.sample()
        self._thread = threading.Thread(target=self._run, name="PeakRSS", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> int:
        """Stop sampling (one last sample first); return the peak in bytes."""
        self.sample()
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        return self.peak_bytes

    def __enter__(self) -> PeakRSS:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def as_dict(self) -> dict[str, Any]:
        """``{"peak_rss_bytes", "peak_rss_mib", "baseline_rss_mib", "samples", ...}``."""
        return {"peak_rss_bytes": self.peak_bytes,
                "peak_rss_mib": round(self.peak_bytes / 2**20, 1),
                "baseline_rss_mib": round(self.baseline_bytes / 2**20, 1),
                "peak_processes": self.peak_processes, "samples": self.samples,
                "interval_s": self.interval, "include_children": self.include_children}


@dataclass
class ProcessResult:
    """A finished child process with the peak RSS of its tree."""

    returncode: int
    stdout: str
    stderr: str
    wall_s: float
    peak_rss_bytes: int
    extra: dict[str, Any] = field(default_factory=dict)


def run_with_peak_rss(cmd: Sequence[str], *, interval: float = 0.02, timeout: float | None = None,
                      env: Mapping[str, str] | None = None, cwd: str | os.PathLike | None = None,
                      include_children: bool = True) -> ProcessResult:
    """Run ``cmd`` and measure the peak RSS of the child and its descendants.

    Parameters
    ----------
    cmd : sequence of str
        The command (no shell).
    interval : float
        Sampling period in seconds.
    timeout : float, optional
        Kill the child (and its tree) after this many seconds; raises ``subprocess.TimeoutExpired``.
    env, cwd
        Passed to :class:`subprocess.Popen`.
    include_children : bool
        Sum the child's descendants (e.g. its dask workers) too.
    """
    import psutil

    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        t0 = time.perf_counter()
        proc = subprocess.Popen(list(cmd), stdout=out, stderr=err, text=True,
                                env=dict(env) if env is not None else None, cwd=cwd)
        sampler = PeakRSS(proc.pid, interval=interval, include_children=include_children)
        sampler.start()
        try:
            rc = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            for child in psutil.Process(proc.pid).children(recursive=True):
                child.kill()
            proc.kill()
            proc.wait()
            sampler.stop()
            raise
        wall = time.perf_counter() - t0
        sampler.stop()
        out.seek(0)
        err.seek(0)
        return ProcessResult(rc, out.read(), err.read(), wall, sampler.peak_bytes,
                             {"samples": sampler.samples, "peak_processes": sampler.peak_processes})


# ----------------------------------------------------------------------------- throughput
def mb_per_s(nbytes: float, seconds: float) -> float:
    """Throughput in MB/s (10**6 bytes per second) of uncompressed data."""
    return nbytes / seconds / 1e6 if seconds > 0 else math.inf


def mpix_per_s(npixels: float, seconds: float) -> float:
    """Throughput in Mpixel/s (10**6 pixels or voxels per second)."""
    return npixels / seconds / 1e6 if seconds > 0 else math.inf


def ratio(value: float | None, baseline: float | None) -> float | None:
    """``value / baseline`` (both from the same run); None when either is missing or 0."""
    if value is None or baseline is None or baseline == 0:
        return None
    return float(value) / float(baseline)


def _target_met(r: float | None, target: str | None) -> bool | None:
    if r is None or not target:
        return None
    t = target.replace(" ", "")
    for op, fn in ((">=", lambda a, b: a >= b), ("<=", lambda a, b: a <= b),
                   (">", lambda a, b: a > b), ("<", lambda a, b: a < b)):
        if t.startswith(op):
            return bool(fn(r, float(t[len(op):].rstrip("x"))))
    raise ValueError(f"target={target!r} must look like '>=5' or '<=2.5'")


def summary_row(what: str, value: float | None, unit: str, *, baseline: str | None = None,
                baseline_value: float | None = None, target: str | None = None,
                better: str = "higher", note: str = "") -> dict[str, Any]:
    """One headline row for ``payload["summary"]`` (collected by ``run_all.py``).

    Parameters
    ----------
    what : str
        What was measured, e.g. ``"filter_map Max, 8 slices 1024^2 f32"``.
    value : float
        The measurement, in ``unit``.
    unit : str
        ``"MB/s"``, ``"patches/s"``, ``"s"``, ``"MiB"``...
    baseline : str, optional
        Name of the baseline (``"CAREamics 0.3.5"``, ``"dask read"``...).
    baseline_value : float, optional
        The baseline's measurement in the same unit, from the same run.
    target : str, optional
        Target for the ratio, e.g. ``">=5"`` (speed-up) or ``"<=2.5"`` (cost).
    better : {"higher", "lower"}
        How to read ``value`` (and the ratio).
    note : str
        Free text.
    """
    if better not in ("higher", "lower"):
        raise ValueError(f"better={better!r} must be 'higher' or 'lower'")
    r = ratio(value, baseline_value)
    return {"what": what, "value": value, "unit": unit, "baseline": baseline,
            "baseline_value": baseline_value, "ratio": r, "target": target,
            "met": _target_met(r, target), "better": better, "note": note}


# ----------------------------------------------------------------------------- output
def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, bool):
        return "yes" if v else "NO"
    if isinstance(v, float):
        if math.isinf(v) or math.isnan(v):
            return str(v)
        a = abs(v)
        if a >= 1000:
            return f"{v:,.0f}"
        if a >= 100:
            return f"{v:.0f}"
        if a >= 10:
            return f"{v:.1f}"
        if a >= 0.01 or a == 0:
            return f"{v:.3g}"
        return f"{v:.2e}"
    return str(v)


def print_table(title: str, rows: Sequence[Mapping[str, Any]],
                columns: Sequence[str] | None = None) -> None:
    """Print ``rows`` (dicts) as a rich table; ``columns`` defaults to the first row's keys."""
    if not rows:
        print(f"{title}: (no rows)")
        return
    cols = list(columns) if columns is not None else list(rows[0].keys())
    try:
        from rich.console import Console
        from rich.table import Table
    except ImportError:  # plain fallback (e.g. inside a peer venv)
        print(title)
        print(" | ".join(cols))
        for r in rows:
            print(" | ".join(_fmt(r.get(c)) for c in cols))
        return
    table = Table(title=title, show_lines=False)
    for c in cols:
        table.add_column(c, overflow="fold")
    for r in rows:
        table.add_row(*(_fmt(r.get(c)) for c in cols))
    Console(width=max(120, shutil.get_terminal_size((160, 40)).columns)).print(table)


def _json_default(o: Any) -> Any:
    try:
        import numpy as np
    except ImportError:  # pragma: no cover
        np = None
    if np is not None:
        if isinstance(o, np.generic):
            return o.item()
        if isinstance(o, np.ndarray):
            return o.tolist()
    if isinstance(o, Path):
        return str(o)
    if isinstance(o, (set, tuple)):
        return list(o)
    return str(o)


def write_results(name: str, payload: Mapping[str, Any],
                  results_dir: str | os.PathLike | None = None) -> Path:
    """Write ``<results_dir>/<name>.json`` with a timestamp, the machine and the versions.

    Parameters
    ----------
    name : str
        Benchmark name (file stem), e.g. ``"baselines"``.
    payload : mapping
        The results; ``machine``, ``versions`` and ``threads`` are added when absent.
    results_dir : path, optional
        Default ``benchmarks/results`` (env ``PATCHSIEVE_BENCH_RESULTS`` overrides).

    Returns
    -------
    pathlib.Path
        The written file.
    """
    if not name or "/" in name or name.startswith("."):
        raise ValueError(f"name={name!r} must be a plain file stem such as 'baselines'")
    out_dir = Path(results_dir or os.environ.get("PATCHSIEVE_BENCH_RESULTS") or RESULTS_DIR)
    out_dir.mkdir(parents=True, exist_ok=True)
    doc = {"name": name,
           "timestamp": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
           "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]) if sys.argv else None}
    doc.update(payload)
    doc.setdefault("machine", machine_info())
    doc.setdefault("versions", versions())
    doc.setdefault("threads", thread_settings())
    path = out_dir / f"{name}.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(doc, indent=1, default=_json_default, allow_nan=True))
    tmp.replace(path)
    return path


# ----------------------------------------------------------------------------- other venvs
def venv_python(venv: str | os.PathLike) -> Path:
    """The interpreter of a virtualenv (``bin/python`` or ``Scripts/python.exe``)."""
    v = Path(venv)
    for cand in (v / "bin" / "python", v / "Scripts" / "python.exe"):
        if cand.exists():
            return cand
    return v / "bin" / "python"


def run_venv_driver(venv: str | os.PathLike, driver: str | os.PathLike, args: Sequence[str], *,
                    setup_hint: str, timeout: float | None = None,
                    env: Mapping[str, str] | None = None) -> dict[str, Any] | None:
    """Run ``driver`` with the python of ``venv``; parse the one JSON document it prints.

    Returns None (and prints why) when the venv is missing, the driver fails or prints no JSON.
    The child's peak tree RSS is added as ``driver_peak_rss_bytes``.
    """
    py = venv_python(venv)
    if not py.exists():
        print(f"SKIP: no virtualenv at {venv} ({setup_hint})", flush=True)
        return None
    full_env = dict(os.environ)
    full_env.pop("PYTHONPATH", None)  # never leak the project venv's packages
    full_env.setdefault("PYTHONUNBUFFERED", "1")
    if env:
        full_env.update(env)
    try:
        res = run_with_peak_rss([str(py), str(driver), *args], timeout=timeout, env=full_env,
                                cwd=str(BENCH_DIR))
    except subprocess.TimeoutExpired:
        print(f"SKIP: {Path(driver).name} ran past timeout={timeout} s", flush=True)
        return None
    if res.returncode != 0:
        tail = "\n".join(res.stderr.strip().splitlines()[-15:])
        print(f"SKIP: {Path(driver).name} failed (exit {res.returncode}):\n{tail}", flush=True)
        return None
    text = res.stdout.strip()
    start = text.find("{")
    try:
        doc = json.loads(text[start:]) if start >= 0 else None
    except json.JSONDecodeError as exc:
        print(f"SKIP: {Path(driver).name} printed no valid JSON ({exc})", flush=True)
        return None
    if doc is None:
        print(f"SKIP: {Path(driver).name} printed no JSON", flush=True)
        return None
    doc["driver_peak_rss_bytes"] = res.peak_rss_bytes
    doc["driver_wall_s"] = res.wall_s
    return doc


def _thread_env(threads: int | None) -> dict[str, str]:
    return {} if threads is None else {"OMP_NUM_THREADS": str(threads),
                                       "MKL_NUM_THREADS": str(threads)}


def run_careamics(phases: Sequence[str], inputs: Mapping[str, Any], *,
                  venv: str | os.PathLike | None = None, repeat: int = 3,
                  threads: int | None = 1, timeout: float | None = 3600,
                  extra_args: Sequence[str] = ()) -> dict[str, Any] | None:
    """Run ``careamics_driver.py`` inside the CAREamics virtualenv and return its JSON.

    Parameters
    ----------
    phases : sequence of str
        Any of ``"filter_map"``, ``"filter_background"``, ``"dataloader"``, ``"stratified"``.
    inputs : mapping
        ``{"input": path.npy, "axes": "SYX", "patch_size": (64, 64)}`` plus optional
        ``"mask"`` (path.npy, same shape, for Mask), ``"slices"`` (int: use the first n samples),
        ``"ref_channel"``, ``"params"`` (dict of filter thresholds, see the driver's
        ``--params``), ``"export_draws"`` (path.npz for the stratified phase), ``"seed"``,
        ``"num_workers"`` (e.g. ``(0, 2)``), ``"n_patches"``, ``"batch_size"``.
    venv : path, optional
        Default ``benchmarks/.venv-careamics`` (env ``PATCHSIEVE_CAREAMICS_VENV``).
    repeat : int
        Runs per measurement (median reported).
    threads : int or None
        torch intra-op threads and ``OMP_NUM_THREADS`` for the driver (None = leave unset).
    timeout : float
        Seconds before the driver is killed.

    Returns
    -------
    dict or None
        The driver's JSON, or None (with the reason printed) when the venv is missing or the
        driver failed. Layout (per phase under ``doc["phases"]``)::

            {"careamics": "0.3.5", "torch": ..., "threads": {...}, "input": {...},
             "phases": {
               "filter_map": {"max": {"median_s", "runs_s", "MBps", "Mpix_per_s", ...}, ...},
               "filter_background": {"max": {"median_s", "runs_s", "MBps",
                                             "n_patches_before", "n_patches_after", ...}, ...},
               "dataloader": [{"patch_filter": "max", "num_workers": 0,
                               "patches_per_s_median", "patches_per_s_runs",
                               "first_batch_s", "dataset_len", "create_train_dataset_s"}, ...],
               "stratified": {"n_patches_per_epoch", "n_background_regions",
                              "export_draws", ...}},
             "driver_peak_rss_bytes": ..., "driver_wall_s": ...}
    """
    venv = venv or os.environ.get("PATCHSIEVE_CAREAMICS_VENV") or CAREAMICS_VENV
    args = ["--phases", ",".join(phases), "--repeat", str(repeat)]
    args += _inputs_to_args(inputs)
    if threads is not None:
        args += ["--threads", str(threads)]
    args += list(extra_args)
    return run_venv_driver(venv, BENCH_DIR / "careamics_driver.py", args, timeout=timeout,
                           setup_hint="create it with: bash benchmarks/careamics-env.sh",
                           env=_thread_env(threads))


def _inputs_to_args(inputs: Mapping[str, Any]) -> list[str]:
    flags = {"input": "--input", "axes": "--axes", "mask": "--mask", "slices": "--slices",
             "ref_channel": "--ref-channel", "export_draws": "--export-draws", "seed": "--seed",
             "n_patches": "--n-patches", "batch_size": "--batch-size", "weights": "--weights",
             "kind": "--kind", "peers": "--peers", "epochs": "--epochs"}
    args: list[str] = []
    for key, val in inputs.items():
        if val is None:
            continue
        if key in ("patch_size", "num_workers"):
            args += ["--" + key.replace("_", "-"), ",".join(str(int(v)) for v in val)]
        elif key == "params":
            args += ["--params", json.dumps(dict(val))]
        elif key in flags:
            args += [flags[key], ",".join(map(str, val)) if isinstance(val, (list, tuple)) else
                     str(val)]
        else:
            raise ValueError(f"inputs key {key!r} is unknown; use one of "
                             f"{sorted([*flags, 'patch_size', 'num_workers', 'params'])}")
    return args


def run_peers(inputs: Mapping[str, Any], *, peers: Sequence[str] = ("torchio", "monai"),
              venv: str | os.PathLike | None = None, repeat: int = 3, threads: int | None = 1,
              timeout: float | None = 1800,
              extra_args: Sequence[str] = ()) -> dict[str, Any] | None:
    """Run ``peers_driver.py`` in a peer virtualenv (``.venv-peers`` or ``.venv-zarrdataset``).

    Parameters
    ----------
    inputs : mapping
        ``{"input": path (.npy, or .zarr for zarrdataset), "weights": path.npy, "axes": "SYX"
        or "CZYX", "patch_size": ..., "ref_channel": 1, "n_patches": 2048, "num_workers":
        (0, 2), "batch_size": 32, "seed": 0}``.
    peers : sequence of str
        ``"torchio"``, ``"monai"`` (in ``.venv-peers``) or ``"zarrdataset"`` (in its own venv:
        call separately with ``peers=("zarrdataset",)``).
    venv : path, optional
        Default: ``.venv-zarrdataset`` when ``peers == ("zarrdataset",)``, else ``.venv-peers``.

    Returns
    -------
    dict or None
        ``{"versions", "threads", "input", "results": [{"peer": "monai", "num_workers": 0,
        "patches_per_s", "patches_per_s_runs", "first_batch_s", "api", ...}, ...]}``, or None
        (reason printed) when the venv is missing or the driver failed.
    """
    if venv is None:
        venv = ZARRDATASET_VENV if tuple(peers) == ("zarrdataset",) else PEERS_VENV
    args = ["--peers", ",".join(peers), "--repeat", str(repeat)] + _inputs_to_args(inputs)
    if threads is not None:
        args += ["--threads", str(threads)]
    args += list(extra_args)  # e.g. ["--draw-same-chunk"] for zarrdataset
    return run_venv_driver(venv, BENCH_DIR / "peers_driver.py", args, timeout=timeout,
                           setup_hint="create it with: bash benchmarks/peers-env.sh",
                           env=_thread_env(threads))


# ----------------------------------------------------------------------------- CLI conventions
def bench_argparser(description: str):
    """The flags every ``bench_*.py`` accepts (``run_all.py`` passes them through).

    ``--quick`` (small inputs, for a smoke run), ``--large`` (the out-of-core set), ``--repeat``
    (runs per measurement, default 3), ``--cache`` (data cache folder), ``--results`` (output
    folder), ``--threads`` (torch / OMP intra-op threads, default 1), ``--no-careamics`` and
    ``--no-peers`` (skip the subprocess comparisons).
    """
    import argparse

    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("--quick", action="store_true", help="small inputs (smoke run)")
    ap.add_argument("--large", action="store_true", help="the out-of-core (larger than RAM) set")
    ap.add_argument("--repeat", type=int, default=3, help="runs per measurement (median)")
    ap.add_argument("--cache", default=None, help="data cache (default .bench-cache or "
                                                  "$PATCHSIEVE_BENCH_CACHE)")
    ap.add_argument("--results", default=None, help="results folder (default benchmarks/results)")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch intra-op threads and OMP_NUM_THREADS (reported)")
    ap.add_argument("--no-careamics", action="store_true", help="skip the CAREamics subprocess")
    ap.add_argument("--no-peers", action="store_true", help="skip the peer libraries")
    return ap


def set_threads(n: int | None) -> dict[str, Any]:
    """Set torch intra-op threads (when torch is importable) and ``OMP_NUM_THREADS``.

    Environment variables only affect processes started afterwards (DataLoader workers, dask
    workers, drivers); the returned :func:`thread_settings` is what this process runs with.
    """
    if n is not None:
        os.environ["OMP_NUM_THREADS"] = str(n)
        os.environ["MKL_NUM_THREADS"] = str(n)
        try:
            import torch
        except ImportError:
            pass
        else:
            torch.set_num_threads(n)
    return thread_settings()
