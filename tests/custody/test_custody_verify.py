"""Offline custody verification of a demo run's outputs, and each tampering refused."""

from __future__ import annotations

import base64
import hashlib
import json
import shutil
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from in_toto_attestation.v1.statement import Statement
from securesystemslib.dsse import Envelope
from securesystemslib.signer import SSlibKey

from enclave_workers.evidence.simulated_snp import DEV_MEASUREMENT
from enclave_workers.provenance import (
    CUSTODY_PREDICATE_TYPE,
    PROVENANCE_KEY_LABEL,
    STATEMENT_PAYLOAD_TYPE,
    merkle_root,
    signer_key_id,
)
from keybroker.checkpoints import load_anchors
from keybroker.grants import verify_attestation_result
from keybroker.identity import BrokerIdentity, canonical_json, pae
from keybroker.ledger import AuditLedger
from pipelines.custody import CustodyPolicy, verify_output
from pipelines.custody_run import RUN_STATEMENT_NAME, verify_run

from .conftest import DemoRun


def _statement_path(output: Path) -> Path:
    return output.with_name(output.name + ".intoto.json")


def _copy_out(demo_run: DemoRun, tmp_path: Path) -> Path:
    out = tmp_path / "out"
    shutil.copytree(demo_run.out, out)
    return out


def _policy(demo_run: DemoRun, **changes: object) -> CustodyPolicy:
    fields = {"tees": ("sev-snp",), "measurements": (DEV_MEASUREMENT,),
              "spec_fingerprints": (str(demo_run.summary["spec_fingerprint"]),),
              "allow_simulated": True, **changes}
    return CustodyPolicy(**fields)  # type: ignore[arg-type]


def test_the_demo_verifies_its_own_custody(demo_run: DemoRun) -> None:
    assert demo_run.summary["custody_verified"] is True
    assert demo_run.summary["custody_outputs"] == len(demo_run.outputs())


def test_each_output_verifies_offline_with_only_the_broker_key(demo_run: DemoRun) -> None:
    outputs = demo_run.outputs()
    assert len(outputs) >= 2
    for output in outputs:
        verdict = verify_output(output, broker_key=demo_run.broker_key)
        assert verdict.ok, verdict.reasons
        assert verdict.checks == {"digest": True, "chain": True, "inputs": True,
                                  "ledger": True, "policy": None}
        assert verdict.facts["simulated"] is True
        assert verdict.facts["measurement"] == DEV_MEASUREMENT


def test_policy_anchors_and_ledger_hold(demo_run: DemoRun) -> None:
    anchors = load_anchors(demo_run.state / "ledger-checkpoints.jsonl")
    with AuditLedger(demo_run.state / "ledger.sqlite", read_only=True) as ledger:
        for output in demo_run.outputs():
            verdict = verify_output(output, broker_key=demo_run.broker_key,
                                    policy=_policy(demo_run), anchors=anchors, ledger=ledger)
            assert verdict.ok, verdict.reasons
            assert verdict.checks["policy"] is True


def test_the_statement_key_is_the_one_the_broker_result_lists(demo_run: DemoRun) -> None:
    envelope = json.loads(_statement_path(demo_run.outputs()[0]).read_text())
    statement = json.loads(base64.b64decode(envelope["payload"]))
    result = verify_attestation_result(demo_run.broker_key,
                                       statement["predicate"]["attestation_result"])
    key = result.tee_public_keys[PROVENANCE_KEY_LABEL]
    assert envelope["signatures"][0]["keyid"] == signer_key_id(key)
    assert set(result.tee_public_keys) == {"hpke", PROVENANCE_KEY_LABEL}


def test_a_changed_output_byte_is_refused(demo_run: DemoRun, tmp_path: Path) -> None:
    out = _copy_out(demo_run, tmp_path)
    output = demo_run.outputs(out)[0]
    data = bytearray(output.read_bytes())
    data[len(data) // 2] ^= 0x01
    output.write_bytes(bytes(data))
    verdict = verify_output(output, broker_key=demo_run.broker_key)
    assert not verdict.ok
    assert verdict.checks["digest"] is False
    assert any("SHA-256 differs" in reason for reason in verdict.reasons)


def test_a_statement_moved_to_another_output_is_refused(demo_run: DemoRun,
                                                        tmp_path: Path) -> None:
    out = _copy_out(demo_run, tmp_path)
    first, second = demo_run.outputs(out)[:2]
    shutil.copyfile(_statement_path(first), _statement_path(second))
    verdict = verify_output(second, broker_key=demo_run.broker_key)
    assert not verdict.ok
    assert any("moved to another output" in reason for reason in verdict.reasons)
    explicit = verify_output(second, broker_key=demo_run.broker_key,
                             statement=demo_run.out / first.parent.name /
                             _statement_path(first).name)
    assert not explicit.ok and explicit.checks["digest"] is False


def _resign(statement_path: Path, payload: bytes, key: Ed25519PrivateKey) -> None:
    raw = key.public_key().public_bytes_raw()
    signature = key.sign(pae(STATEMENT_PAYLOAD_TYPE, payload))
    statement_path.write_bytes(canonical_json({
        "payloadType": STATEMENT_PAYLOAD_TYPE,
        "payload": base64.b64encode(payload).decode("ascii"),
        "signatures": [{"keyid": signer_key_id(raw),
                        "sig": base64.b64encode(signature).decode("ascii")}],
    }))


def test_a_statement_signed_by_a_key_the_evidence_did_not_bind_is_refused(
        demo_run: DemoRun, tmp_path: Path) -> None:
    out = _copy_out(demo_run, tmp_path)
    output = demo_run.outputs(out)[0]
    envelope = json.loads(_statement_path(output).read_text())
    statement = json.loads(base64.b64decode(envelope["payload"]))
    statement["predicate"]["counts"]["rows_suppressed"] += 1     # a lie, re-signed
    _resign(_statement_path(output), canonical_json(statement), Ed25519PrivateKey.generate())
    verdict = verify_output(output, broker_key=demo_run.broker_key)
    assert not verdict.ok
    assert verdict.checks["chain"] is False
    assert any("not signed by the provenance key that the attestation evidence bound" in r
               for r in verdict.reasons)


def test_an_attestation_result_from_another_broker_is_refused(demo_run: DemoRun,
                                                             tmp_path: Path) -> None:
    """A forger binds his own statement key in a result signed by a broker key of his own."""
    out = _copy_out(demo_run, tmp_path)
    output = demo_run.outputs(out)[0]
    envelope = json.loads(_statement_path(output).read_text())
    statement = json.loads(base64.b64decode(envelope["payload"]))
    genuine = json.loads(base64.b64decode(statement["predicate"]["attestation_result"]
                                          ["payload"]))
    forger, statement_key = BrokerIdentity.generate(), Ed25519PrivateKey.generate()
    genuine["tee_public_keys"][PROVENANCE_KEY_LABEL] = base64.b64encode(
        statement_key.public_key().public_bytes_raw()).decode()
    genuine["broker_key_id"] = forger.key_id
    statement["predicate"]["attestation_result"] = forger.sign(
        "application/vnd.sealbeam.attestation-result+json", genuine)
    _resign(_statement_path(output), canonical_json(statement), statement_key)
    verdict = verify_output(output, broker_key=demo_run.broker_key)
    assert not verdict.ok and verdict.checks["chain"] is False
    assert any("attestation result" in r for r in verdict.reasons)


def test_a_measurement_outside_the_policy_is_refused(demo_run: DemoRun) -> None:
    output = demo_run.outputs()[0]
    verdict = verify_output(output, broker_key=demo_run.broker_key,
                            policy=_policy(demo_run, measurements=("ab" * 48,)))
    assert not verdict.ok and verdict.checks["policy"] is False
    assert any("measurement" in r and "not one the policy allows" in r for r in verdict.reasons)
    for changes, words in (({"spec_fingerprints": ("cd" * 32,)}, "feature spec"),
                           ({"allow_simulated": False}, "simulated"),
                           ({"tees": ("tdx",)}, "TEE type")):
        refused = verify_output(output, broker_key=demo_run.broker_key,
                                policy=_policy(demo_run, **changes))
        assert not refused.ok and any(words in r for r in refused.reasons), changes


def test_an_anchor_of_another_ledger_is_refused(demo_run: DemoRun) -> None:
    output = demo_run.outputs()[0]
    anchors = load_anchors(demo_run.state / "ledger-checkpoints.jsonl")
    assert verify_output(output, broker_key=demo_run.broker_key, anchors=anchors).ok
    other = BrokerIdentity.generate()
    foreign = other.sign("application/vnd.sealbeam.ledger-checkpoint+json", {})
    verdict = verify_output(output, broker_key=demo_run.broker_key, anchors=[foreign])
    assert not verdict.ok and verdict.checks["ledger"] is False


def test_the_run_covers_every_input(demo_run: DemoRun) -> None:
    verdict = verify_run(demo_run.out, broker_key=demo_run.broker_key, policy=_policy(demo_run))
    assert verdict.ok, verdict.reasons
    # The demo seals record streams: the run counts records, each stream stands for its own.
    assert verdict.facts["input_records"] == demo_run.summary["records_in"]
    assert verdict.facts["distinct_envelopes"] == verdict.facts["input_lines"] < \
        demo_run.summary["records_in"]
    assert verdict.facts["envelopes_out"] + verdict.facts["dead_letter_records"] + \
        verdict.facts["duplicates"] == verdict.facts["input_records"]


def _drop_output(out: Path, output: Path) -> None:
    """Remove an output and its statement, and from the run statement too (a consistent
    index of a run that lost an output)."""
    run_statement = json.loads((out / RUN_STATEMENT_NAME).read_text())
    gone = {output.relative_to(out).as_posix(), _statement_path(output).relative_to(out)
            .as_posix()}
    run_statement["subject"] = [s for s in run_statement["subject"] if s["name"] not in gone]
    (out / RUN_STATEMENT_NAME).write_bytes(canonical_json(run_statement))
    output.unlink()
    _statement_path(output).unlink()


def test_a_run_whose_statements_do_not_cover_all_inputs_is_refused(demo_run: DemoRun,
                                                                   tmp_path: Path) -> None:
    out = _copy_out(demo_run, tmp_path)
    _drop_output(out, demo_run.outputs(out)[0])
    verdict = verify_run(out, broker_key=demo_run.broker_key)
    assert not verdict.ok
    assert any("are in no output statement and no dead letter" in r for r in verdict.reasons)


def test_a_run_missing_a_named_file_or_with_an_unnamed_one_is_refused(demo_run: DemoRun,
                                                                      tmp_path: Path) -> None:
    out = _copy_out(demo_run, tmp_path)
    outputs = demo_run.outputs(out)
    outputs[0].unlink()
    shutil.copyfile(outputs[1], outputs[1].with_name("part-extra.sbatch"))
    verdict = verify_run(out, broker_key=demo_run.broker_key)
    reasons = " | ".join(verdict.reasons)
    assert not verdict.ok
    assert "named in the run statement but missing" in reasons
    assert "part-extra.sbatch is not named in the run statement" in reasons


def test_statements_parse_with_in_toto_and_dsse_libraries(demo_run: DemoRun) -> None:
    for output in demo_run.outputs():
        envelope = Envelope.from_dict(json.loads(_statement_path(output).read_text()))
        assert envelope.payload_type == STATEMENT_PAYLOAD_TYPE
        document = json.loads(envelope.payload)
        statement = Statement([], document["predicateType"], document["predicate"])
        statement.pb.subject.add(name=document["subject"][0]["name"],
                                 digest=document["subject"][0]["digest"])
        statement.validate()
        assert statement.pb.predicate_type == CUSTODY_PREDICATE_TYPE
        # securesystemslib verifies the DSSE signature with the provenance key.
        result = verify_attestation_result(demo_run.broker_key,
                                           document["predicate"]["attestation_result"])
        raw = result.tee_public_keys[PROVENANCE_KEY_LABEL]
        key = SSlibKey(signer_key_id(raw), "ed25519", "ed25519", {"public": raw.hex()})
        assert signer_key_id(raw) in envelope.verify([key], 1)
        assert merkle_root(document["predicate"]["inputs"]["envelope_ids"]) == \
            document["predicate"]["inputs"]["merkle_root"]


@pytest.mark.parametrize("count", [0, 1, 2, 3, 5, 8])
def test_merkle_root_is_rfc6962(count: int) -> None:
    ids = [f"{i:032x}" for i in range(count)]
    leaves = [hashlib.sha256(b"\x00" + bytes.fromhex(i)).digest() for i in ids]

    def tree(nodes: list[bytes]) -> bytes:
        if len(nodes) == 1:
            return nodes[0]
        k = 1
        while k * 2 < len(nodes):
            k *= 2
        return hashlib.sha256(b"\x01" + tree(nodes[:k]) + tree(nodes[k:])).digest()

    expected = tree(leaves).hex() if leaves else hashlib.sha256(b"").hexdigest()
    assert merkle_root(list(reversed(ids))) == expected


def test_an_output_moved_to_another_region_is_refused(demo_run: DemoRun,
                                                      tmp_path: Path) -> None:
    output = demo_run.outputs()[0]
    other = "us" if output.parent.name == "eu" else "eu"
    moved = tmp_path / other / output.name
    moved.parent.mkdir()
    shutil.copyfile(output, moved)
    shutil.copyfile(_statement_path(output), _statement_path(moved))
    verdict = verify_output(moved, broker_key=demo_run.broker_key)
    assert not verdict.ok and verdict.checks["digest"] is False
    assert any("another region's sink" in r for r in verdict.reasons)
