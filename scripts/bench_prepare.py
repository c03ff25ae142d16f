"""Benchmark of the preparation pipeline on a generated Criteo-format file.

    python scripts/bench_prepare.py                 # 2,000,000 lines, all cores
    python scripts/bench_prepare.py --lines 500000 --workers 1

Generates ``train.txt`` (40 tab-separated fields per line, Criteo Kaggle cardinalities, Zipf
categories, missing values, negative counts) in a temporary directory, then times, each in its own
subprocess:

* ``pandas.read_csv(path, sep="\\t", header=None)`` - the reference: parsing only, no vocabulary,
  no split, nothing written;
* ``CriteoKaggle(path, protocol=dlrm).prepare()`` - parse, split, vocabulary, encode, cache.

For each: lines/s (of the operation itself, imports excluded), wall and CPU seconds, peak memory
of the whole process tree (sum of PSS over the process and its workers, sampled every 20 ms from
/proc, so copy-on-write pages are not counted twice; and the largest single process's max RSS from
``getrusage(RUSAGE_CHILDREN)``), the finished cache's size, and the time projected for the
45,840,617 lines of the real ``train.txt``. Targets: >= 300,000 lines/s and peak memory < 3x the
cache size.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
KAGGLE_LINES = 45_840_617

RUNNER = r"""
import json, resource, subprocess, sys, time
t = time.perf_counter()
out = subprocess.run(sys.argv[1:], capture_output=True, text=True)
wall = time.perf_counter() - t
ru = resource.getrusage(resource.RUSAGE_CHILDREN)
print(json.dumps({"rc": out.returncode, "stdout": out.stdout, "stderr": out.stderr[-3000:], "wall": wall,
                  "maxrss_kib": ru.ru_maxrss, "cpu": ru.ru_utime + ru.ru_stime}))
"""

PANDAS = r"""
import sys, time
import pandas as pd
t, c = time.perf_counter(), time.process_time()
df = pd.read_csv(sys.argv[1], sep="\t", header=None)
print("SECONDS", time.perf_counter() - t, time.process_time() - c, len(df))
"""

PREPARE = r"""
import resource, sys, time
from mlet.data.criteo import CriteoKaggle
src = CriteoKaggle(sys.argv[1], cache_dir=sys.argv[2], protocol="dlrm", progress=False,
                   workers=int(sys.argv[3]) or None)
def cpu():  # this process and its (finished) worker processes
    a, b = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return a.ru_utime + a.ru_stime + b.ru_utime + b.ru_stime
t, c = time.perf_counter(), cpu()
path = src.prepare()
print("SECONDS", time.perf_counter() - t, cpu() - c, path)
"""


def _children(pid: int) -> list[int]:
    out = []
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{tid}/children") as f:
                out += [int(c) for c in f.read().split()]
    except OSError:
        pass
    return out


def _tree(pid: int) -> list[int]:
    todo, seen = [pid], []
    while todo:
        p = todo.pop()
        seen.append(p)
        todo += _children(p)
    return seen


def _pss_kib(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def measured(args: list[str], env: dict) -> dict:
    """Run ``args`` under the runner, sampling the summed PSS of the process tree."""
    proc = subprocess.Popen([sys.executable, "-c", RUNNER, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env)
    peak = [0]
    done = threading.Event()

    def sample():
        while not done.is_set():
            total = sum(_pss_kib(p) for p in _tree(proc.pid)[1:])  # the runner itself is not measured
            peak[0] = max(peak[0], total)
            time.sleep(0.02)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    stdout, stderr = proc.communicate()
    done.set()
    thread.join()
    result = json.loads(stdout)
    if result["rc"] != 0:
        raise SystemExit(f"{args[:3]} failed:\n{result['stderr']}\n{stderr}")
    line = next(x for x in result["stdout"].splitlines() if x.startswith("SECONDS"))
    result["seconds"] = float(line.split()[1])
    result["op_cpu"] = float(line.split()[2])
    result["output"] = line.split(None, 3)[3]
    result["peak_pss_kib"] = peak[0]
    return result


def du(path: Path) -> int:
    return sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--lines", type=int, default=2_000_000)
    ap.add_argument("--workers", default="0",
                    help="prepare's worker processes, comma-separated for several runs (0: one per core)")
    ap.add_argument("--dir", type=Path, default=None, help="work in this folder (kept) instead of a temporary one")
    args = ap.parse_args()

    work = args.dir or Path(tempfile.mkdtemp(prefix="mlet-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    raw = work / "train.txt"
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    try:
        from criteo_gen import write_criteo

        if not raw.exists() or sum(1 for _ in open(raw, "rb")) != args.lines:
            t = time.perf_counter()
            write_criteo(raw, args.lines, seed=0)
            print(f"generated {args.lines:,} lines ({raw.stat().st_size / 2**20:,.0f} MiB) in {time.perf_counter() - t:.0f} s",
                  file=sys.stderr)
        load_before = os.getloadavg()
        ref = measured([sys.executable, "-c", PANDAS, str(raw)], env)
        runs = []
        for w in [int(x) for x in str(args.workers).split(",")]:
            cache = work / f"cache-{w}"
            shutil.rmtree(cache, ignore_errors=True)
            r = measured([sys.executable, "-c", PREPARE, str(raw), str(cache), str(w)], env)
            r["cache_path"] = Path(r["output"])
            r["cache_bytes"] = du(r["cache_path"])
            r["meta"] = json.loads((r["cache_path"] / "meta.json").read_text())
            runs.append(r)
        load_after = os.getloadavg()

        def row(name: str, r: dict, size: int | None) -> list[str]:
            rate = args.lines / r["seconds"]
            peak = r["peak_pss_kib"] * 1024
            return [
                name,
                f"{rate:,.0f}",
                f"{r['seconds']:.1f}",
                f"{r['op_cpu']:.1f}",
                f"{r['op_cpu'] / args.lines * 1e6:.2f}",
                f"{peak / 2**20:,.0f}",
                f"{r['maxrss_kib'] / 1024:,.0f}",
                "-" if size is None else f"{size / 2**20:,.0f}",
                "-" if size is None else f"{peak / size:.2f}",
                f"{KAGGLE_LINES / rate / 60:.1f} min",
            ]

        head = ["", "lines/s", "time s", "CPU s", "CPU us/line", "peak PSS MiB (tree)", "max RSS MiB (1 process)",
                "cache MiB", "peak/cache", "projected 45.8M lines"]
        rows = [row("pandas.read_csv (reference)", ref, None)]
        for r in runs:
            m = r["meta"]
            rows.append(row(f"prepare, workers={m['workers']} ({m['segments']} segments)", r, r["cache_bytes"]))
        widths = [max(len(h), *(len(x[i]) for x in rows)) for i, h in enumerate(head)]
        print(f"\n{args.lines:,} Criteo lines ({raw.stat().st_size / 2**20:,.0f} MiB), {os.cpu_count()} CPU cores, "
              f"load average {load_before[0]:.1f} -> {load_after[0]:.1f}")
        print("| " + " | ".join(h.ljust(w) for h, w in zip(head, widths)) + " |")
        print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
        for x in rows:
            print("| " + " | ".join(c.ljust(w) for c, w in zip(x, widths)) + " |")
        for r in runs:
            m = r["meta"]
            rate = args.lines / r["seconds"]
            cores = min(os.cpu_count() or 1, m["workers"], m["segments"])  # processes that can run at once
            free = args.lines / (r["op_cpu"] / cores)
            print(f"\nworkers={m['workers']}: prepare / read_csv speed {ref['seconds'] / r['seconds']:.2f}x; phases (s): "
                  + ", ".join(f"{k} {v:.1f}" for k, v in m["phase_seconds"].items()))
            print(f"  CPU time / {cores} (as if on {cores} otherwise idle cores): ~{free:,.0f} lines/s, "
                  f"45.8M lines in ~{KAGGLE_LINES / free / 60:.1f} min")
            print(f"  target >= 300,000 lines/s: {'met' if rate >= 300_000 else 'NOT met'} ({rate:,.0f}); "
                  f"target peak < 3x cache: {'met' if r['peak_pss_kib'] * 1024 < 3 * r['cache_bytes'] else 'NOT met'} "
                  f"({r['peak_pss_kib'] * 1024 / r['cache_bytes']:.2f}x)")
    finally:
        if args.dir is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
