"""Scan benchmarks A1 and A2.

A1: wall time of the line loop of a simulated scan in real time (``time_scale = 1``), divided by
    the sum of the simulated devices' own move, exposure and readout times. Goal: at most 1.02.
A2: peak resident memory of a whole scan process for 200 lines and for 2,000 lines (instant
    simulated timing). Goal: the same within 10 %.

    python bench/bench_scan.py [--lines-a1 100] [--skip-a2]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from fluoscan.acquisition.config import FluoscanConfig, load_config, parse_config
from fluoscan.acquisition.scan import run_scan
from fluoscan.config import shipped_config
from fluoscan.simulators.stage_device import trapezoid


class LineClock:
    """A scan progress receiver that records when the loop starts and when each line is queued."""

    def __init__(self) -> None:
        self.started = 0.0
        self.line_times: list[float] = []

    def start(self, total_lines: int, done_lines: int) -> None:
        self.started = time.perf_counter()

    def line_done(self, index: int) -> None:
        self.line_times.append(time.perf_counter())

    def close(self) -> None:
        pass


def demo_config(**changes: dict) -> FluoscanConfig:
    data = load_config(shipped_config("simulated-mouse")).to_dict()
    for section, values in changes.items():
        data[section].update(values)
    return parse_config(data)


def device_time_s(config: FluoscanConfig, home_mm: float = 0.0) -> float:
    """The time the simulated devices need for the line loop: every move, exposure and readout."""
    simulation = config.simulation
    total = 0.0
    position = home_mm
    for target in config.scan.positions_mm():
        segments = trapezoid(position, target, simulation.stage_velocity_mm_s, simulation.stage_acceleration_mm_s2)
        total += sum(segment.duration_s for segment in segments)
        total += config.scan.exposure_s + simulation.readout_s
        position = target
    return total


def bench_a1(n_lines: int) -> dict:
    config = demo_config(scan={"n_lines": n_lines}, simulation={"time_scale": 1.0})
    clock = LineClock()
    with tempfile.TemporaryDirectory() as folder:
        run_scan(config, Path(folder) / "a1.zarr", progress=clock)
    measured_s = clock.line_times[-1] - clock.started
    ideal_s = device_time_s(config)
    return {"lines": n_lines, "measured_s": measured_s, "device_s": ideal_s, "ratio": measured_s / ideal_s}


def memory_child(n_lines: int) -> None:
    """Run one instant scan and print the process's peak resident memory (VmHWM) as JSON."""
    config = demo_config(scan={"n_lines": n_lines, "y_start_mm": 0.0, "step_mm": 0.05}, simulation={"time_scale": 0.0})
    with tempfile.TemporaryDirectory() as folder:
        started = time.perf_counter()
        run_scan(config, Path(folder) / "a2.zarr")
        elapsed = time.perf_counter() - started
    status = Path("/proc/self/status").read_text()
    peak_kib = int(next(line for line in status.splitlines() if line.startswith("VmHWM")).split()[1])
    print(json.dumps({"lines": n_lines, "peak_mib": peak_kib / 1024, "seconds": elapsed}))


def bench_a2() -> list[dict]:
    results = []
    for n_lines in (200, 2000):
        output = subprocess.run(
            [sys.executable, __file__, "--memory-child", str(n_lines)], check=True, capture_output=True, text=True
        ).stdout
        results.append(json.loads(output.strip().splitlines()[-1]))
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lines-a1", type=int, default=100, help="lines of the real-time scan (A1)")
    parser.add_argument("--skip-a2", action="store_true", help="skip the memory benchmark")
    parser.add_argument("--memory-child", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_child:
        memory_child(args.memory_child)
        return

    a1 = bench_a1(args.lines_a1)
    print(
        f"A1 scan loop: {a1['measured_s']:.2f} s for {a1['lines']} lines, devices need {a1['device_s']:.2f} s: "
        f"ratio {a1['ratio']:.4f} (goal <= 1.02)"
    )
    if not args.skip_a2:
        small, large = bench_a2()
        growth = large["peak_mib"] / small["peak_mib"] - 1
        print(
            f"A2 peak memory: {small['peak_mib']:.0f} MiB for {small['lines']} lines ({small['seconds']:.1f} s), "
            f"{large['peak_mib']:.0f} MiB for {large['lines']} lines ({large['seconds']:.1f} s): "
            f"{growth:+.1%} (goal within 10 %)"
        )


if __name__ == "__main__":
    main()
