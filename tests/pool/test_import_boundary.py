"""What runs in the TEE stays small: the pool server's import closure has no broker KMS
backends, no web framework and no Beam (checked in a fresh interpreter)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
FORBIDDEN = ("keybroker.kms", "keybroker.service", "keybroker.policy", "keybroker.ledger",
             "keybroker.config", "keybroker.shred", "keybroker.rewrap", "keybroker.dek_cache",
             "fastapi", "starlette", "uvicorn", "apache_beam", "transforms", "pipelines",
             "google.cloud.kms", "google.api_core", "azure", "pkcs11")

PROBE = """
import json, sys
import enclave_workers.pool.server, enclave_workers.pool.cli, enclave_workers.pool.worker
print(json.dumps(sorted(sys.modules)))
"""


def _modules_after(code: str) -> list[str]:
    output = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, check=True,
                            capture_output=True, text=True, timeout=120).stdout
    return json.loads(output.splitlines()[-1])


def test_the_pool_server_imports_no_broker_backend_framework_or_beam() -> None:
    modules = _modules_after(PROBE)
    assert "enclave_workers.pool.server" in modules
    leaked = sorted(m for m in modules for f in FORBIDDEN if m == f or m.startswith(f + "."))
    assert not leaked, f"the pool's trusted base imports {leaked}"


def test_the_probe_would_see_a_forbidden_import() -> None:
    modules = _modules_after(PROBE.replace("print(", "import keybroker.kms.local\nprint("))
    assert "keybroker.kms.local" in modules
