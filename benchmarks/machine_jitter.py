"""Benchmark: how steady the machine's CPUs are, so a latency tail can be read against them.

Why: a service's p99 on a shared or virtual machine is bounded by the machine as well as by
the service. When the host takes the CPUs away for a while, every process in the guest
slows down at the same moment, and any service loaded above a small share of its capacity
queues requests for that long. This script measures those moments with no service at all.

What it does: calibrates a fixed piece of CPU work (SHA-256 over a 4 KiB buffer, repeated
until the median run takes ``--work-ms``), then starts ``--processes`` processes (default:
one per CPU) that each run it ``--rate`` times a second for ``--seconds``, all on one
schedule (task i of every process is due at the same instant). For every task it records
the wall time and the thread CPU time the task took. A task is *slow* when its wall time is
over ``--slow-factor`` times its process's median. Slow tasks, of any process, less than
``--gap`` task intervals apart form one *window*.

Reported: per process, the tasks' p50/p99/max wall time, the slow tasks, and the median
ratio of CPU time to wall time of the slow tasks (near 1: the guest counted the lost time as
its own CPU time, i.e. the CPU itself ran slower, as when the host runs something else on
it; near 0: this process was waiting while another process in the guest ran). Then the
windows: how many, their share of the run, their lengths, the time from one window's start
to the next one's, and the share of slow tasks that had a slow task of another process in
the same or a neighbouring slot (near 1: the machine slowed down as a whole). ``--json
PATH`` also writes every figure and every window.

What it does not: it does not say why the host slows the guest, and it loads the machine
only lightly (``--rate`` x ``--work-ms`` per process: 10 % of a CPU by default).

    .venv/bin/python benchmarks/machine_jitter.py [--processes N] [--seconds 10]
        [--rate 100] [--work-ms 1] [--slow-factor 3] [--gap 2] [--json PATH]
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import math
import multiprocessing
import os
import platform
import statistics
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import NamedTuple

_BLOCK = b"\x5a" * 4096
CALIBRATION_RUNS = 31
START_DELAY_SECONDS = 1.0  # the processes start this long after the schedule is set
MAX_UNITS = 1 << 22


class Task(NamedTuple):
    """One task: its slot on the shared schedule, wall and thread-CPU milliseconds."""

    slot: int
    wall_ms: float
    cpu_ms: float


@dataclass(frozen=True)
class ProcessFigures:
    process: int
    tasks: int
    p50_ms: float
    p99_ms: float
    max_ms: float
    slow: int
    slow_cpu_to_wall: float | None  # median over the slow tasks; None when there were none


@dataclass(frozen=True)
class Window:
    start_s: float  # from the schedule's start
    length_ms: float
    slow_tasks: int
    processes: int  # how many processes had a slow task in it


def work(units: int) -> bytes:
    """The fixed piece of CPU work: ``units`` SHA-256 updates over a 4 KiB block."""
    digest = hashlib.sha256()
    for _ in range(units):
        digest.update(_BLOCK)
    return digest.digest()


def calibrate(work_ms: float) -> int:
    """The number of units whose median wall time is about ``work_ms``."""
    units = 16
    while units < MAX_UNITS:
        median = _median_ms(units)
        if median >= work_ms / 4:
            break
        units *= 4
    return max(1, min(MAX_UNITS, round(units * work_ms / _median_ms(units))))


def _median_ms(units: int) -> float:
    times = []
    for _ in range(CALIBRATION_RUNS):
        started = time.perf_counter()
        work(units)
        times.append((time.perf_counter() - started) * 1e3)
    return max(statistics.median(times), 1e-6)


def run_tasks(units: int, rate: float, seconds: float, start_at: float) -> list[Task]:
    """Run the work once per slot of the shared schedule (``start_at`` is wall-clock time)."""
    start = time.perf_counter() + (start_at - time.time())
    tasks = []
    for slot in range(int(rate * seconds)):
        due = start + slot / rate
        while (wait := due - time.perf_counter()) > 0:
            time.sleep(wait)
        wall_started, cpu_started = time.perf_counter(), time.thread_time()
        work(units)
        tasks.append(Task(slot, (time.perf_counter() - wall_started) * 1e3,
                          (time.thread_time() - cpu_started) * 1e3))
    return tasks


def _process_main(units: int, rate: float, seconds: float, start_at: float,
                  results: multiprocessing.Queue) -> None:  # type: ignore[type-arg]
    results.put(run_tasks(units, rate, seconds, start_at))


def percentile(ordered: list[float], fraction: float) -> float:
    """Nearest-rank percentile of sorted values."""
    index = max(0, min(len(ordered) - 1, math.ceil(fraction * len(ordered)) - 1))
    return ordered[index]


def slow_slots(tasks: list[Task], factor: float) -> set[int]:
    """The slots whose wall time is over ``factor`` times the tasks' median."""
    median = statistics.median(task.wall_ms for task in tasks)
    return {task.slot for task in tasks if task.wall_ms > factor * median}


def process_figures(index: int, tasks: list[Task], factor: float) -> ProcessFigures:
    walls = sorted(task.wall_ms for task in tasks)
    slow = slow_slots(tasks, factor)
    ratios = [task.cpu_ms / task.wall_ms for task in tasks
              if task.slot in slow and task.wall_ms > 0]
    return ProcessFigures(index, len(tasks), statistics.median(walls), percentile(walls, 0.99),
                          walls[-1], len(slow), statistics.median(ratios) if ratios else None)


def windows(per_process: list[list[Task]], factor: float, rate: float,
            gap: int) -> list[Window]:
    """Slow tasks of any process, less than ``gap`` slots apart, grouped into windows."""
    slow_by_slot: dict[int, list[tuple[int, Task]]] = {}
    for index, tasks in enumerate(per_process):
        slow = slow_slots(tasks, factor)
        for task in tasks:
            if task.slot in slow:
                slow_by_slot.setdefault(task.slot, []).append((index, task))
    found: list[Window] = []
    group: list[int] = []
    for slot in sorted(slow_by_slot):
        if group and slot - group[-1] > gap:
            found.append(_window(group, slow_by_slot, rate))
            group = []
        group.append(slot)
    if group:
        found.append(_window(group, slow_by_slot, rate))
    return found


def _window(slots: list[int], slow_by_slot: dict[int, list[tuple[int, Task]]],
            rate: float) -> Window:
    members = [member for slot in slots for member in slow_by_slot[slot]]
    end = max(slot / rate * 1e3 + task.wall_ms for slot in slots
              for _, task in slow_by_slot[slot])
    return Window(slots[0] / rate, end - slots[0] / rate * 1e3, len(members),
                  len({index for index, _ in members}))


def shared_share(per_process: list[list[Task]], factor: float) -> float | None:
    """Of all slow tasks, the share with a slow task of another process within one slot."""
    slow = [slow_slots(tasks, factor) for tasks in per_process]
    total = shared = 0
    for index, own in enumerate(slow):
        others = set().union(*(slots for other, slots in enumerate(slow) if other != index))
        for slot in own:
            total += 1
            shared += any(neighbour in others for neighbour in (slot - 1, slot, slot + 1))
    return shared / total if total else None


def summarize(per_process: list[list[Task]], factor: float, rate: float, seconds: float,
              gap: int) -> dict[str, object]:
    found = windows(per_process, factor, rate, gap)
    lengths = sorted(window.length_ms for window in found)
    starts = [window.start_s for window in found]
    periods = sorted(later - earlier for earlier, later in itertools.pairwise(starts))
    return {
        "processes": [asdict(process_figures(index, tasks, factor))
                      for index, tasks in enumerate(per_process)],
        "windows": {
            "count": len(found),
            "share_of_time": min(1.0, sum(lengths) / (seconds * 1e3)),
            "length_p50_ms": statistics.median(lengths) if lengths else None,
            "length_max_ms": lengths[-1] if lengths else None,
            "start_to_start_p50_s": statistics.median(periods) if periods else None,
            "shared_share": shared_share(per_process, factor),
            "list": [asdict(window) for window in found],
        },
    }


def print_report(numbers: dict[str, object]) -> None:
    settings = numbers["settings"]
    print(f"{'process':>7} {'tasks':>6} {'p50 ms':>7} {'p99 ms':>7} {'max ms':>7} "
          f"{'slow':>5} {'slow cpu/wall':>13}")
    for row in numbers["processes"]:
        ratio = row["slow_cpu_to_wall"]
        print(f"{row['process']:>7} {row['tasks']:>6} {row['p50_ms']:>7.2f} "
              f"{row['p99_ms']:>7.2f} {row['max_ms']:>7.2f} {row['slow']:>5} "
              f"{'-' if ratio is None else f'{ratio:.2f}':>13}")
    found = numbers["windows"]
    line = (f"slow windows (a task over {settings['slow_factor']:g}x its process's median, "
            f"<= {settings['gap']} slots apart): {found['count']} in "
            f"{settings['seconds']:g} s, {found['share_of_time'] * 100:.1f}% of the time")
    if found["count"]:
        line += (f"; length p50 {found['length_p50_ms']:.0f} ms, max "
                 f"{found['length_max_ms']:.0f} ms")
    if found["start_to_start_p50_s"] is not None:
        line += f"; start to start p50 {found['start_to_start_p50_s']:.2f} s"
    print(line)
    if found["shared_share"] is not None and len(numbers["processes"]) > 1:
        print(f"{found['shared_share'] * 100:.0f}% of slow tasks had a slow task of another "
              f"process in the same or a neighbouring slot")
    print(f"work: {settings['units']} x SHA-256 of 4 KiB (~{settings['work_ms']:g} ms), "
          f"{settings['rate']:g}/s per process, {settings['processes']} processes, "
          f"{numbers['environment']['cpu_count']} CPUs")


def parse_arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--processes", type=int, default=os.cpu_count() or 1,
                        help="processes running the work at once (default: one per CPU)")
    parser.add_argument("--seconds", type=float, default=10.0,
                        help="how long each process runs (default 10)")
    parser.add_argument("--rate", type=float, default=100.0,
                        help="tasks per second per process (default 100)")
    parser.add_argument("--work-ms", type=float, default=1.0,
                        help="a task's median wall time, calibrated (default 1)")
    parser.add_argument("--slow-factor", type=float, default=3.0,
                        help="a task is slow over this many times the median (default 3)")
    parser.add_argument("--gap", type=int, default=2,
                        help="slow tasks at most this many slots apart share a window "
                             "(default 2)")
    parser.add_argument("--json", metavar="PATH", help="also write the figures as JSON")
    args = parser.parse_args(argv)
    if args.processes < 1 or args.gap < 0:
        parser.error("--processes must be at least 1 and --gap not negative")
    if not (args.seconds > 0 and args.rate > 0 and args.work_ms > 0 and args.slow_factor > 1):
        parser.error("--seconds, --rate and --work-ms must be positive, --slow-factor over 1")
    if args.work_ms >= 1e3 / args.rate:
        parser.error("--work-ms must be shorter than a slot (1000 / --rate ms)")
    if int(args.rate * args.seconds) < 2:
        parser.error("--rate x --seconds must give at least 2 tasks")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_arguments(argv)
    units = calibrate(args.work_ms)
    context = multiprocessing.get_context("spawn")
    results = context.Queue()
    start_at = time.time() + START_DELAY_SECONDS + 0.5 * args.processes
    workers = [context.Process(target=_process_main,
                               args=(units, args.rate, args.seconds, start_at, results))
               for _ in range(args.processes)]
    for worker in workers:
        worker.start()
    timeout = START_DELAY_SECONDS + 0.5 * args.processes + args.seconds * 3 + 30
    try:
        per_process = [[Task(*task) for task in results.get(timeout=timeout)]
                       for _ in workers]
    finally:
        for worker in workers:
            worker.join(timeout=5)
            if worker.is_alive():
                worker.kill()
    numbers: dict[str, object] = {
        "environment": {"python": platform.python_version(), "cpu_count": os.cpu_count(),
                        "machine": platform.machine()},
        "settings": {"processes": args.processes, "seconds": args.seconds, "rate": args.rate,
                     "work_ms": args.work_ms, "units": units,
                     "slow_factor": args.slow_factor, "gap": args.gap},
        **summarize(per_process, args.slow_factor, args.rate, args.seconds, args.gap),
    }
    print_report(numbers)
    if args.json:
        Path(args.json).write_text(json.dumps(numbers, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
