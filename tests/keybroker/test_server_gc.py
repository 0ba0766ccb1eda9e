"""A serving broker keeps its startup heap out of the cyclic collector (``gc.freeze``), after
collecting the garbage startup left, and collects what its requests leave as before."""

from __future__ import annotations

import gc
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
import uvicorn

from keybroker.config import init_state
from keybroker.service.server import freeze_startup_heap, run_uvicorn


@pytest.fixture
def unfrozen() -> Iterator[None]:
    gc.unfreeze()
    yield
    gc.unfreeze()  # the test process's own objects go back to the collector


class _Cycle:
    def __init__(self) -> None:
        self.me = self


def test_startup_garbage_is_collected_and_the_rest_frozen(unfrozen: None) -> None:
    garbage = _Cycle()
    del garbage  # unreachable, only the collector frees it
    kept = _Cycle()
    freeze_startup_heap()
    assert gc.get_freeze_count() > 0
    assert not any(isinstance(found, _Cycle) for found in gc.get_objects())  # moved out
    gc.unfreeze()
    assert [found for found in gc.get_objects() if isinstance(found, _Cycle)] == [kept]


def test_garbage_made_after_the_freeze_is_still_collected(unfrozen: None) -> None:
    freeze_startup_heap()
    later = _Cycle()
    del later
    assert gc.collect() > 0  # the young cycle: found and freed


def test_run_uvicorn_freezes_before_it_serves(tmp_path: Path, unfrozen: None,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[int] = []
    monkeypatch.setattr(uvicorn.Server, "run",
                        lambda _self, sockets=None: seen.append(gc.get_freeze_count()))
    settings = init_state(tmp_path / "state")

    async def app(_scope: object, _receive: object, _send: object) -> None:
        return None

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        run_uvicorn(app, sock, settings, None)
    assert len(seen) == 1 and seen[0] > 0
