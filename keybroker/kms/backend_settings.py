"""Settings of the cloud and HSM KMS backends: the ``kms`` section of ``broker.yaml``.

```yaml
kms:
  gcp_kms:                      # present = the gcp-kms:// scheme is served
    endpoint: cloudkms.europe-west3.rep.googleapis.com   # optional; default the global one
    credentials_file: gcp-sa.json                        # optional; default ambient (ADC)
    region_locations: {eu: [europe-west1, europe-west3, eu], us: [us, us-central1]}
  azure_kv:                     # present = the azure-kv:// scheme is served
    allowed_hosts: []           # exact host[:port] besides the Azure vault domains
    ca_bundle: null             # CA bundle path; default the system CAs (TLS is never off)
    credential: default         # default | managed-identity | workload-identity | environment | cli
    client_id: null             # which managed / workload identity, when there are several
    verify_challenge_resource: true
  pkcs11:                       # present = the pkcs11:// scheme is served
    module: /usr/lib/softhsm/libsofthsm2.so             # the user PIN comes only from the
                                                        # environment: SEALBEAM_PKCS11_PIN
```

A section that is absent leaves its scheme unserved (``UnsupportedKmsSchemeError``); an empty
mapping (``gcp_kms: {}``) serves it with the defaults. Unknown fields are errors that name the
field, and so is a ``pin`` under ``pkcs11``. Relative paths are taken from broker.yaml's
directory. This module only parses and validates: it opens no backend (the registry does),
reads no credential file and imports no cloud SDK.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from keybroker.kms.base import KmsError

__all__ = [
    "AZURE_CREDENTIAL_KINDS",
    "AzureKvSettings",
    "GcpKmsSettings",
    "KmsBackendSettings",
    "KmsSettingsError",
    "Pkcs11Settings",
]

AZURE_CREDENTIAL_KINDS = ("default", "managed-identity", "workload-identity", "environment", "cli")
MAX_REGIONS = 64
MAX_LOCATIONS_PER_REGION = 64
MAX_ALLOWED_HOSTS = 32
_HOST = re.compile(r"^[A-Za-z0-9.-]{1,253}(:[0-9]{1,5})?$")
_LOCATION = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")
_REGION = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")
_CLIENT_ID = re.compile(r"^[A-Za-z0-9._-]{1,128}$")
_SECTIONS = {"gcp_kms", "azure_kv", "pkcs11"}
_GCP_FIELDS = {"endpoint", "credentials_file", "region_locations"}
_AZURE_FIELDS = {"allowed_hosts", "ca_bundle", "credential", "client_id",
                 "verify_challenge_resource"}
_PKCS11_FIELDS = {"module"}


class KmsSettingsError(KmsError):
    """The ``kms`` section of the broker settings is malformed; the message names the field."""


@dataclass(frozen=True)
class GcpKmsSettings:
    """Cloud KMS: where to reach it, with which credentials, and which locations serve a region."""

    endpoint: str | None = None
    credentials_file: Path | None = None
    region_locations: Mapping[str, tuple[str, ...]] = field(default_factory=dict)


@dataclass(frozen=True)
class AzureKvSettings:
    """Key Vault / Managed HSM: which hosts, which CAs, which azure-identity credential."""

    allowed_hosts: tuple[str, ...] = ()
    ca_bundle: Path | None = None
    credential: str = "default"
    client_id: str | None = None
    verify_challenge_resource: bool = True

    def __post_init__(self) -> None:
        if self.credential not in AZURE_CREDENTIAL_KINDS:
            raise KmsSettingsError(
                f"kms.azure_kv.credential: expected one of {', '.join(AZURE_CREDENTIAL_KINDS)}, "
                f"got {self.credential!r}"
            )
        if not self.verify_challenge_resource and not self.allowed_hosts:
            raise KmsSettingsError(
                "kms.azure_kv.verify_challenge_resource: may be false only together with "
                "allowed_hosts (private endpoints, tests)"
            )


@dataclass(frozen=True)
class Pkcs11Settings:
    """The PKCS#11 module to load; the PIN is read from SEALBEAM_PKCS11_PIN, never from here."""

    module: Path


@dataclass(frozen=True)
class KmsBackendSettings:
    """Per-scheme settings; ``None`` means the scheme is not served by this broker."""

    gcp_kms: GcpKmsSettings | None = None
    azure_kv: AzureKvSettings | None = None
    pkcs11: Pkcs11Settings | None = None

    @classmethod
    def from_mapping(cls, document: object, *, base_dir: Path) -> KmsBackendSettings:
        """Parse the ``kms`` mapping (``None`` = no cloud or HSM backend)."""
        if document is None:
            return cls()
        _check_fields("kms", document, _SECTIONS)
        assert isinstance(document, Mapping)
        gcp = document.get("gcp_kms", _ABSENT)
        azure = document.get("azure_kv", _ABSENT)
        pkcs11 = document.get("pkcs11", _ABSENT)
        return cls(
            gcp_kms=None if gcp is _ABSENT else _gcp_from(gcp, base_dir),
            azure_kv=None if azure is _ABSENT else _azure_from(azure, base_dir),
            pkcs11=None if pkcs11 is _ABSENT else _pkcs11_from(pkcs11, base_dir),
        )

    def to_mapping(self, relative: Callable[[Path | None], str | None]) -> dict[str, object]:
        """The ``kms`` mapping as broker.yaml holds it (``relative`` shortens paths)."""
        document: dict[str, object] = {}
        if self.gcp_kms is not None:
            document["gcp_kms"] = {
                "endpoint": self.gcp_kms.endpoint,
                "credentials_file": relative(self.gcp_kms.credentials_file),
                "region_locations": {
                    region: list(locations)
                    for region, locations in self.gcp_kms.region_locations.items()
                },
            }
        if self.azure_kv is not None:
            document["azure_kv"] = {
                "allowed_hosts": list(self.azure_kv.allowed_hosts),
                "ca_bundle": relative(self.azure_kv.ca_bundle),
                "credential": self.azure_kv.credential,
                "client_id": self.azure_kv.client_id,
                "verify_challenge_resource": self.azure_kv.verify_challenge_resource,
            }
        if self.pkcs11 is not None:
            document["pkcs11"] = {"module": relative(self.pkcs11.module)}
        return document


_ABSENT = object()


def _check_fields(where: str, document: object, allowed: set[str]) -> None:
    if not isinstance(document, Mapping):
        raise KmsSettingsError(f"{where}: expected a mapping")
    if where == "kms.pkcs11" and "pin" in document:
        raise KmsSettingsError(
            "kms.pkcs11.pin: the PKCS#11 PIN is read only from the environment variable "
            "SEALBEAM_PKCS11_PIN, never from broker.yaml"
        )
    unknown = sorted(str(key) for key in document if key not in allowed)
    if unknown:
        raise KmsSettingsError(f"{where}: unknown field(s) {', '.join(unknown)}")


def _optional_path(where: str, value: object, base_dir: Path) -> Path | None:
    if value is None:
        return None
    if not isinstance(value, str) or not value or len(value) > 4096 or "\x00" in value:
        raise KmsSettingsError(f"{where}: expected a path or null")
    return (base_dir / value).resolve()


def _gcp_from(document: object, base_dir: Path) -> GcpKmsSettings:
    document = {} if document is None else document
    _check_fields("kms.gcp_kms", document, _GCP_FIELDS)
    assert isinstance(document, Mapping)
    endpoint = document.get("endpoint")
    if endpoint is not None and (not isinstance(endpoint, str) or not _HOST.match(endpoint)):
        raise KmsSettingsError("kms.gcp_kms.endpoint: expected a host name or host:port")
    raw_locations = document.get("region_locations") or {}
    if not isinstance(raw_locations, Mapping) or len(raw_locations) > MAX_REGIONS:
        raise KmsSettingsError(
            f"kms.gcp_kms.region_locations: expected a mapping of at most {MAX_REGIONS} "
            "regions to lists of Cloud KMS locations"
        )
    region_locations: dict[str, tuple[str, ...]] = {}
    for region, locations in raw_locations.items():
        where = f"kms.gcp_kms.region_locations.{region}"
        if not isinstance(region, str) or not _REGION.match(region):
            raise KmsSettingsError(f"kms.gcp_kms.region_locations: not a region name: {region!r}")
        if (
            not isinstance(locations, list)
            or not 1 <= len(locations) <= MAX_LOCATIONS_PER_REGION
        ):
            raise KmsSettingsError(
                f"{where}: expected a list of 1..{MAX_LOCATIONS_PER_REGION} locations"
            )
        for index, location in enumerate(locations):
            if not isinstance(location, str) or not _LOCATION.match(location):
                raise KmsSettingsError(f"{where}[{index}]: not a Cloud KMS location: {location!r}")
        region_locations[region] = tuple(locations)
    return GcpKmsSettings(
        endpoint=endpoint,
        credentials_file=_optional_path(
            "kms.gcp_kms.credentials_file", document.get("credentials_file"), base_dir
        ),
        region_locations=region_locations,
    )


def _azure_from(document: object, base_dir: Path) -> AzureKvSettings:
    document = {} if document is None else document
    _check_fields("kms.azure_kv", document, _AZURE_FIELDS)
    assert isinstance(document, Mapping)
    hosts = document.get("allowed_hosts") or []
    if not isinstance(hosts, list) or len(hosts) > MAX_ALLOWED_HOSTS:
        raise KmsSettingsError(
            f"kms.azure_kv.allowed_hosts: expected a list of at most {MAX_ALLOWED_HOSTS} hosts"
        )
    for index, host in enumerate(hosts):
        if not isinstance(host, str) or not _HOST.match(host):
            raise KmsSettingsError(f"kms.azure_kv.allowed_hosts[{index}]: not a host[:port]")
    credential = document.get("credential", "default")
    if not isinstance(credential, str):
        raise KmsSettingsError("kms.azure_kv.credential: expected a string")
    client_id = document.get("client_id")
    if client_id is not None and (
        not isinstance(client_id, str) or not _CLIENT_ID.match(client_id)
    ):
        raise KmsSettingsError("kms.azure_kv.client_id: expected an identity's client id or null")
    verify = document.get("verify_challenge_resource", True)
    if not isinstance(verify, bool):
        raise KmsSettingsError("kms.azure_kv.verify_challenge_resource: expected true or false")
    return AzureKvSettings(
        allowed_hosts=tuple(host.lower() for host in hosts),
        ca_bundle=_optional_path("kms.azure_kv.ca_bundle", document.get("ca_bundle"), base_dir),
        credential=credential,
        client_id=client_id,
        verify_challenge_resource=verify,
    )


def _pkcs11_from(document: object, base_dir: Path) -> Pkcs11Settings:
    _check_fields("kms.pkcs11", document, _PKCS11_FIELDS)
    assert isinstance(document, Mapping)
    module = _optional_path("kms.pkcs11.module", document.get("module"), base_dir)
    if module is None:
        raise KmsSettingsError("kms.pkcs11.module: expected the path of the PKCS#11 module")
    return Pkcs11Settings(module=module)
