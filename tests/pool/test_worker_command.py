"""``sealbeam worker serve`` through the real command line: ready line, health, fail closed."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

from tests.enclave_workers.broker_env import BrokerEnv
from tests.pool.conftest import REPO_ROOT, health_counts, pool_call


def _sealbeam(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "pipelines.cli", "worker", "serve", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            cwd=REPO_ROOT, env={**os.environ, "PYTHONPATH": str(REPO_ROOT)})


def test_worker_serve_attests_then_answers(broker: BrokerEnv) -> None:
    process = _sealbeam("--broker_url", broker.url, "--dev_tee_dir", str(broker.dev_tee_dir),
                        "--port", "0", "--max_inflight", "2")
    try:
        assert process.stdout is not None
        ready = json.loads(process.stdout.readline())
        assert ready["simulated"] is True and len(ready["spec_fingerprint"]) == 64
        assert health_counts(ready["url"]) == {"attested": 0, "batches": 0, "envelopes": 0,
                                               "refused_busy": 0}
        assert pool_call(ready["url"], "/v1/pool/attest", b"{}")["error"] == "bad_request"
    finally:
        process.kill()
        process.wait(timeout=10)


def test_worker_serve_without_a_broker_fails_closed_with_one_line(broker: BrokerEnv) -> None:
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]
    process = _sealbeam("--broker_url", f"http://127.0.0.1:{port}",
                        "--dev_tee_dir", str(broker.dev_tee_dir))
    stdout, stderr = process.communicate(timeout=120)
    assert process.returncode == 2 and stdout == ""
    assert stderr.startswith("sealbeam worker: error:") and stderr.count("\n") == 1


def test_run_batch_on_the_pool_from_the_command_line(broker: BrokerEnv, pool_pair, tmp_path,
                                                     capsys) -> None:
    from pipelines.cli import main
    from tests.pipelines.helpers import sealed_partner_files

    sealed_partner_files(broker, tmp_path, 60)
    code = main(["run", "batch", "--input", str(tmp_path / "sealed" / "*.sealed"),
                 "--output_root", str(tmp_path / "out"), "--regions", "eu,us",
                 "--dev_tee_dir", str(broker.dev_tee_dir), "--min_batch_size", "16",
                 "--pool_endpoints", ",".join(w.url for w in pool_pair),
                 "--pool_policy", str(broker.settings.policy_path)])
    summary = json.loads(capsys.readouterr().out)
    assert code == 0 and summary["reconciled"] and summary["records_in"] == 60
    assert summary["broker_calls"] == 0 and summary["records_out"] == 60
