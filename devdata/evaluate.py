"""Evaluate a model on the labeled dev set with `btembed probe`: trained vs random init vs raw 32x32 pixels.

python -m devdata.evaluate MODEL --dev DEV [--seeds 0 1 2] [--jobs 2] [--out RESULTS.json]
Every number comes from `btembed probe` commands, printed beside it so anyone can reproduce it; with several
seeds (folds, inner split and random init all change with the seed) each number is their mean. --name records
the commands with the name the model will ship under, so a staged copy can be measured before it is shipped.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from pathlib import Path

FEATURES = ("model", "random-init", "raw32")
# Row key -> where `btembed probe --json` keeps that accuracy.
METRICS = {"linear_top1": ("linear", "top1"), "linear_top5": ("linear", "top5"), "knn_top1": ("knn", "top1"),
           "knn_majority5_top1": ("knn", "majority5_top1")}


class ProbeFailed(Exception):
    """A `btembed probe` command that exited with an error."""


class ProbeStopped(Exception):
    """A probe that was not started (or was terminated) because another probe failed."""


class RunningProbes:
    """The probe processes in flight; after stop() none starts and those running are terminated.

    Starting and stopping share one lock: a probe whose thread was about to launch when another failed would
    otherwise start after the terminate sweep and run to its end.
    """

    def __init__(self):
        self._lock = threading.Lock()
        self._procs: set = set()
        self._stopped = False

    @property
    def stopped(self) -> bool:
        """True once stop() was called."""
        return self._stopped

    def start(self, argv: list[str], env: dict | None) -> subprocess.Popen:
        """Launch one probe process, unless stop() was called."""
        with self._lock:
            if self._stopped:
                raise ProbeStopped
            proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
            self._procs.add(proc)
            return proc

    def finished(self, proc: subprocess.Popen) -> None:
        """Forget a process that has exited."""
        with self._lock:
            self._procs.discard(proc)

    def stop(self) -> None:
        """Refuse new probes and terminate those in flight."""
        with self._lock:
            self._stopped = True
            for proc in self._procs:
                proc.terminate()


def probe(task_dir: Path, model: str, features: str, folds: int, seed: int = 0, name: str = "",
          threads: int = 0, running: RunningProbes | None = None) -> tuple[dict, list[str]]:
    """Run `btembed probe --json` once; returns its JSON and the command line (with `name` for the model if set).

    Launched through `running`, so a caller can stop it when another probe has failed.
    """
    args = ["probe", str(task_dir), "--model", model, "--features", features,
            "--folds", str(folds), "--seed", str(seed), "--no-catalog", "--json"]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)} if threads else None
    cmd = ["btembed", *args]
    if name:
        cmd[cmd.index("--model") + 1] = name
    running = running or RunningProbes()
    proc = running.start([sys.executable, "-m", "btembed", *args], env)
    try:
        stdout, stderr = proc.communicate()
    finally:
        running.finished(proc)
    if proc.returncode != 0:
        # btembed ends with its one-line error (a traceback with the exception): that line says why.
        why = (stderr.strip().splitlines() or ["no message"])[-1][-500:]
        raise ProbeFailed(f"{' '.join(cmd)} failed (exit {proc.returncode}): {why}")
    return json.loads(stdout), cmd


def scores(result: dict) -> dict:
    """The four accuracies of one `btembed probe --json` result."""
    return {key: result[part][name] for key, (part, name) in METRICS.items()}


def seeded_row(task: str, features: str, runs: list[tuple[int, dict, list[str]]]) -> dict:
    """One table row: the mean over seeds of each accuracy, with the per-seed values and commands kept."""
    per_seed = [scores(result) for _, result, _ in runs]
    result = runs[0][1]
    row = {"task": task, "features": features, **{k: statistics.fmean(s[k] for s in per_seed) for k in METRICS},
           "classes": len(result.get("classes", [])) or result.get("dataset", {}).get("classes"),
           "images": result.get("dataset", {}).get("images"), "command": " ".join(runs[0][2]),
           "seeds": [seed for seed, _, _ in runs]}
    if len(runs) > 1:
        row["per_seed"] = {k: [s[k] for s in per_seed] for k in METRICS}
        row["commands"] = [" ".join(cmd) for _, _, cmd in runs]
    return row


def spread(row: dict, key: str) -> str:
    """' ± sd' over seeds in points, or nothing for a single seed."""
    values = row.get("per_seed", {}).get(key, [])
    return f" ± {100 * statistics.stdev(values):.1f}" if len(values) > 1 else ""


def markdown(rows: list[dict]) -> str:
    """The results as a markdown table (accuracies in percent; mean ± sd when several seeds ran)."""
    lines = ["| task | classes / images | features | linear top-1 | kNN top-1 (w. k=20) | kNN majority k=5 |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['task']} | {r['classes']} / {r['images']} | {r['features']} | "
                     f"{100 * r['linear_top1']:.1f}{spread(r, 'linear_top1')} | "
                     f"{100 * r['knn_top1']:.1f}{spread(r, 'knn_top1')} | "
                     f"{100 * r['knn_majority5_top1']:.1f}{spread(r, 'knn_majority5_top1')} |")
    return "\n".join(lines)


def write_results(out: Path, model: str, dev: Path, seeds: list[int], rows: list[dict]) -> None:
    """The rows so far and their commands as JSON (replaced atomically, so a reader never sees half a file)."""
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(json.dumps({"model": model, "dev": str(dev), "seeds": seeds, "rows": rows}, indent=2) + "\n")
    tmp.replace(out)


def main(argv=None) -> int:
    """Probe every task folder of the dev set with the three feature kinds; print and save the table."""
    ap = argparse.ArgumentParser(prog="python -m devdata.evaluate", description=__doc__.splitlines()[0])
    ap.add_argument("model", help="model folder, registry name or Hub repo id (anything `btembed probe --model` takes)")
    ap.add_argument("--dev", type=Path, required=True,
                    help="the dev set: one labeled task folder per task (built by python -m devdata.devset DEV)")
    ap.add_argument("--tasks", nargs="*", default=None, help="task folders under --dev (default: all)")
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0],
                    help="probe once per seed and report the mean (a single reading moves by ~1-2 points)")
    ap.add_argument("--features", nargs="*", default=list(FEATURES), choices=FEATURES)
    ap.add_argument("--name", default="", help="model name to record in the commands (default: MODEL as given)")
    ap.add_argument("--jobs", type=int, default=1,
                    help="probes run at once, each with OMP_NUM_THREADS = cpu_count / jobs (small L-BFGS fits are "
                         "single-threaded, so one probe leaves cores idle)")
    ap.add_argument("--out", type=Path, default=None, help="write the rows and commands as JSON here")
    args = ap.parse_args(argv)
    if len(set(args.seeds)) != len(args.seeds):
        ap.error(f"--seeds repeats a seed: {args.seeds}")
    if args.jobs < 1:
        ap.error(f"--jobs must be at least 1, got {args.jobs}")
    if not args.dev.is_dir():
        ap.error(f"--dev {args.dev} is not a folder (build it with python -m devdata.devset {args.dev})")
    tasks = args.tasks or sorted(p.name for p in args.dev.iterdir() if p.is_dir() and p.name != "licenses")
    cells = [(task, features) for task in tasks for features in args.features]
    threads = max(1, (os.cpu_count() or 1) // args.jobs) if args.jobs > 1 else 0
    rows: dict[tuple[str, str], dict] = {}
    runs: dict[tuple[str, str], dict[int, tuple]] = {cell: {} for cell in cells}
    seconds = {cell: 0.0 for cell in cells}  # probe time summed over seeds (not wall time: probes overlap)
    saving = threading.Lock()  # one writer at a time: write_results goes through a single temporary file
    running = RunningProbes()  # probe processes in flight, stopped when another probe fails

    def measure(job: tuple[str, str, int]) -> None:
        """One probe; when it is the last seed of its (task, features) cell, the row is built and saved."""
        task, features, seed = job
        cell = (task, features)
        start = time.monotonic()
        try:
            result = probe(args.dev / task, args.model, features, args.folds, seed, args.name, threads, running)
        except ProbeStopped:  # a job that was already picked up when another probe failed
            return
        with saving:
            runs[cell][seed] = result
            seconds[cell] += time.monotonic() - start
            if len(runs[cell]) < len(args.seeds):
                return
            row = seeded_row(task, features, [(s, *runs[cell][s]) for s in args.seeds])
            row["seconds"] = round(seconds[cell], 1)
            rows[cell] = row
            if args.out:  # after every row, so a long evaluation that stops keeps what it measured
                write_results(args.out, args.name or args.model, args.dev, args.seeds,
                              [rows[c] for c in cells if c in rows])
        print(f"{task:12s} {features:12s} linear {100 * row['linear_top1']:.1f}{spread(row, 'linear_top1')} % "
              f"knn {100 * row['knn_top1']:.1f}{spread(row, 'knn_top1')} % ({row['seconds']} s)",
              file=sys.stderr, flush=True)

    # Every (task, features, seed) probe is one job, the model's first (so a run that is going badly shows it
    # early); the threads only wait on probe subprocesses, and each save lists the finished rows in table order.
    jobs = [(task, features, seed) for features in args.features for task in tasks for seed in args.seeds]
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        futures = [pool.submit(measure, job) for job in jobs]
        done, _ = wait(futures, return_when=FIRST_EXCEPTION)
        failed = next((f.exception() for f in futures if f in done and f.exception()), None)
        if failed is not None:
            # A failed probe fails the evaluation: queued probes never start, those in flight are stopped, and
            # the rows finished so far stay in --out.
            running.stop()
            pool.shutdown(wait=False, cancel_futures=True)
    if failed is not None:
        if not isinstance(failed, ProbeFailed):
            raise failed
        kept = f"; the rows finished before it are in {args.out}" if args.out and rows else ""
        print(f"error: {failed}{kept}", file=sys.stderr)
        return 1
    print(markdown([rows[c] for c in cells]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
