"""TLS between worker and broker: server certificates, pinning, client certificates, no http://.

Certificates are made in the test with ``cryptography``: a CA, a server certificate for
127.0.0.1 and a client certificate it issues, and an unrelated CA. The broker serves HTTPS
on loopback with ``serve_in_thread(..., tls=ServerTls(...))``; the client trusts it through
a CA bundle or a pinned certificate, and presents a client certificate when mutual TLS is on.
"""

from __future__ import annotations

import argparse
import datetime
import ipaddress
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from enclave_workers.evidence.simulated_snp import DEV_MEASUREMENT
from keybroker.client import (
    BrokerClient,
    BrokerTransportSecurityError,
    BrokerUnavailableError,
)
from keybroker.config import init_state
from keybroker.identity import IDENTITY_PUBLIC_KEY_FILE, BrokerPublicKey
from keybroker.service.server import RunningBroker, serve_in_thread
from keybroker.service.tls import ServerTls, TlsConfigError
from pipelines.commands import broker as broker_command
from tests.support.broker import attest_simulated_worker


@dataclass(frozen=True)
class Pki:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    other_ca: Path
    other_cert: Path
    other_key: Path


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> Path:
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                       serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))
    return path


def _write_cert(path: Path, cert: x509.Certificate) -> Path:
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return path


def _certificate(subject: str, key: ec.EllipticCurvePrivateKey,
                 issuer: tuple[x509.Certificate, ec.EllipticCurvePrivateKey] | None, *,
                 ca: bool = False, server: bool = False) -> x509.Certificate:
    now = datetime.datetime.now(datetime.timezone.utc)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    issuer_name, signing_key = (name, key) if issuer is None else (issuer[0].subject, issuer[1])
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                       critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(signing_key.public_key()),
            critical=False)
    )
    if ca:
        builder = builder.add_extension(
            x509.KeyUsage(digital_signature=True, content_commitment=False,
                          key_encipherment=False, data_encipherment=False, key_agreement=False,
                          key_cert_sign=True, crl_sign=True, encipher_only=False,
                          decipher_only=False), critical=True)
    else:
        usage = ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH
        builder = builder.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
    if server:
        builder = builder.add_extension(x509.SubjectAlternativeName(
            [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]),
            critical=False)
    return builder.sign(signing_key, hashes.SHA256())


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    directory = tmp_path_factory.mktemp("pki")
    ca_key, other_ca_key = _key(), _key()
    ca = _certificate("sealbeam test CA", ca_key, None, ca=True)
    other_ca = _certificate("someone else's CA", other_ca_key, None, ca=True)
    server_key, client_key, other_key = _key(), _key(), _key()
    return Pki(
        ca=_write_cert(directory / "ca.pem", ca),
        server_cert=_write_cert(directory / "server.pem",
                                _certificate("broker", server_key, (ca, ca_key), server=True)),
        server_key=_write_key(directory / "server.key", server_key),
        client_cert=_write_cert(directory / "client.pem",
                                _certificate("worker", client_key, (ca, ca_key))),
        client_key=_write_key(directory / "client.key", client_key),
        other_ca=_write_cert(directory / "other-ca.pem", other_ca),
        other_cert=_write_cert(directory / "other.pem", _certificate(
            "impostor", other_key, (other_ca, other_ca_key), server=True)),
        other_key=_write_key(directory / "other.key", other_key),
    )


@pytest.fixture(scope="module")
def state(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("tls") / "state"
    init_state(directory, allowed_measurements=(DEV_MEASUREMENT,))
    return directory


def _serve(state: Path, tls: ServerTls) -> RunningBroker:
    from keybroker.config import BrokerSettings

    return serve_in_thread(BrokerSettings.load(state / "broker.yaml"), tls=tls)


@pytest.fixture(scope="module")
def tls_broker(state: Path, pki: Pki) -> Iterator[RunningBroker]:
    broker = _serve(state, ServerTls(pki.server_cert, pki.server_key))
    try:
        yield broker
    finally:
        broker.stop()


def test_https_with_a_ca_bundle_and_the_pinned_identity(
    tls_broker: RunningBroker, pki: Pki, state: Path
) -> None:
    assert tls_broker.url.startswith("https://127.0.0.1:")
    key = BrokerPublicKey.load(state / IDENTITY_PUBLIC_KEY_FILE)
    with BrokerClient(tls_broker.url, ca_bundle=pki.ca, broker_identity=key) as client:
        assert client.health()["status"] == "ok"
        _keys, session = attest_simulated_worker(client, tls_broker.settings)
        client.generate(session, "eu", "acme")


def test_a_pinned_certificate_is_trusted_and_any_other_refused(
    tls_broker: RunningBroker, pki: Pki
) -> None:
    with BrokerClient(tls_broker.url, pinned_certificate=pki.server_cert) as client:
        assert client.health()["status"] == "ok"
    with (
        BrokerClient(tls_broker.url, pinned_certificate=pki.other_cert) as client,
        pytest.raises(BrokerTransportSecurityError),
    ):
        client.health()


def test_a_server_certificate_from_another_ca_is_refused(
    tls_broker: RunningBroker, pki: Pki
) -> None:
    with (
        BrokerClient(tls_broker.url, ca_bundle=pki.other_ca) as client,
        pytest.raises(BrokerTransportSecurityError, match="TLS handshake"),
    ):
        client.health()


def test_client_certificates_are_required_with_a_client_ca(state: Path, pki: Pki) -> None:
    broker = _serve(state, ServerTls(pki.server_cert, pki.server_key, client_ca=pki.ca))
    try:
        with BrokerClient(broker.url, ca_bundle=pki.ca,
                          client_certificate=(pki.client_cert, pki.client_key)) as client:
            assert client.health()["status"] == "ok"
        # TLS 1.3: the server checks the client's certificate after the client finished its
        # side of the handshake, so the refusal arrives as an alert or as a closed connection.
        refused = (BrokerTransportSecurityError, BrokerUnavailableError)
        with BrokerClient(broker.url, ca_bundle=pki.ca) as client, pytest.raises(refused):
            client.health()
        with (
            BrokerClient(broker.url, ca_bundle=pki.ca,
                         client_certificate=(pki.other_cert, pki.other_key)) as client,
            pytest.raises(refused),
        ):
            client.health()
    finally:
        broker.stop()


@pytest.mark.parametrize("url", ["http://10.0.0.7:8787", "http://broker.example:80",
                                 "http://[2001:db8::1]:8787", "ftp://127.0.0.1"])
def test_plain_http_to_anything_but_loopback_is_refused(url: str) -> None:
    with pytest.raises(BrokerTransportSecurityError):
        BrokerClient(url)


@pytest.mark.parametrize("url", ["http://127.0.0.1:8787", "http://localhost:1",
                                 "http://[::1]:8787"])
def test_plain_http_to_loopback_is_allowed(url: str) -> None:
    BrokerClient(url).close()


def test_the_insecure_flag_allows_remote_http_explicitly() -> None:
    BrokerClient("http://10.0.0.7:8787", allow_insecure_http=True).close()


def _serve_args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="sealbeam")
    broker_command.register(parser.add_subparsers(dest="command", required=True))
    return parser.parse_args(["broker", "serve", *argv])


def test_broker_serve_refuses_plain_http_off_loopback_and_half_tls(pki: Pki) -> None:
    with pytest.raises(TlsConfigError, match="refusing to serve plain HTTP"):
        broker_command.server_tls(_serve_args("--host", "192.0.2.10"))
    assert broker_command.server_tls(
        _serve_args("--host", "192.0.2.10", "--allow-insecure-http")) is None
    assert broker_command.server_tls(_serve_args()) is None
    with pytest.raises(TlsConfigError, match="go together"):
        broker_command.server_tls(_serve_args("--tls-cert", str(pki.server_cert)))
    with pytest.raises(TlsConfigError, match="does not load"):
        broker_command.server_tls(_serve_args("--tls-cert", str(pki.server_cert),
                                              "--tls-key", str(pki.client_key)))
    tls = broker_command.server_tls(_serve_args(
        "--host", "192.0.2.10", "--tls-cert", str(pki.server_cert), "--tls-key",
        str(pki.server_key), "--tls-client-ca", str(pki.ca)))
    assert tls == ServerTls(pki.server_cert, pki.server_key, pki.ca)


def test_a_pipeline_worker_client_trusts_the_broker_from_pem_texts(
    tls_broker: RunningBroker, pki: Pki, state: Path
) -> None:
    from apache_beam.options.pipeline_options import PipelineOptions

    from pipelines.options import SealbeamOptions, broker_trust
    from transforms.broker_identity import pinned_broker_client, resolve_broker_trust
    from transforms.tee import TeeSettings

    tee = TeeSettings(dev_tee_dir=str(state / "dev-tee"))
    for flag, path in (("--broker_ca_bundle", pki.ca), ("--broker_pinned_cert", pki.server_cert)):
        options = PipelineOptions([f"{flag}={path}"]).view_as(SealbeamOptions)
        trust = resolve_broker_trust(broker_trust(options), tee)  # identity beside dev-tee
        with pinned_broker_client(tls_broker.url, trust) as client:
            _keys, session = attest_simulated_worker(client, tls_broker.settings)
            client.generate(session, "eu", "acme")
    wrong = resolve_broker_trust(broker_trust(PipelineOptions(
        [f"--broker_ca_bundle={pki.other_ca}"]).view_as(SealbeamOptions)), tee)
    with (
        pinned_broker_client(tls_broker.url, wrong) as client,
        pytest.raises(BrokerTransportSecurityError),
    ):
        client.challenge()
