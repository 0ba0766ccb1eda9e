"""Operating the command line: --version, SEALBEAM_* variables, one-line failures, progress on
a terminal only, JSON logs, shell completion and ``keys list``."""

from __future__ import annotations

import base64
import io
import json
import logging
import os
import pty
import select
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from envelope import read_record_stream
from keybroker.logs import configure_logging
from pipelines import cli
from pipelines.run_checks import DEFAULT_TSM_ROOT
from pipelines.synthetic import write_partner_files

REPO = Path(__file__).resolve().parents[2]


def sealbeam(*argv: str, env: dict[str, str] | None = None, stdin: bytes | None = None,
             cwd: Path = REPO) -> subprocess.CompletedProcess[str]:
    environment = {**os.environ, "PYTHONPATH": str(REPO), **(env or {})}
    return subprocess.run([sys.executable, "-m", "pipelines.cli", *argv], cwd=cwd,
                          env=environment, capture_output=True, text=True, timeout=180,
                          check=False, input=stdin.decode() if stdin is not None else None)


def _one_error_line(done: subprocess.CompletedProcess[str]) -> str:
    assert done.returncode == 2, done.stderr
    lines = done.stderr.splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("sealbeam: error: ")
    return lines[0]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.startswith("sealbeam ")


def test_run_batch_with_an_unreachable_broker_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "dev-tee").mkdir()
    url = f"http://127.0.0.1:{_free_port()}"
    done = sealbeam("run", "batch", f"--input={tmp_path / '*.sealed'}",
                    f"--output_root={tmp_path / 'out'}", f"--broker_url={url}",
                    f"--dev_tee_dir={tmp_path / 'dev-tee'}")
    line = _one_error_line(done)
    assert url in line and "/v1/health" in line
    assert not (tmp_path / "out").exists()


@pytest.mark.skipif(DEFAULT_TSM_ROOT.is_dir(), reason="this machine has configfs-tsm")
def test_configfs_tsm_on_a_machine_without_it_is_one_line(tmp_path: Path) -> None:
    done = sealbeam("run", "batch", f"--input={tmp_path / '*.sealed'}",
                    f"--output_root={tmp_path / 'out'}", "--broker_url=http://127.0.0.1:9",
                    "--tee", "configfs-tsm")
    assert "configfs-tsm" in _one_error_line(done)


def test_debug_log_level_adds_the_details(tmp_path: Path) -> None:
    done = sealbeam("--log-level", "debug", "run", "batch", f"--input={tmp_path / '*'}",
                    f"--output_root={tmp_path / 'out'}", "--broker_url=http://127.0.0.1:9",
                    "--tee", "sev-guest")
    assert done.returncode == 2
    assert "Traceback" in done.stderr
    assert done.stderr.splitlines()[-1].startswith("sealbeam: error: --tee sev-guest")


def test_usage_errors_and_bad_environment_are_one_line(tmp_path: Path) -> None:
    _one_error_line(sealbeam("seal", "--input", "x.jsonl"))
    assert "SEALBEAM_TEE" in _one_error_line(sealbeam("keys", "list",
                                                      env={"SEALBEAM_TEE": "tdx-please"}))
    assert "SEALBEAM_LOG_FORMAT" in _one_error_line(
        sealbeam("keys", "list", env={"SEALBEAM_LOG_FORMAT": "xml"}))


def test_sealbeam_state_supplies_state_and_the_flag_wins(state: Path, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch,
                                                         capsys: pytest.CaptureFixture[str]
                                                         ) -> None:
    monkeypatch.setenv("SEALBEAM_STATE", str(state))
    assert cli.main(["keys", "list", "--json"]) == 0
    listing = json.loads(capsys.readouterr().out)
    assert listing["state"] == str(state)
    assert {k["region"] for k in listing["keks"]} == {"eu", "us"}
    assert listing["keks"][0]["versions"] == {"1": "enabled"}
    assert listing["named_keys"] == ["pseudonym/acme"]
    assert "material" not in json.dumps(listing)
    assert cli.main(["keys", "list", "--state", str(tmp_path / "none")]) == 2
    assert "holds neither" in capsys.readouterr().err


def test_keys_list_text(state: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["keys", "list", "--state", str(state)]) == 0
    out = capsys.readouterr().out
    assert "region eu: local://keyring/eu/kek-1  [v1 enabled (primary)]" in out
    assert "named key: pseudonym/acme" in out


def test_seal_reads_standard_input_and_writes_standard_output(state: Path, tmp_path: Path
                                                              ) -> None:
    [partner, *_] = write_partner_files(tmp_path / "p", 12, files_per_group=1, seed=2)
    done = sealbeam("seal", "--input", "-", "--output", "-", "--region", partner.region,
                    "--producer", partner.producer_id, "--state", str(state),
                    stdin=partner.path.read_bytes())
    assert done.returncode == 0, done.stderr
    lines = partner.path.read_bytes().splitlines()
    [stream] = done.stdout.splitlines()          # the default: one record stream (profile 2)
    assert stream.startswith("U0JFV")
    assert read_record_stream(base64.b64decode(stream)).record_count == len(lines)
    assert json.loads(done.stderr.splitlines()[-1])["input_records"] == len(lines)


def test_json_logs_are_one_object_per_line() -> None:
    stream = io.StringIO()
    handler = configure_logging("info", "json", stream=stream)
    try:
        logging.getLogger("sealbeam.test").info("granted %s", "k1", extra={"route": "/v1/x"})
        logging.getLogger("sealbeam.test").debug("hidden at info")
    finally:
        logging.getLogger().removeHandler(handler)
    [line] = stream.getvalue().splitlines()
    record = json.loads(line)
    assert record["message"] == "granted k1" and record["route"] == "/v1/x"
    assert record["level"] == "info" and record["time"].endswith("Z")


def test_bash_completion_completes_commands_and_options(tmp_path: Path) -> None:
    script = tmp_path / "sealbeam.bash"
    done = sealbeam("completion", "bash")
    assert done.returncode == 0
    script.write_text(done.stdout, encoding="utf-8")

    def complete(*words: str) -> list[str]:
        quoted = " ".join(f"'{w}'" for w in words)
        probe = (f"source {script}; COMP_WORDS=(sealbeam {quoted}); "
                 f"COMP_CWORD={len(words)}; _sealbeam; printf '%s\\n' \"${{COMPREPLY[@]}}\"")
        result = subprocess.run(["bash", "-c", probe], capture_output=True, text=True,
                                timeout=30, check=True)
        return result.stdout.split()

    assert complete("uns") == ["unseal"]
    assert complete("keys", "l") == ["list"]
    assert "--kek" in complete("keys", "rotate", "--k")
    assert "--log-level" in complete("seal", "--log")
    assert sealbeam("completion", "zsh").stdout.count("bashcompinit") >= 1


def _seal_argv(state: Path, tmp_path: Path) -> list[str]:
    [partner, *_] = write_partner_files(tmp_path / "p", 12, files_per_group=1, seed=4)
    return ["seal", "--input", str(partner.path), "--output", str(tmp_path / "o.sealed"),
            "--region", partner.region, "--producer", partner.producer_id,
            "--state", str(state)]


def test_progress_shows_on_a_terminal(state: Path, tmp_path: Path) -> None:
    leader, follower = pty.openpty()
    process = subprocess.Popen(
        [sys.executable, "-m", "pipelines.cli", *_seal_argv(state, tmp_path)], cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)}, stdout=subprocess.PIPE, stderr=follower,
        stdin=subprocess.DEVNULL)
    os.close(follower)
    terminal = b""
    while True:
        ready, _, _ = select.select([leader], [], [], 120)
        if not ready:
            break
        try:
            chunk = os.read(leader, 4096)
        except OSError:  # EIO: the process closed its end
            break
        if not chunk:
            break
        terminal += chunk
    os.close(leader)
    out, _ = process.communicate(timeout=60)
    assert process.returncode == 0
    text = terminal.decode("utf-8", "replace")
    assert "sealbeam: seal" in text and "records" in text
    assert json.loads(out)["input_records"] > 0  # stdout keeps only the result


def test_no_progress_when_stderr_is_not_a_terminal(state: Path, tmp_path: Path) -> None:
    done = sealbeam(*_seal_argv(state, tmp_path))
    assert done.returncode == 0
    assert done.stderr == ""
    assert json.loads(done.stdout)["input_records"] > 0


def test_status_line_when_not_a_terminal_and_slow() -> None:
    from pipelines.progress import Progress

    stream, now = io.StringIO(), [0.0]
    progress = Progress("seal", stream=stream, mode="auto", interval=10.0,
                        clock=lambda: now[0])
    progress.update(5)
    now[0] = 12.0
    progress.update(7)
    progress.close()
    assert stream.getvalue() == "sealbeam: seal: 12 records, 1/s, 12s\n"


def test_a_missing_extra_is_one_line_and_other_commands_still_run(state: Path) -> None:
    """Without Beam (the 'worker' extra) and FastAPI ('broker'): `run` and `broker serve`
    say which extra to install; `keys list` works."""
    probe = ("import sys\n"
             "sys.modules['apache_beam'] = None\n"
             "sys.modules['fastapi'] = None\n"
             "from pipelines.cli import main\n"
             "sys.exit(main(sys.argv[1:]))\n")

    def without_extras(*argv: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-c", probe, *argv], cwd=REPO,
                              env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True,
                              text=True, timeout=120, check=False)

    assert "pip install 'sealbeam[worker]'" in _one_error_line(
        without_extras("run", "batch", "--input", "x"))
    assert "pip install 'sealbeam[broker]'" in _one_error_line(
        without_extras("broker", "serve", "--state", str(state), "--port", "0"))
    listed = without_extras("keys", "list", "--state", str(state))
    assert listed.returncode == 0 and "region eu" in listed.stdout


def test_dash_for_standard_streams_in_features_and_attest(state: Path, tmp_path: Path) -> None:
    spec = (REPO / "enclave_workers" / "default_spec.yaml").read_bytes()
    checked = sealbeam("features", "check", "-", stdin=spec)
    assert checked.returncode == 0 and "fingerprint" in checked.stdout

    endorsements = tmp_path / "endorsements"
    collected = subprocess.run(
        [sys.executable, "-m", "pipelines.cli", "attest", "collect", "--provider",
         "simulated-snp", "--chain-dir", str(state / "dev-tee"), "--out", "-",
         "--endorsements-dir", str(endorsements)],
        cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True,
        timeout=120, check=False)
    assert collected.returncode == 0, collected.stderr
    assert len(collected.stdout) >= 1184  # the raw SEV-SNP report on stdout
    assert json.loads(collected.stderr.decode().splitlines()[-1])["simulated"] is True
    verified = subprocess.run(
        [sys.executable, "-m", "pipelines.cli", "attest", "verify", "--type", "sev-snp",
         "--evidence", "-", "--dev-chain", str(state / "dev-tee"), "--allow-simulated",
         "--endorsements-dir",
         str(endorsements)],
        cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True,
        input=collected.stdout, timeout=120, check=False)
    assert b'"verified": true' in verified.stdout, verified.stdout


def test_a_refused_attestation_inside_the_run_is_one_line(broker, state: Path, tmp_path: Path
                                                          ) -> None:
    """The broker is up, but the workers' TEE (another state's dev chain) is not trusted: the
    failure happens inside a Beam step and still ends in one line, without Beam's traceback."""
    [partner, *_] = write_partner_files(tmp_path / "p", 6, files_per_group=1, seed=9)
    sealed = tmp_path / "in.sealed"
    assert sealbeam("seal", "--input", str(partner.path), "--output", str(sealed), "--region",
                    partner.region, "--producer", partner.producer_id, "--state",
                    str(broker.state_dir)).returncode == 0
    done = sealbeam("run", "batch", f"--input={sealed}", f"--output_root={tmp_path / 'out'}",
                    f"--broker_url={broker.url}", f"--dev_tee_dir={state / 'dev-tee'}")
    line = _one_error_line(done)
    assert "/v1/attest" in line and "401" in line


def test_broker_serve_logs_json_lines_with_access_records(state: Path) -> None:
    import re
    import threading

    import httpx

    process = subprocess.Popen(
        [sys.executable, "-m", "pipelines.cli", "broker", "serve", "--state", str(state),
         "--port", "0", "--log-format", "json"],
        cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE, text=True)
    lines: list[str] = []
    watchdog = threading.Timer(60, process.kill)   # a missing line ends the reads, not the suite
    watchdog.start()
    try:
        url = None
        while url is None:
            line = process.stderr.readline()
            if not line:
                break
            lines.append(line)
            found = re.search(r"http://127\.0\.0\.1:\d+", json.loads(line)["message"])
            url = found.group(0) if found else None
        assert url is not None, lines
        assert httpx.get(f"{url}/v1/health").status_code == 200
        while not any('"sealbeam.broker.access"' in line for line in lines):
            line = process.stderr.readline()
            if not line:
                break
            lines.append(line)
    finally:
        watchdog.cancel()
        process.terminate()
        process.wait(timeout=30)
    records = [json.loads(line) for line in lines if line.strip()]
    [access] = [r for r in records if r["logger"] == "sealbeam.broker.access"]
    assert access["route"] == "/v1/health" and access["status"] == 200
    assert all("color_message" not in r for r in records)
