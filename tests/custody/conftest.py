"""One demo run shared by the custody tests (the outputs, statements and state it leaves)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from keybroker.identity import BrokerPublicKey
from pipelines.demo import run_demo

DEMO_RECORDS = 400


@dataclass(frozen=True)
class DemoRun:
    workdir: Path
    summary: dict[str, object]

    @property
    def out(self) -> Path:
        return self.workdir / "out"

    @property
    def state(self) -> Path:
        return self.workdir / "state"

    @property
    def broker_key_path(self) -> Path:
        return self.state / "broker-identity.pub.pem"

    @property
    def broker_key(self) -> BrokerPublicKey:
        return BrokerPublicKey.load(self.broker_key_path)

    def outputs(self, out: Path | None = None) -> list[Path]:
        root = out or self.out
        return sorted(p for p in root.glob("*/part-*") if not p.name.endswith(".intoto.json"))


@pytest.fixture(scope="session")
def demo_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DemoRun]:
    workdir = tmp_path_factory.mktemp("custody-demo")
    yield DemoRun(workdir, run_demo(DEMO_RECORDS, workdir))
