"""Authenticated key release: grants signed by the broker's identity key, checked by workers.

The man-in-the-middle case of issue 9 runs for real: a proxy on loopback relays attest and
release unchanged and swaps the sealed key of generate and release-named replies for one it
chose, sealed to the worker's TEE key. An unpinned client is fooled (the attack works); a
client that pins the broker's key, and the worker's KeySession on top of it, refuse.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from enclave_workers.evidence.simulated_snp import SimulatedSnpProvider
from enclave_workers.key_session import KeySession
from envelope import DataKey, dek_wrap_aad
from envelope.transport import release_info
from keybroker.client import (
    GENERATE_PURPOSE,
    NAMED_PURPOSE,
    RELEASE_PURPOSE,
    BrokerClient,
    BrokerReplyNotAuthenticError,
)
from keybroker.grants import (
    GrantError,
    session_handle,
    sign_grant,
    verify_attestation_result,
    verify_grant,
)
from keybroker.identity import (
    IDENTITY_PUBLIC_KEY_FILE,
    BrokerIdentity,
    BrokerPublicKey,
    IdentityError,
)
from keybroker.kms.local import LocalKeyring
from keybroker.service.server import RunningBroker
from tests.keybroker.mitm_proxy import mitm_proxy
from tests.support.broker import attest_simulated_worker, start_broker


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningBroker]:
    with start_broker(tmp_path_factory.mktemp("grants") / "state") as running:
        yield running


@pytest.fixture(scope="module")
def pinned_key(broker: RunningBroker) -> BrokerPublicKey:
    return BrokerPublicKey.load(broker.settings.state_dir / IDENTITY_PUBLIC_KEY_FILE)


def _wrapped_eu_key(broker: RunningBroker) -> tuple[DataKey, object]:
    keyring = LocalKeyring.open(broker.settings.keyring_path)
    data_key = DataKey.generate()
    wrapped = keyring.wrap(
        keyring.kek_for_region("eu"), data_key.secret_bytes(), dek_wrap_aad("eu", "acme")
    )
    return data_key, wrapped


# -- the honest path ------------------------------------------------------------------------


def test_a_pinned_client_accepts_every_grant_of_the_real_broker(
    broker: RunningBroker, pinned_key: BrokerPublicKey
) -> None:
    with BrokerClient(broker.url, broker_identity=pinned_key) as client:
        tee_keys, session = attest_simulated_worker(client, broker.settings)
        data_key, wrapped = _wrapped_eu_key(broker)
        sealed = client.release(session, wrapped, "eu", "acme")  # type: ignore[arg-type]
        opened = tee_keys.open(sealed, release_info(RELEASE_PURPOSE, wrapped.key_id))  # type: ignore[attr-defined]
        assert opened == data_key.secret_bytes()
        sealed_out, out_wrapped = client.generate(session, "eu", "acme")
        info = release_info(GENERATE_PURPOSE, out_wrapped.key_id)
        assert len(tee_keys.open(sealed_out, info)) == 32
        named = client.release_named(session, "pseudonym/acme")
        assert len(tee_keys.open(named, release_info(NAMED_PURPOSE, "pseudonym/acme"))) == 32


def test_the_attestation_result_verifies_with_only_the_broker_public_key(
    broker: RunningBroker, pinned_key: BrokerPublicKey
) -> None:
    with BrokerClient(broker.url, broker_identity=pinned_key) as client:
        tee_keys, session = attest_simulated_worker(client, broker.settings)
    # Saved as JSON and read back elsewhere: only the PEM of the public key is needed.
    saved = json.loads(json.dumps(session.attestation_result))
    result = verify_attestation_result(BrokerPublicKey.from_pem(pinned_key.pem()), saved)
    assert result.session == session_handle(session.id)
    assert result.tee_public_keys["hpke"] == tee_keys.public_bytes()
    assert result.claims["tee"] == "sev-snp"
    assert result.claims["measurement"] == session.claims["measurement"]
    assert result.simulated is True and result.claims["simulated"] is True
    assert result.policy_rule == "demo-simulated-snp"
    assert result.expires_at == pytest.approx(session.expires_at)
    tampered = dict(saved)
    document = json.loads(base64.b64decode(saved["payload"]))
    document["claims"]["measurement"] = "00" * 48
    tampered["payload"] = base64.b64encode(json.dumps(document).encode()).decode()
    with pytest.raises(GrantError):
        verify_attestation_result(pinned_key, tampered)
    with pytest.raises(GrantError):
        verify_attestation_result(BrokerIdentity.generate().public_key, saved)


# -- the man in the middle ------------------------------------------------------------------


def test_an_unpinned_client_is_fooled_by_the_key_swapping_proxy(broker: RunningBroker) -> None:
    """The attack is real: without the pinned key the worker opens the proxy's keys."""
    with mitm_proxy(broker.url, swap_keys=True) as proxy, BrokerClient(proxy.url) as client:
        tee_keys, session = attest_simulated_worker(client, broker.settings)
        sealed, wrapped = client.generate(session, "eu", "acme")
        assert tee_keys.open(sealed, release_info(GENERATE_PURPOSE, wrapped.key_id)) == (
            proxy.chosen_keys[-1]
        )
        named = client.release_named(session, "pseudonym/acme")
        assert tee_keys.open(named, release_info(NAMED_PURPOSE, "pseudonym/acme")) == (
            proxy.chosen_keys[-1]
        )


def test_a_pinned_client_refuses_swapped_generate_and_named_keys(
    broker: RunningBroker, pinned_key: BrokerPublicKey
) -> None:
    with (
        mitm_proxy(broker.url, swap_keys=True) as proxy,
        BrokerClient(proxy.url, broker_identity=pinned_key) as client,
    ):
        _tee_keys, session = attest_simulated_worker(client, broker.settings)  # relayed as is
        _data_key, wrapped = _wrapped_eu_key(broker)
        client.release(session, wrapped, "eu", "acme")  # type: ignore[arg-type]  # relayed as is
        with pytest.raises(BrokerReplyNotAuthenticError, match="does not match the reply"):
            client.generate(session, "eu", "acme")
        with pytest.raises(BrokerReplyNotAuthenticError, match="does not match the reply"):
            client.release_named(session, "pseudonym/acme")
        assert len(proxy.chosen_keys) == 2


def test_the_worker_key_session_refuses_the_swapped_output_key(
    broker: RunningBroker, pinned_key: BrokerPublicKey
) -> None:
    assert broker.settings.dev_chain_dir is not None
    with mitm_proxy(broker.url, swap_keys=True) as proxy:
        client = BrokerClient(proxy.url, broker_identity=pinned_key)
        session = KeySession(client, SimulatedSnpProvider(broker.settings.dev_chain_dir))
        try:
            with pytest.raises(BrokerReplyNotAuthenticError):
                session.output_key("eu", "acme")
            with pytest.raises(BrokerReplyNotAuthenticError):
                session.named_key("pseudonym/acme")
        finally:
            session.close()
            client.close()
        assert proxy.chosen_keys, "the proxy did swap keys"


def test_a_pinned_client_refuses_a_reply_without_a_grant(
    broker: RunningBroker, pinned_key: BrokerPublicKey
) -> None:
    with (
        mitm_proxy(broker.url, strip_grant=True) as proxy,
        BrokerClient(proxy.url, broker_identity=pinned_key) as client,
        pytest.raises(BrokerReplyNotAuthenticError, match="not authenticated"),
    ):
        attest_simulated_worker(client, broker.settings)


def test_a_replayed_grant_for_another_request_is_refused(
    broker: RunningBroker, pinned_key: BrokerPublicKey
) -> None:
    """The proxy answers every release with the first release it saw: bound to its request."""
    with (
        mitm_proxy(broker.url, replay={"/v1/keys/release"}) as proxy,
        BrokerClient(proxy.url, broker_identity=pinned_key) as client,
    ):
        _tee_keys, session = attest_simulated_worker(client, broker.settings)
        _key, first = _wrapped_eu_key(broker)
        _key, second = _wrapped_eu_key(broker)
        client.release(session, first, "eu", "acme")  # type: ignore[arg-type]
        with pytest.raises(BrokerReplyNotAuthenticError):
            client.release(session, second, "eu", "acme")  # type: ignore[arg-type]
        assert "/v1/keys/release" in proxy.first_replies


def test_a_grant_from_another_broker_key_is_refused(broker: RunningBroker) -> None:
    other = BrokerIdentity.generate().public_key
    with (
        BrokerClient(broker.url, broker_identity=other) as client,
        pytest.raises(BrokerReplyNotAuthenticError, match="not signed by the pinned"),
    ):
        attest_simulated_worker(client, broker.settings)


# -- the grant itself -----------------------------------------------------------------------


def test_verify_grant_binds_operation_request_reply_session_and_time() -> None:
    identity = BrokerIdentity.generate()
    request = {"session_id": "s" * 43, "name": "pseudonym/acme"}
    reply = {"sealed_key": "QUJD", "name": "pseudonym/acme", "simulated": True}
    handle = session_handle(request["session_id"])
    signed = {**reply, "grant": sign_grant(identity, "release-named", request, reply, handle,
                                           1000.0)}
    verify_grant(identity.public_key, "release-named", request, signed, handle, 1010.0)
    cases = {
        "operation": ("generate", request, signed, handle, 1010.0),
        "request": ("release-named", {**request, "name": "pseudonym/other"}, signed, handle,
                    1010.0),
        "reply": ("release-named", request, {**signed, "sealed_key": "REVG"}, handle, 1010.0),
        "session": ("release-named", request, signed, session_handle("t" * 43), 1010.0),
        "time": ("release-named", request, signed, handle, 1000.0 + 3600),
    }
    for name, (operation, req, rep, sess, now) in cases.items():
        with pytest.raises(GrantError):
            verify_grant(identity.public_key, operation, req, rep, sess, now)
            pytest.fail(f"a changed {name} was accepted")


def test_identity_files_are_private_and_typed(tmp_path: Path) -> None:
    path = tmp_path / "broker-identity.pem"
    identity = BrokerIdentity.create(path)
    assert path.stat().st_mode & 0o777 == 0o600
    assert BrokerPublicKey.load(tmp_path / IDENTITY_PUBLIC_KEY_FILE) == identity.public_key
    assert BrokerIdentity.load(path).key_id == identity.key_id
    with pytest.raises(IdentityError, match="refusing to overwrite"):
        BrokerIdentity.create(path)
    (tmp_path / "junk.pem").write_text("not a key")
    with pytest.raises(IdentityError):
        BrokerPublicKey.load(tmp_path / "junk.pem")
