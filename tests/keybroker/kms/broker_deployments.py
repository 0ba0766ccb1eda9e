"""Brokers whose ``eu`` KEK lives on each KMS backend, for tests that drive them over HTTP.

Four context managers, each a real broker on loopback (``tests.support.broker``) with the real
backend injected through ``kms_backends`` and bound to a fake: ``local_deployment`` (the
state's own keyring file), ``gcp_deployment`` (google-cloud-kms against the gRPC fake of
``fake_gcp_kms``), ``azure_deployment`` (azure-keyvault-keys against the HTTPS fake of
``fake_azure_kv``) and ``pkcs11_deployment`` (python-pkcs11 against SoftHSM2 tokens that
``softhsm_tokens`` makes in a temporary directory; skipped where SoftHSM2 is not installed).
Each ``Deployment`` carries the levers its tests pull: one transient fault on the next wrap or
unwrap, a permanent wrap refusal, and per failure kind a KEK to wrap under and what breaks it.
``partner_seals``, ``worker_opens`` and ``worker_generates`` play the partner and a freshly
attested simulated SEV-SNP worker. Test modules wrap these in module-scoped fixtures of their
own. Backoff sleeps are recorded, not slept.
"""


from __future__ import annotations

import itertools
import random
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pkcs11
import pytest
from google.cloud import kms_v1
from google.cloud.kms_v1.services.key_management_service import transports
from pkcs11 import Attribute

from envelope import DataKey, WrappedKey, dek_wrap_aad, open_record, read_header, seal_record
from envelope.transport import release_info
from keybroker.client import (
    GENERATE_PURPOSE,
    RELEASE_PURPOSE,
    BrokerClient,
)
from keybroker.kms.azure_kv import AzureKeyVaultKms
from keybroker.kms.backend_settings import (
    GcpKmsSettings,
    KmsBackendSettings,
)
from keybroker.kms.base import KeyManagementService
from keybroker.kms.gcp import GcpKms
from keybroker.kms.local import LocalKeyring
from keybroker.kms.pkcs11 import Pkcs11Kms
from keybroker.kms.registry import (
    clear_openssl_error_queue,
)
from keybroker.kms.retry import Backoff
from keybroker.service.server import RunningBroker
from tests.keybroker.kms.fake_azure_kv import FakeKeyVault, FakePki, StaticTokenCredential
from tests.keybroker.kms.fake_gcp_kms import FakeKeyManagementService, State
from tests.keybroker.kms.softhsm import (
    SoftHsm,
    TokenSpec,
    activate,
    create_softhsm,
    find_softhsm_module,
)
from tests.support.broker import attest_simulated_worker, start_broker

REGION, PRODUCER = "eu", "acme"
AAD = dek_wrap_aad(REGION, PRODUCER)
SCHEMA_FINGERPRINT = b"\x5b" * 32
SPEC_FINGERPRINT = bytes(range(32))
BACKOFF = Backoff(attempts=4, initial_delay=0.001, max_delay=0.004)
GCP_LOCATIONS = "projects/sealbeam-test/locations"
GCP_EU_KEY = f"{GCP_LOCATIONS}/europe-west3/keyRings/eu-ring/cryptoKeys/kek"
GCP_REGION_LOCATIONS = {"eu": ("europe-west1", "europe-west3"), "us": ("us-central1",)}
HSM_TOKEN = TokenSpec("sealbeam-broker", "broker-user-pin-2718", "broker-so-pin-3141")
US_LOCAL_KEK = "local://keyring/us/kek-1"
_names = itertools.count(1)


def unique(prefix: str) -> str:
    return f"{prefix}-{next(_names)}"


@dataclass
class Deployment:
    """A broker whose ``eu`` KEK lives on one backend, and the levers its tests pull."""

    scheme: str
    broker: RunningBroker
    kms: KeyManagementService  # the very instance the broker uses
    kek_uri: str
    sleeps: list[float]
    fail_unwrap_once: Callable[[], None] | None = None  # one transient fault, next unwrap
    fail_wrap_once: Callable[[], None] | None = None  # one transient fault, next wrap
    fail_wrap_permanently: Callable[[], None] | None = None
    # failure kind -> (a KEK to wrap under, what breaks it once a DEK is wrapped)
    breakers: dict[str, tuple[Callable[[], str], Callable[[WrappedKey], None]]] = field(
        default_factory=dict
    )
    fake: Any = None


def _allow_keks(*patterns: str) -> Callable[[dict[str, Any]], None]:
    def edit(document: dict[str, Any]) -> None:
        for rule in document["rules"]:
            rule["keks"] = [*rule["keks"], *patterns]

    return edit


def _broker_for(
    state_dir: Path,
    kek_uri: str,
    backends: Any,
    *,
    patterns: tuple[str, ...] = (),
    kms_settings: KmsBackendSettings | None = None,
) -> Any:
    return start_broker(
        state_dir,
        policy_edit=_allow_keks(*patterns),
        settings_changes={
            "region_keks": {REGION: kek_uri, "us": US_LOCAL_KEK},
            "kms": kms_settings or KmsBackendSettings(),
        },
        kms_backends=backends,
    )


# -- the four deployments --------------------------------------------------------------------


@contextmanager
def local_deployment(directory: Path) -> Iterator[Deployment]:
    """The state's own keyring file; breakers retire a version (rotate, then disable/destroy)."""
    opened: list[LocalKeyring] = []

    def share_the_states_keyring(settings: Any) -> dict[str, KeyManagementService]:
        opened.append(LocalKeyring.open(settings.keyring_path))
        return {"local": opened[0]}

    kek_uri = "local://keyring/eu/kek-1"
    with _broker_for(directory / "state", kek_uri, share_the_states_keyring) as broker:
        keyring = opened[0]

        def retire(state_change: Callable[[str, str], None]) -> Callable[[WrappedKey], None]:
            def apply(wrapped: WrappedKey) -> None:
                keyring.rotate(wrapped.kek.uri)  # the primary can be neither disabled nor destroyed
                state_change(wrapped.kek.uri, wrapped.kek.version)

            return apply

        yield Deployment(
            "local", broker, keyring, kek_uri, [],
            breakers={
                "disabled": (lambda: kek_uri, retire(keyring.disable_version)),
                "destroyed": (lambda: kek_uri, retire(keyring.destroy_version)),
            },
        )


@contextmanager
def gcp_deployment(directory: Path) -> Iterator[Deployment]:
    """GcpKms over an insecure channel to the gRPC fake; fails the exit on unused injections."""
    fake = FakeKeyManagementService()
    fake.start()
    fake.create_key(GCP_EU_KEY)
    channel = grpc.insecure_channel(fake.address)
    sleeps: list[float] = []
    client = kms_v1.KeyManagementServiceClient(
        transport=transports.KeyManagementServiceGrpcTransport(channel=channel)
    )
    backend = GcpKms(client, backoff=BACKOFF, sleep=sleeps.append, rng=random.Random(5), timeout=5)
    kek_uri = f"gcp-kms://{GCP_EU_KEY}"
    settings = KmsBackendSettings(gcp_kms=GcpKmsSettings(region_locations=GCP_REGION_LOCATIONS))

    def new_key(location: str, prefix: str) -> str:
        name = f"{GCP_LOCATIONS}/{location}/keyRings/ring/cryptoKeys/{unique(prefix)}"
        fake.create_key(name)
        return f"gcp-kms://{name}"

    def set_state(state: int) -> Callable[[WrappedKey], None]:
        return lambda wrapped: fake.set_state(
            wrapped.kek.uri.removeprefix("gcp-kms://"), wrapped.kek.version, state
        )

    def deny_next_decrypt(_wrapped: WrappedKey) -> None:
        fake.fail_next(
            grpc.StatusCode.PERMISSION_DENIED,
            "Permission 'cloudkms.cryptoKeyVersions.useToDecrypt' denied on resource",
            method="Decrypt",
        )

    try:
        with _broker_for(
            directory / "state", kek_uri, {"gcp-kms": backend},
            patterns=(f"gcp-kms://{GCP_LOCATIONS}/*",), kms_settings=settings,
        ) as broker:
            yield Deployment(
                "gcp-kms", broker, backend, kek_uri, sleeps,
                fail_unwrap_once=lambda: fake.fail_next(
                    grpc.StatusCode.UNAVAILABLE, "connection reset", method="Decrypt"
                ),
                fail_wrap_once=lambda: fake.fail_next(
                    grpc.StatusCode.RESOURCE_EXHAUSTED, "quota exceeded", method="Encrypt"
                ),
                fail_wrap_permanently=lambda: fake.fail_next(
                    grpc.StatusCode.PERMISSION_DENIED,
                    "Permission 'cloudkms.cryptoKeyVersions.useToEncrypt' denied",
                    method="Encrypt",
                ),
                breakers={
                    "permission": (lambda: kek_uri, deny_next_decrypt),
                    "disabled": (lambda: new_key("europe-west3", "paused"),
                                 set_state(State.DISABLED)),
                    "destroyed": (lambda: new_key("europe-west3", "doomed"),
                                  set_state(State.DESTROYED)),
                    "location": (lambda: new_key("us-central1", "abroad"), lambda _w: None),
                },
                fake=fake,
            )
    finally:
        channel.close()
        fake.stop()
    fake.assert_all_used()


@contextmanager
def azure_deployment(directory: Path) -> Iterator[Deployment]:
    """AzureKeyVaultKms over TLS to the HTTPS fake vault (an oct-HSM key, A256KW)."""
    pki = FakePki.create(directory / "pki")
    sleeps: list[float] = []
    with FakeKeyVault(pki) as vault:
        vault.create_oct_key("kek")
        backend = AzureKeyVaultKms(
            StaticTokenCredential(),  # type: ignore[arg-type]
            connection_verify=str(pki.ca_path),
            allowed_hosts=[vault.host],
            verify_challenge_resource=False,
            backoff=BACKOFF,
            sleep=sleeps.append,
        )
        kek_uri = f"azure-kv://{vault.host}/keys/kek"

        def new_key(prefix: str) -> str:
            name = unique(prefix)
            vault.create_oct_key(name)
            return f"azure-kv://{vault.host}/keys/{name}"

        def key_name(wrapped: WrappedKey) -> str:
            return wrapped.kek.uri.rsplit("/", 1)[1]

        def delete_key(wrapped: WrappedKey) -> None:
            del vault.keys[key_name(wrapped)]

        with _broker_for(
            directory / "state", kek_uri, {"azure-kv": backend}, patterns=(f"azure-kv://{vault.host}/keys/*",)
        ) as broker:
            yield Deployment(
                "azure-kv", broker, backend, kek_uri, sleeps,
                fail_unwrap_once=lambda: vault.fail_next("unwrapkey", 503),
                fail_wrap_once=lambda: vault.fail_next(
                    "wrapkey", 429, "Throttled", "Too many requests"
                ),
                fail_wrap_permanently=lambda: vault.fail_next(
                    "wrapkey", 403, "Forbidden",
                    "The user, group or application does not have keys wrapKey permission",
                ),
                breakers={
                    "permission": (lambda: kek_uri, lambda _w: vault.fail_next(
                        "unwrapkey", 403, "Forbidden",
                        "The user, group or application does not have keys unwrapKey permission",
                    )),
                    "disabled": (lambda: new_key("paused"),
                                 lambda wrapped: vault.disable_key(key_name(wrapped))),
                    "destroyed": (lambda: new_key("doomed"), delete_key),
                },
                fake=vault,
            )


@contextmanager
def softhsm_tokens(directory: Path) -> Iterator[SoftHsm]:
    """SoftHSM2 with HSM_TOKEN in ``directory``, active for the block; skips when not installed."""
    module = find_softhsm_module()
    if module is None:
        pytest.skip("SoftHSM2 module (libsofthsm2.so) not installed: apt-get install softhsm2")
    hsm = create_softhsm(directory, module, [HSM_TOKEN])
    with activate(hsm):
        clear_openssl_error_queue()  # C_Initialize ran on this thread (see the registry)
        yield hsm


@contextmanager
def pkcs11_deployment(directory: Path, softhsm: SoftHsm) -> Iterator[Deployment]:
    """Pkcs11Kms logged in to HSM_TOKEN of an active SoftHSM (``softhsm_tokens``)."""
    sleeps: list[float] = []
    backend = Pkcs11Kms(softhsm.module, pin=HSM_TOKEN.user_pin, backoff=BACKOFF,
                        sleep=sleeps.append, rng=random.Random(11))
    kek_uri = backend.generate_kek(HSM_TOKEN.label, "kek-eu").uri

    def new_key(prefix: str) -> str:
        return backend.generate_kek(HSM_TOKEN.label, unique(prefix)).uri

    def on_token_key(wrapped: WrappedKey, change: Callable[[Any], None]) -> None:
        label = wrapped.kek.uri.rsplit("/", 1)[1]
        token = pkcs11.lib(str(softhsm.module)).get_token(token_label=HSM_TOKEN.label)
        with token.open(rw=True) as session:  # the backend's login is the application's
            change(next(iter(session.get_objects({Attribute.LABEL: label}))))

    def forbid_decrypt(key: Any) -> None:
        key[Attribute.DECRYPT] = False

    def drop_sessions() -> None:
        pkcs11.lib(str(softhsm.module)).reinitialize()  # every session handle becomes invalid
        clear_openssl_error_queue()

    try:
        with _broker_for(
            directory / "state", kek_uri, {"pkcs11": backend}, patterns=(f"pkcs11://{HSM_TOKEN.label}/*",)
        ) as broker:
            yield Deployment(
                "pkcs11", broker, backend, kek_uri, sleeps,
                fail_unwrap_once=drop_sessions,
                fail_wrap_once=drop_sessions,
                breakers={
                    "disabled": (lambda: new_key("paused"),
                                 lambda wrapped: on_token_key(wrapped, forbid_decrypt)),
                    "destroyed": (lambda: new_key("doomed"),
                                  lambda wrapped: on_token_key(wrapped, lambda key: key.destroy())),
                },
            )
    finally:
        backend.close()


SCHEMES = ("local", "gcp-kms", "azure-kv", "pkcs11")


# -- partner and worker ----------------------------------------------------------------------


def partner_seals(deployed: Deployment, plaintext: bytes, kek_uri: str | None = None) -> bytes:
    """A record sealed as a partner does: a fresh DEK wrapped through the backend."""
    data_key = DataKey.generate()
    wrapped = deployed.kms.wrap(kek_uri or deployed.kek_uri, data_key.secret_bytes(), AAD)
    return seal_record(plaintext, data_key=data_key, wrapped_key=wrapped, region=REGION,
                       producer_id=PRODUCER, schema_fingerprint=SCHEMA_FINGERPRINT,
                       context={"sealbeam.test": deployed.scheme})


def worker_opens(broker: RunningBroker, envelope: bytes) -> bytes:
    """A freshly attested worker has the broker release the record's DEK and opens it."""
    header, _length = read_header(envelope)
    with BrokerClient(broker.url) as client:
        tee_keys, session = attest_simulated_worker(client, broker.settings)
        sealed = client.release(session, header.wrapped_key, header.region, header.producer_id)
    secret = tee_keys.open(sealed, release_info(RELEASE_PURPOSE, header.wrapped_key.key_id))
    return open_record(envelope, DataKey(secret))


def worker_generates(broker: RunningBroker, **options: Any) -> tuple[DataKey, WrappedKey]:
    with BrokerClient(broker.url) as client:
        tee_keys, session = attest_simulated_worker(client, broker.settings)
        sealed, wrapped = client.generate(session, REGION, PRODUCER, **options)
    return DataKey(tee_keys.open(sealed, release_info(GENERATE_PURPOSE, wrapped.key_id))), wrapped

