"""Run every benchmark in bench/ and print their figures, one script after the other.

    python bench/run.py [--only scan,unmixing] [--timeout-s 1800] [--log FILE]

The scripts run as separate processes, so that one benchmark's memory and threads do not disturb the
next, in this order: bench_scan.py (A1, A2), bench_unmixing.py (U1-U3, D1), bench_quality.py
(phantom, Samson, sweep). A script that is missing is reported and skipped. The exit status is 0 when
every script ran to its end, else 1; whether a figure meets its goal is printed by the script itself.
Expect several minutes on a 2-core machine; bench/RESULTS.md records the figures and their goals.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import TextIO

BENCH_DIR = Path(__file__).resolve().parent
BENCHMARKS = {
    "scan": "bench_scan.py",
    "unmixing": "bench_unmixing.py",
    "quality": "bench_quality.py",
}


def run_script(script: Path, timeout_s: float, log_file: TextIO | None) -> tuple[int | None, float]:
    """Run one script, copying its output to stdout and ``log_file``; return its exit status (None on timeout) and duration."""
    started = time.monotonic()
    with subprocess.Popen(
        [sys.executable, str(script)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=BENCH_DIR.parent
    ) as process:
        # A script that hangs without printing would block the read loop, so a timer ends it.
        watchdog = threading.Timer(timeout_s, process.kill)
        watchdog.start()
        try:
            for line in process.stdout:
                sys.stdout.write(line)
                if log_file is not None:
                    log_file.write(line)
            status = process.wait()
        finally:
            timed_out = not watchdog.is_alive()
            watchdog.cancel()
    return (None if timed_out else status), time.monotonic() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", help=f"comma-separated benchmarks to run, of {', '.join(BENCHMARKS)}; default all")
    parser.add_argument("--timeout-s", type=float, default=1800.0, help="longest time one script may run, in seconds")
    parser.add_argument("--log", type=Path, help="also write every script's output to this file")
    args = parser.parse_args()

    chosen = list(BENCHMARKS) if args.only is None else [name.strip() for name in args.only.split(",")]
    unknown = [name for name in chosen if name not in BENCHMARKS]
    if unknown:
        parser.error(f"unknown benchmarks {unknown}; choose from {', '.join(BENCHMARKS)}")

    summary = []
    log_file = args.log.open("w") if args.log else None
    try:
        for name in chosen:
            script = BENCH_DIR / BENCHMARKS[name]
            print(f"=== {script.name}", flush=True)
            if not script.exists():
                print(f"{script.name} is missing; skipped", flush=True)
                summary.append((script.name, "missing", 0.0))
                continue
            status, seconds = run_script(script, args.timeout_s, log_file)
            outcome = "timed out" if status is None else ("finished" if status == 0 else f"failed with status {status}")
            summary.append((script.name, outcome, seconds))
    finally:
        if log_file is not None:
            log_file.close()

    print("=== summary")
    for script_name, outcome, seconds in summary:
        print(f"{script_name}: {outcome} after {seconds:.0f} s")
    return 0 if all(outcome == "finished" for _, outcome, _ in summary) else 1


if __name__ == "__main__":
    sys.exit(main())
