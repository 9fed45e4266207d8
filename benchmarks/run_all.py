"""Run the benchmark suite: every ``benchmarks/bench_*.py`` in sequence, then a summary table.

    python benchmarks/run_all.py                 # in-memory and <= 4 GB set (make bench)
    python benchmarks/run_all.py --large         # out-of-core set (make bench-large)
    python benchmarks/run_all.py --only baselines --only filters
    python benchmarks/run_all.py --quick         # small inputs, smoke run
    python benchmarks/run_all.py --setup-venvs   # create the CAREamics / peer venvs first
    python benchmarks/run_all.py --summary-only  # rebuild results/summary.md from the JSON

Each script writes ``benchmarks/results/<name>.json`` whose ``summary`` rows (see
``_harness.summary_row``) become one table per benchmark in ``benchmarks/results/summary.md``,
ready to paste into BENCHMARKS.md. A total time budget (``--budget-min``) bounds the run: each
script gets what is left, and scripts not started in time are reported as skipped. Creating the
CAREamics and peer virtualenvs (``--setup-venvs``) is outside the budget.

``--large`` runs the out-of-core set (:data:`LARGE_SET`: ``bench_large.py``) on the one large
cached volume ``large-ram`` (30 GiB, more than this machine's RAM): it checks the free disk
first (and skips with a message when it is too small), generates the volume once into the cache
outside the time budget, and at the end prints the exact command that deletes it (asking first
when stdin is a terminal). The default run leaves the out-of-core scripts out.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _harness as H  # noqa: E402

NO_OFFER_ENV = "PATCHSIEVE_BENCH_NO_DELETE_OFFER"  # as in bench_large.py

BENCH_DIR = H.BENCH_DIR
#: benchmarks run by ``--large`` (the out-of-core set); the default run leaves them out.
#: ``--only NAME --large`` still runs another script's own ``--large`` mode.
LARGE_SET = ("large",)
#: run only when named (``--only scale``, ``make bench-scale``): an hour of 10 TB-scale runs
SCALE_SET = ("scale",)
#: the large cached volume of the out-of-core set (``benchmarks/data.py``)
LARGE_VOLUME = "large-ram"


def discover(only: list[str] | None = None, large: bool | None = None) -> list[Path]:
    """The ``bench_*.py`` scripts, sorted; ``only`` filters by name (``baselines`` or
    ``bench_baselines``).

    Without ``only``, ``large=True`` keeps the out-of-core set (:data:`LARGE_SET`) and
    ``large=False`` leaves it out; ``large=None`` lists every script.
    """
    scripts = sorted(BENCH_DIR.glob("bench_*.py"))
    if not only:
        scripts = [p for p in scripts if p.stem.removeprefix("bench_") not in SCALE_SET]
        if large is None:
            return scripts
        return [p for p in scripts if (p.stem.removeprefix("bench_") in LARGE_SET) == large]
    wanted = {o.removeprefix("bench_").removesuffix(".py") for item in only
              for o in item.split(",") if o}
    known = {p.stem.removeprefix("bench_") for p in scripts}
    unknown = wanted - known
    if unknown:
        raise SystemExit(f"--only {sorted(unknown)}: no such benchmark; choose from "
                         f"{sorted(known)}")
    return [p for p in scripts if p.stem.removeprefix("bench_") in wanted]


def _log_dir() -> Path:
    d = Path(os.environ.get("PATCHSIEVE_BENCH_CACHE") or H.REPO_ROOT / ".bench-cache") / "logs"
    d.mkdir(parents=True, exist_ok=True)
    return d


def accepted_flags(script: Path, flags: list[str]) -> set[str]:
    """Which of ``flags`` the script's ``--help`` mentions (scripts may not take them all)."""
    try:
        out = subprocess.run([sys.executable, str(script), "--help"], capture_output=True,
                             text=True, timeout=120, cwd=str(H.REPO_ROOT)).stdout
    except subprocess.TimeoutExpired:
        return set()
    return {f for f in flags if f in out}


def script_args(script: Path, large: bool, quick: bool, results: Path,
                passthrough: list[str]) -> list[str] | None:
    """The flags for one script, or None when ``--large`` was asked and it has no large mode."""
    ok = accepted_flags(script, ["--large", "--quick", "--results"])
    if large and "--large" not in ok:
        return None
    args = ["--large"] if large else []
    if quick and "--quick" in ok:
        args.append("--quick")
    if "--results" in ok:
        args += ["--results", str(results)]
    return args + passthrough


def run_script(script: Path, args: list[str], timeout: float) -> dict[str, Any]:
    """Run one benchmark script (output streamed and logged); return its status row."""
    log_path = _log_dir() / f"{script.stem}.log"
    cmd = [sys.executable, str(script), *args]
    print(f"\n=== {script.name} {' '.join(args)} (timeout {timeout / 60:.1f} min)", flush=True)
    t0 = time.perf_counter()
    status = "ok"
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                cwd=str(H.REPO_ROOT))
        fired = threading.Event()

        def kill() -> None:
            fired.set()
            proc.kill()

        timer = threading.Timer(timeout, kill)
        timer.start()
        try:
            assert proc.stdout is not None
            for line in proc.stdout:
                sys.stdout.write(line)
                log.write(line)
            rc = proc.wait()
        finally:
            timer.cancel()
        if fired.is_set():
            status = "timeout"
    wall = time.perf_counter() - t0
    if status == "ok" and rc != 0:
        status = f"failed (exit {rc})"
    print(f"=== {script.name}: {status} in {wall:.0f} s (log: {log_path})", flush=True)
    return {"script": script.name, "status": status, "wall_s": wall, "log": str(log_path)}


def prepare_large(cache: str | None = None) -> str | None:
    """Check the disk and generate :data:`LARGE_VOLUME` once (outside the time budget).

    Returns None when the volume is ready, else the reason it is not (printed by the caller).
    """
    import data as D

    problem = D.disk_problem(LARGE_VOLUME, cache)
    if problem:
        return problem
    t0 = time.perf_counter()
    was = D.cached(LARGE_VOLUME, cache) is not None
    print(f"=== {LARGE_VOLUME}: {'cached' if was else 'generating once into the cache'} "
          f"({D.cache_dir(cache)})", flush=True)
    try:
        ds = D.ensure(LARGE_VOLUME, cache)
    except D.InsufficientDiskError as exc:
        return str(exc)
    print(f"=== {LARGE_VOLUME}: ready in {time.perf_counter() - t0:.0f} s, "
          f"{D.dir_size(ds.root) / 1e9:.1f} GB on disk", flush=True)
    return None


def setup_venvs() -> None:
    """Create the CAREamics and peer virtualenvs (idempotent; outside the time budget)."""
    for sh in ("careamics-env.sh", "peers-env.sh"):
        print(f"=== bash benchmarks/{sh}", flush=True)
        rc = subprocess.call(["bash", str(BENCH_DIR / sh)])
        if rc != 0:
            print(f"!! {sh} failed (exit {rc}); the comparisons that need it will be skipped")


# ----------------------------------------------------------------------------- summary
def _cell(v: Any) -> str:
    return H._fmt(v).replace("|", "/")


def load_results(results_dir: Path) -> list[dict[str, Any]]:
    """Every ``*.json`` result document in ``results_dir`` (sorted by name)."""
    docs = []
    for p in sorted(results_dir.glob("*.json")):
        try:
            docs.append(json.loads(p.read_text()))
        except (OSError, ValueError) as exc:
            print(f"!! cannot read {p}: {exc}")
    return docs


def render_summary(docs: list[dict[str, Any]], runs: list[dict[str, Any]] | None = None,
                   command: str | None = None) -> str:
    """Markdown: header (command, machine, versions), one table per benchmark, run status."""
    now = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    lines = ["# patchsieve benchmark results", "",
             f"Generated {now} by `{command or 'python benchmarks/run_all.py'}`.", ""]
    if docs:
        m, v = docs[0].get("machine", {}), docs[0].get("versions", {})
        lines += [f"Machine: {m.get('cpu_model', '?')}, {m.get('cores_logical', '?')} logical "
                  f"cores ({m.get('cores_usable', '?')} usable), "
                  f"{m.get('memory_total_gib', '?')} GiB RAM, {m.get('platform', '?')}.", "",
                  "Versions: " + ", ".join(f"{k} {val}" for k, val in v.items() if val), ""]
    lines += ["Ratios are value / baseline measured in the same run: for throughputs (MB/s, "
              "patches/s) a speed-up, for times (s) a cost. `met` checks the target.", ""]
    for doc in docs:
        rows = doc.get("summary") or [r for r in doc.get("rows") or []
                                      if isinstance(r, dict) and {"what", "value"} <= set(r)]
        thr = doc.get("threads", {})
        torch_thr = thr.get("torch_num_threads") if isinstance(thr, dict) else None
        omp = (thr.get("env") or {}).get("OMP_NUM_THREADS") if isinstance(thr, dict) else None
        lines += [f"## {doc.get('name', '?')}", "",
                  f"`{doc.get('command', '?')}` at {doc.get('timestamp', '?')}; "
                  f"torch threads {torch_thr if torch_thr is not None else '-'}, "
                  f"OMP_NUM_THREADS {omp or 'unset'}.", ""]
        for s in doc.get("skipped") or []:
            lines.append(f"- skipped {s.get('dataset', s.get('what', '?'))}: "
                         f"{s.get('reason', '')}")
        if not rows:
            lines += ["(no summary rows)", ""]
            continue
        lines += ["| what | value | unit | baseline | baseline value | ratio | target | met |",
                  "|---|---:|---|---|---:|---:|---|---|"]
        for r in rows:
            lines.append("| " + " | ".join(_cell(r.get(k)) for k in (
                "what", "value", "unit", "baseline", "baseline_value", "ratio", "target",
                "met")) + " |")
        lines.append("")
    if runs:
        lines += ["## Run status", "", "| script | status | wall s |", "|---|---|---:|"]
        lines += [f"| {r['script']} | {r['status']} | {r['wall_s']:.0f} |" for r in runs]
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Run the suite and write ``results/summary.md``."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--only", action="append", help="benchmark name(s), e.g. baselines")
    ap.add_argument("--large", action="store_true", help="the out-of-core set")
    ap.add_argument("--quick", action="store_true", help="small inputs (smoke run)")
    ap.add_argument("--budget-min", type=float, default=None,
                    help="total time budget (min; default 30, 120 with --large)")
    ap.add_argument("--cache", default=None, help="data cache (default .bench-cache or "
                                                  "$PATCHSIEVE_BENCH_CACHE)")
    ap.add_argument("--results", default=None, help="results folder")
    ap.add_argument("--setup-venvs", action="store_true",
                    help="create the CAREamics and peer venvs first (not timed)")
    ap.add_argument("--summary-only", action="store_true", help="only rebuild summary.md")
    ap.add_argument("--list", action="store_true", help="list the benchmarks and exit")
    args, passthrough = ap.parse_known_args(argv)
    results = Path(args.results or os.environ.get("PATCHSIEVE_BENCH_RESULTS") or H.RESULTS_DIR)
    scripts = discover(args.only, None if args.summary_only else args.large)
    if args.list:
        print("\n".join(p.stem.removeprefix("bench_") for p in scripts))
        return 0
    if args.cache:
        os.environ["PATCHSIEVE_BENCH_CACHE"] = str(args.cache)  # the scripts' data cache too
    budget_min = args.budget_min if args.budget_min is not None else (
        120.0 if args.large else 30.0)
    runs: list[dict[str, Any]] = []
    large_problem = None
    if not args.summary_only:
        if args.setup_venvs:
            setup_venvs()
        if args.large and not args.quick:
            os.environ[NO_OFFER_ENV] = "1"  # the scripts print, run_all offers once at the end
            large_problem = prepare_large(args.cache)
            if large_problem:
                print(f"SKIP the out-of-core set: {large_problem}", flush=True)
        deadline = time.perf_counter() + budget_min * 60
        for script in scripts:
            left = deadline - time.perf_counter()
            if large_problem:
                runs.append({"script": script.name, "status": "skipped (disk)", "wall_s": 0.0})
                continue
            if left < 10:
                runs.append({"script": script.name, "status": "skipped (budget)", "wall_s": 0.0})
                continue
            flags = script_args(script, args.large, args.quick, results, passthrough)
            if flags is None:
                runs.append({"script": script.name, "status": "skipped (no --large mode)",
                             "wall_s": 0.0})
                continue
            runs.append(run_script(script, flags, left))
    results.mkdir(parents=True, exist_ok=True)
    docs = load_results(results)
    cmd = " ".join(["python benchmarks/run_all.py", *(argv if argv is not None else sys.argv[1:])])
    out = results / "summary.md"
    out.write_text(render_summary(docs, runs, cmd))
    print(f"\nwrote {out}")
    if args.large and not args.quick and not args.summary_only and not large_problem:
        import data as D

        D.offer_delete([LARGE_VOLUME], args.cache)
    bad = [r for r in runs if r["status"] not in ("ok", "skipped (no --large mode)",
                                                  "skipped (disk)")]
    for r in bad:
        print(f"!! {r['script']}: {r['status']}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
