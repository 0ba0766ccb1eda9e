"""A throwaway PostgreSQL cluster for tests: ``initdb`` in a temp dir, served on a free port.

``start_postgres()`` finds ``initdb``/``pg_ctl`` (on PATH, else Debian's
``/usr/lib/postgresql/<version>/bin``), creates a cluster with trust authentication on
127.0.0.1 only, starts it with fsync off (a test database), waits until it accepts
connections and yields its URL; on exit it stops the postmaster by the pid in
``postmaster.pid`` and removes the directory. ``initdb`` refuses to run as root, so as root
the cluster belongs to the ``postgres`` user (or ``nobody``) and commands run through
``runuser``. The ``postgres_url`` fixture skips when no PostgreSQL server is installed
(``make test`` installs it: scripts/install-system-deps.sh).
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

__all__ = ["postgres_url", "start_postgres"]

STARTUP_TIMEOUT_SECONDS = 30.0
SUPERUSER = "sealbeam"


def _binary(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    candidates = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    return candidates[-1] if candidates else None


def _owner() -> pwd.struct_passwd | None:
    """The user to run the cluster as when we are root (initdb refuses root)."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        try:
            return pwd.getpwnam(name)
        except KeyError:
            continue
    raise RuntimeError("running as root with no postgres or nobody user to own the cluster")


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _run(command: list[str], owner: pwd.struct_passwd | None) -> None:
    if owner is not None:
        command = ["runuser", "-u", owner.pw_name, "--", *command]
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                   timeout=120)


@contextmanager
def start_postgres() -> Iterator[str]:
    """A running throwaway cluster; yields ``postgresql://sealbeam@127.0.0.1:<port>/postgres``."""
    initdb, pg_ctl = _binary("initdb"), _binary("pg_ctl")
    if initdb is None or pg_ctl is None:
        raise FileNotFoundError("initdb/pg_ctl not found")
    owner = _owner()
    root = Path(tempfile.mkdtemp(prefix="sealbeam-pg-"))
    data = root / "data"
    if owner is not None:
        os.chown(root, owner.pw_uid, owner.pw_gid)
    pid: int | None = None
    try:
        _run([initdb, "-D", str(data), "-A", "trust", "-U", SUPERUSER, "-E", "UTF8",
              "--no-sync", "--no-instructions"], owner)
        port = _free_port()
        options = (f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off "
                   "-c synchronous_commit=off -c max_connections=40")
        _run([pg_ctl, "-D", str(data), "-o", options, "-l", str(root / "log"), "-w",
              "-t", str(int(STARTUP_TIMEOUT_SECONDS)), "start"], owner)
        pid = int((data / "postmaster.pid").read_text().splitlines()[0])
        yield f"postgresql://{SUPERUSER}@127.0.0.1:{port}/postgres"
    finally:
        if pid is not None:
            _stop(pid)
        shutil.rmtree(root, ignore_errors=True)


def _stop(pid: int) -> None:
    """Fast shutdown of the postmaster by pid; wait for it to go."""
    try:
        os.kill(pid, signal.SIGINT)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.05)
    os.kill(pid, signal.SIGKILL)


@pytest.fixture(scope="module")
def postgres_url() -> Iterator[str]:
    """A throwaway PostgreSQL cluster for the module; skips when PostgreSQL is not installed."""
    if _binary("initdb") is None:
        pytest.skip("PostgreSQL server binaries not installed (make test installs them)")
    with start_postgres() as url:
        yield url
