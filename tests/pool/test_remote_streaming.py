"""The streaming pipeline (a file-drop feed on FnApiRunner) with its confidential step on the
attested pool: the same steps as batch, so remote mode needs nothing of its own; each
windowed output's custody statement, signed in the pool, names the file with its window;
with a residency map, the pool's ``generate`` entries carry each region's destination."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from keybroker.identity import BrokerPublicKey
from pipelines import cli
from pipelines.custody import verify_output
from pipelines.reading import open_outputs
from pipelines.synthetic import REGIONS
from tests.enclave_workers.broker_env import BrokerEnv
from tests.pipelines.helpers import sealed_partner_files
from tests.pool.conftest import PoolProcess, broker_public_key
from tests.support.residency import file_residency_map, granted_destinations, ledger_head
from transforms.write import STATEMENT_SUFFIX


def _drop_sealed(broker: BrokerEnv, tmp_path: Path, records: int) -> tuple[Path, int]:
    """Seal ``records`` and put their files in a drop folder: (the folder, how many files)."""
    _, sealed = sealed_partner_files(broker, tmp_path, records)
    drop = tmp_path / "drop"
    drop.mkdir()
    for path in sealed:
        shutil.copyfile(path, drop / path.name)
    return drop, len(sealed)


def _stream_on_pool(broker: BrokerEnv, pool: list[PoolProcess], dropped: tuple[Path, int],
                    capsys: pytest.CaptureFixture[str], *where: str) -> tuple[int, dict]:
    """``sealbeam run streaming`` over the drop folder on ``pool``, writing ``where``
    (``--output_root`` or ``--residency_map``): the exit code and the run summary (the last
    line of standard output)."""
    drop, files = dropped
    code = cli.main(["run", "streaming", "--input", str(drop / "*.sealed"), *where,
                     "--regions", ",".join(REGIONS),
                     "--dev_tee_dir", str(broker.dev_tee_dir), "--window_seconds", "1",
                     "--poll_interval_seconds", "0.2", "--max_files", str(files),
                     "--stop_after_seconds", "25",
                     "--pool_endpoints", ",".join(w.url for w in pool),
                     "--pool_policy", str(broker.settings.policy_path)])
    return code, json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def test_a_file_drop_feed_runs_on_the_pool(broker: BrokerEnv, pool_pair: list[PoolProcess],
                                           tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    code, summary = _stream_on_pool(broker, pool_pair, _drop_sealed(broker, tmp_path, 60),
                                    capsys, "--output_root", str(out))
    assert code == 0 and summary["reconciled"], summary
    assert summary["records_in"] == 60 and summary["broker_calls"] == 0
    rows = sum(open_outputs([out / region], keyring=broker.keyring, region=region).num_rows
               for region in REGIONS if (out / region).is_dir())
    assert rows == summary["rows_out"] > 0
    outputs = [p for p in out.glob("*/part-*") if not p.name.endswith(STATEMENT_SUFFIX)]
    key = BrokerPublicKey.load(broker_public_key(broker))
    assert outputs
    for output in outputs:   # part-<id>-<window start>-<window end>.sbatch, signed as named
        assert output.name.count("-") >= 7 and output.name.endswith("Z.sbatch"), output.name
        verdict = verify_output(output, broker_key=key)
        assert verdict.ok, verdict.reasons


def test_a_mapped_feed_on_the_pool_records_destinations(
        broker: BrokerEnv, located_pool_pair: list[PoolProcess], tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    """Streaming and remote together: preflight on the launching side, the destinations
    carried with each batch to the pool, which sends them with its ``generate`` calls."""
    dropped = _drop_sealed(broker, tmp_path, 40)
    residency = file_residency_map(tmp_path / "map.json", broker.settings, tmp_path,
                                   unrouted="q")
    before = ledger_head(broker.settings)
    code, summary = _stream_on_pool(broker, located_pool_pair, dropped, capsys,
                                    "--residency_map", str(residency))
    assert code == 0 and summary["reconciled"] and summary["broker_calls"] == 0, summary
    recorded = granted_destinations(broker.settings, before)
    written = sorted(r for r in REGIONS if any((tmp_path / f"{r}-out").glob("part-*")))
    assert written and sorted(recorded) == written
    for region in written:
        assert recorded[region] == {json.dumps(
            {"sink": f"file://{tmp_path}/{region}-out", "location": "local", "verified": True},
            sort_keys=True)}
