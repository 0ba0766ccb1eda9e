"""``benchmarks/machine_jitter.py``: its windows and shares from known tasks, and a short run."""

from __future__ import annotations

from pathlib import Path
from types import ModuleType

import pytest

from tests.benchmarks.support import load_benchmark, run_benchmark


@pytest.fixture(scope="module")
def jitter(repo_root: Path) -> ModuleType:
    return load_benchmark(repo_root, "machine_jitter.py")


def _tasks(jitter: ModuleType, walls: list[float], cpu_share: float = 1.0) -> list[object]:
    return [jitter.Task(slot, wall, wall * cpu_share) for slot, wall in enumerate(walls)]


def test_slow_tasks_are_those_over_the_factor_times_the_median(jitter: ModuleType) -> None:
    tasks = _tasks(jitter, [1.0] * 7 + [3.0, 3.1, 10.0])
    assert jitter.slow_slots(tasks, 3.0) == {8, 9}
    figures = jitter.process_figures(0, tasks, 3.0)
    assert (figures.tasks, figures.slow, figures.p50_ms, figures.max_ms) == (10, 2, 1.0, 10.0)
    assert figures.slow_cpu_to_wall == pytest.approx(1.0)
    quiet = jitter.process_figures(1, _tasks(jitter, [1.0] * 10), 3.0)
    assert quiet.slow == 0 and quiet.slow_cpu_to_wall is None


def test_cpu_to_wall_tells_a_slower_cpu_from_a_preempted_process(jitter: ModuleType) -> None:
    walls = [1.0] * 9 + [8.0]
    preempted = [jitter.Task(slot, wall, 1.0) for slot, wall in enumerate(walls)]
    assert jitter.process_figures(0, preempted, 3.0).slow_cpu_to_wall == pytest.approx(1 / 8)
    slowed = _tasks(jitter, walls)
    assert jitter.process_figures(0, slowed, 3.0).slow_cpu_to_wall == pytest.approx(1.0)


def test_windows_join_slow_tasks_of_any_process_within_the_gap(jitter: ModuleType) -> None:
    rate = 100.0  # a slot every 10 ms
    first = [1.0] * 40
    second = [1.0] * 40
    first[5] = first[6] = 20.0  # one window: slots 5..8 (the other process in 8)
    second[8] = 12.0
    first[30] = 9.0  # a second window, 22 slots later
    found = jitter.windows([_tasks(jitter, first), _tasks(jitter, second)], 3.0, rate, 2)
    assert [(w.start_s, w.slow_tasks, w.processes) for w in found] == [
        (0.05, 3, 2), (0.30, 1, 1)]
    assert found[0].length_ms == pytest.approx(80 + 12 - 50)  # slot 8 ends at 80 + 12 ms
    assert found[1].length_ms == pytest.approx(9.0)
    # with no gap allowed, slots 5-6 and 8 are separate windows
    assert len(jitter.windows([_tasks(jitter, first), _tasks(jitter, second)],
                              3.0, rate, 1)) == 3


def test_shared_share_counts_slow_tasks_with_a_slow_neighbour_elsewhere(
        jitter: ModuleType) -> None:
    first, second = [1.0] * 20, [1.0] * 20
    first[3] = second[4] = 9.0  # neighbours: both count as shared
    first[12] = 9.0  # alone
    share = jitter.shared_share([_tasks(jitter, first), _tasks(jitter, second)], 3.0)
    assert share == pytest.approx(2 / 3)
    assert jitter.shared_share([_tasks(jitter, [1.0] * 5)], 3.0) is None


def test_summary_gives_shares_lengths_and_periods(jitter: ModuleType) -> None:
    walls = [1.0] * 100
    walls[10] = walls[50] = walls[90] = 20.0
    numbers = jitter.summarize([_tasks(jitter, walls)], 3.0, 100.0, 1.0, 2)
    found = numbers["windows"]
    assert found["count"] == 3
    assert found["share_of_time"] == pytest.approx(60 / 1000)
    assert found["length_max_ms"] == pytest.approx(20.0)
    assert found["start_to_start_p50_s"] == pytest.approx(0.4)


def test_a_short_run_reports_every_process_and_task(repo_root: Path, tmp_path: Path) -> None:
    stdout, numbers = run_benchmark(
        repo_root, "machine_jitter.py",
        ["--processes", "2", "--seconds", "0.4", "--rate", "50", "--work-ms", "0.2"],
        tmp_path / "jitter.json")
    assert "slow windows" in stdout
    assert numbers["settings"]["units"] >= 1
    rows = numbers["processes"]
    assert [row["process"] for row in rows] == [0, 1]
    for row in rows:
        assert row["tasks"] == 20
        assert 0 < row["p50_ms"] <= row["p99_ms"] <= row["max_ms"]
        assert 0 <= row["slow"] < row["tasks"]
    assert 0 <= numbers["windows"]["share_of_time"] <= 1


def test_arguments_that_cannot_make_a_schedule_are_refused(jitter: ModuleType) -> None:
    for arguments in (["--work-ms", "20", "--rate", "100"], ["--slow-factor", "1"],
                      ["--processes", "0"], ["--rate", "1", "--seconds", "1"]):
        with pytest.raises(SystemExit):
            jitter.parse_arguments(arguments)
