"""The real Google Pub/Sub emulator on loopback for tests: ``start_pubsub_emulator`` and the
session-scoped ``pubsub_emulator`` fixture.

``gcloud beta emulators pubsub start`` (the Java emulator Google ships with the Cloud SDK;
it runs offline) is started on 127.0.0.1 on a free port, with its data directory under the
test's temporary directory, in a process group of its own: gcloud is a Python launcher that
starts a shell script that starts java, so stopping only gcloud's pid would leave java
listening. The fixture waits until the emulator answers HTTP ``GET /`` with ``Ok``, and at
the end stops the whole group by the launcher's pid (SIGTERM, wait until every member is gone,
SIGKILL what is left). Measured here (six starts, while other test suites ran): 3.0 to 5.0 s
from start to the first answer, 1.6 to 2.1 s until the group is gone.

Clients find it through ``PUBSUB_EMULATOR_HOST`` (Google's client libraries and Beam honour
it); ``PubsubEmulator.environ()`` gives that variable, and ``client_env`` sets it for a
block. Use from a test module with::

    from tests.support.pubsub_emulator import pubsub_emulator  # noqa: F401  (a fixture)

The tests skip, naming the reason, when ``gcloud`` or ``java`` is not on the PATH (the Cloud
SDK's Debian package ``google-cloud-cli-pubsub-emulator`` and Java 17 provide them; they come
from Google's apt repository, not Debian's, so ``make test`` does not install them).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

__all__ = ["PubsubEmulator", "client_env", "pubsub_emulator", "start_pubsub_emulator"]

START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 10.0
PROJECT = "sealbeam-test"


@dataclass(frozen=True)
class PubsubEmulator:
    """A running emulator: where it listens and the pid of its process group."""

    host_port: str
    pid: int
    project: str = PROJECT

    def environ(self) -> dict[str, str]:
        return {"PUBSUB_EMULATOR_HOST": self.host_port, "PUBSUB_PROJECT_ID": self.project}

    def topic(self, name: str) -> str:
        return f"projects/{self.project}/topics/{name}"

    def subscription(self, name: str) -> str:
        return f"projects/{self.project}/subscriptions/{name}"


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _answers(host_port: str) -> bool:
    try:
        with urllib.request.urlopen(f"http://{host_port}/", timeout=1) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def _stop_group(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM the launcher's process group (gcloud, its shell, java), wait until every member
    is gone, SIGKILL what is left after ``STOP_TIMEOUT_S``."""
    pgid = process.pid                      # start_new_session: the launcher leads the group
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            break
        deadline = time.monotonic() + STOP_TIMEOUT_S
        while _group_alive(pgid) and time.monotonic() < deadline:
            if process.poll() is None:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    process.wait(timeout=0.1)
            else:
                time.sleep(0.1)
        if not _group_alive(pgid):
            break
    if process.poll() is None:
        process.wait(timeout=STOP_TIMEOUT_S)


def emulator_unavailable_reason() -> str | None:
    if shutil.which("gcloud") is None:
        return "gcloud is not installed (Debian: google-cloud-cli-pubsub-emulator)"
    if shutil.which("java") is None:
        return "java is not installed; the Pub/Sub emulator needs Java 17"
    return None


@contextmanager
def start_pubsub_emulator(data_dir: Path) -> Iterator[PubsubEmulator]:
    """Start the emulator on a free loopback port; stop its process group at the end."""
    port = _free_port()
    host_port = f"127.0.0.1:{port}"
    log = (data_dir / "emulator.log").open("wb")
    process = subprocess.Popen(
        ["gcloud", "beta", "emulators", "pubsub", "start", f"--host-port={host_port}",
         f"--data-dir={data_dir}", "--quiet"],
        stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        start_new_session=True)
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while not _answers(host_port):
            if process.poll() is not None:
                raise RuntimeError(f"the Pub/Sub emulator exited with {process.returncode}; "
                                   f"see {data_dir / 'emulator.log'}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"the Pub/Sub emulator did not answer on {host_port} "
                                   f"within {START_TIMEOUT_S:.0f} s")
            time.sleep(0.1)
        yield PubsubEmulator(host_port, process.pid)
    finally:
        _stop_group(process)
        log.close()


@contextmanager
def client_env(emulator: PubsubEmulator) -> Iterator[None]:
    """Set ``PUBSUB_EMULATOR_HOST`` (and the project) for the block, then restore."""
    saved = {name: os.environ.get(name) for name in emulator.environ()}
    os.environ.update(emulator.environ())
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


@pytest.fixture(scope="session")
def pubsub_emulator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PubsubEmulator]:
    reason = emulator_unavailable_reason()
    if reason is not None:
        pytest.skip(reason)
    with start_pubsub_emulator(tmp_path_factory.mktemp("pubsub-emulator")) as emulator:
        yield emulator
