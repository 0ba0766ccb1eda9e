"""The registry opens each KMS backend from broker.yaml's ``kms`` section, lazily.

Azure Key Vault (credential from azure-identity, here replaced by a static token), Cloud KMS
(credentials file and regional endpoint), PKCS#11 (module path from the settings, PIN only
from the environment); a missing package breaks only its scheme; an unconfigured scheme is not
served; the broker imports no cloud SDK until a scheme needs it; and opening a PKCS#11 module
leaves no stale OpenSSL error behind for the next TLS call on the same thread. The fakes are the
deployments' (``broker_deployments``).
"""

from __future__ import annotations

import _ssl
import ctypes
import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pkcs11
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from keybroker.kms.azure_kv import AzureKeyVaultKms
from keybroker.kms.backend_settings import (
    AzureKvSettings,
    GcpKmsSettings,
    KmsBackendSettings,
    KmsSettingsError,
    Pkcs11Settings,
)
from keybroker.kms.base import UnsupportedKmsSchemeError
from keybroker.kms.gcp import GcpKms
from keybroker.kms.local import LocalKeyring
from keybroker.kms.pkcs11 import PIN_ENV, Pkcs11ConfigurationError, Pkcs11Kms
from keybroker.kms.registry import (
    KmsBackendUnavailableError,
    KmsRegistry,
    azure_credential,
)
from tests.keybroker.kms.broker_deployments import (
    AAD,
    GCP_EU_KEY,
    GCP_REGION_LOCATIONS,
    HSM_TOKEN,
    Deployment,
)
from tests.keybroker.kms.fake_azure_kv import FakeKeyVault, StaticTokenCredential
from tests.keybroker.kms.softhsm import SoftHsm

# -- the registry opens each backend from broker.yaml's kms section --------------------------


def _settings_with(deployed: Deployment, kms: KmsBackendSettings) -> Any:
    return dataclasses.replace(deployed.broker.settings, kms=kms)


def test_registry_opens_azure_kv_from_settings(
    azure_broker: Deployment, monkeypatch: pytest.MonkeyPatch
) -> None:
    from azure import identity

    vault: FakeKeyVault = azure_broker.fake
    monkeypatch.setattr(identity, "DefaultAzureCredential", lambda: StaticTokenCredential())
    settings = _settings_with(azure_broker, KmsBackendSettings(azure_kv=AzureKvSettings(
        allowed_hosts=(vault.host,), ca_bundle=vault.pki.ca_path, verify_challenge_resource=False,
    )))
    registry = KmsRegistry(settings)
    backend = registry.for_uri(azure_broker.kek_uri)
    assert isinstance(backend, AzureKeyVaultKms)
    assert registry.for_uri(azure_broker.kek_uri) is backend
    dek = os.urandom(32)
    assert registry.unwrap(registry.wrap(azure_broker.kek_uri, dek, AAD), AAD) == dek

    managed = AzureKvSettings(credential="managed-identity", client_id="1b2c3d4e-client")
    credential = azure_credential(managed)
    assert isinstance(credential, identity.ManagedIdentityCredential)


def test_registry_opens_gcp_kms_from_settings(
    gcp_broker: Deployment, tmp_path: Path
) -> None:
    credentials_file = tmp_path / "service-account.json"
    credentials_file.write_text(json.dumps(_service_account("broker@sealbeam-test")))
    settings = _settings_with(gcp_broker, KmsBackendSettings(gcp_kms=GcpKmsSettings(
        endpoint="cloudkms.europe-west3.rep.googleapis.com", credentials_file=credentials_file,
    )))
    backend = KmsRegistry(settings).for_uri(gcp_broker.kek_uri)  # nothing is contacted yet
    assert isinstance(backend, GcpKms)
    client = backend._client  # the one way to see what the opener configured
    assert client.api_endpoint == "cloudkms.europe-west3.rep.googleapis.com"
    assert client._transport._credentials.service_account_email == (
        "broker@sealbeam-test.iam.gserviceaccount.com"
    )

    credentials_file.write_text('{"type": "nonsense"}')
    with pytest.raises(KmsSettingsError, match=r"kms\.gcp_kms\.credentials_file .*unusable"):
        KmsRegistry(settings).for_uri(gcp_broker.kek_uri)


def test_registry_opens_pkcs11_from_settings_with_the_pin_from_the_environment(
    pkcs11_broker: Deployment, softhsm: SoftHsm, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = _settings_with(
        pkcs11_broker, KmsBackendSettings(pkcs11=Pkcs11Settings(module=softhsm.module))
    )
    monkeypatch.delenv(PIN_ENV, raising=False)
    with pytest.raises(Pkcs11ConfigurationError, match=PIN_ENV):
        KmsRegistry(settings).for_uri(pkcs11_broker.kek_uri)
    monkeypatch.setenv(PIN_ENV, HSM_TOKEN.user_pin)
    registry = KmsRegistry(settings)
    try:
        dek = os.urandom(32)
        wrapped = registry.wrap(pkcs11_broker.kek_uri, dek, AAD)
        assert isinstance(registry.for_uri(pkcs11_broker.kek_uri), Pkcs11Kms)
        assert pkcs11_broker.kms.unwrap(wrapped, AAD) == dek
    finally:
        registry.close()


def test_opening_pkcs11_leaves_no_openssl_error_for_the_next_tls_call(
    pkcs11_broker: Deployment, azure_broker: Deployment, softhsm: SoftHsm,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    libcrypto = ctypes.CDLL(_ssl.__file__)
    pkcs11.lib(str(softhsm.module)).finalize()  # so that opening the backend initialises it
    pkcs11_broker.kms.close()  # (drop the deployment's sessions, now stale)
    monkeypatch.setenv(PIN_ENV, HSM_TOKEN.user_pin)
    settings = _settings_with(
        pkcs11_broker, KmsBackendSettings(pkcs11=Pkcs11Settings(module=softhsm.module))
    )
    registry = KmsRegistry(settings)
    try:
        registry.for_uri(pkcs11_broker.kek_uri)  # C_Initialize on this thread
        assert libcrypto.ERR_peek_error() == 0
        dek = os.urandom(32)  # a TLS handshake with the vault on the same thread
        wrapped = azure_broker.kms.wrap(azure_broker.kek_uri, dek, AAD)
        assert azure_broker.kms.unwrap(wrapped, AAD) == dek
    finally:
        registry.close()


def test_a_missing_backend_package_breaks_only_its_scheme(
    local_broker: Deployment, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = _settings_with(local_broker, KmsBackendSettings(
        gcp_kms=GcpKmsSettings(region_locations=GCP_REGION_LOCATIONS)
    ))
    monkeypatch.setitem(sys.modules, "keybroker.kms.gcp", None)  # import now fails
    registry = KmsRegistry(settings)
    with pytest.raises(KmsBackendUnavailableError, match="needs google-cloud-kms"):
        registry.for_uri(f"gcp-kms://{GCP_EU_KEY}")
    assert isinstance(registry.for_uri(local_broker.kek_uri), LocalKeyring)


def test_a_scheme_without_settings_is_not_served(local_broker: Deployment) -> None:
    registry = KmsRegistry(local_broker.broker.settings)
    with pytest.raises(UnsupportedKmsSchemeError, match=r"no kms\.azure_kv section"):
        registry.for_uri("azure-kv://example.vault.azure.net/keys/kek")
    with pytest.raises(UnsupportedKmsSchemeError, match="no KMS backend for scheme 'vault'"):
        registry.for_uri("vault://transit/keys/kek")


def test_the_broker_imports_no_cloud_sdk_until_a_scheme_needs_it(
    local_broker: Deployment,
) -> None:
    program = (
        "import sys\n"
        "from keybroker.config import BrokerSettings\n"
        "from keybroker.service.app import create_app\n"
        f"app = create_app(BrokerSettings.load({str(local_broker.broker.settings.state_dir)!r}"
        " + '/broker.yaml'))\n"
        "app.state.service.close()\n"
        "loaded = [name for name in ('google.cloud.kms_v1', 'azure.keyvault.keys', 'pkcs11',"
        " 'keybroker.kms.gcp', 'keybroker.kms.azure_kv', 'keybroker.kms.pkcs11')"
        " if name in sys.modules]\n"
        "print(loaded)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", program], capture_output=True, text=True, timeout=120,
        cwd=Path(__file__).resolve().parents[3], check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def _service_account(name: str) -> dict[str, str]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    account, project = name.split("@")
    return {
        "type": "service_account",
        "project_id": project,
        "private_key_id": "0123456789abcdef",
        "private_key": pem,
        "client_email": f"{account}@{project}.iam.gserviceaccount.com",
        "client_id": "100000000000000000001",
        "token_uri": "https://oauth2.googleapis.com/token",
    }

