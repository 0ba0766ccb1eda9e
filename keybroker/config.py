"""Broker settings (``broker.yaml``) and ``init_state``, which creates the embedded default state.

``BrokerSettings`` is the one configuration object the service is built from: where the
keyring, named keys, policy, ledger and trust roots live, which KEK each region's new data
keys are wrapped under, the nonce/session lifetimes and bounds, the cloud and HSM KMS
backends (``kms``, parsed by ``keybroker.kms.backend_settings``) and the limits of the
broker-side DEK cache (``dek_cache``, ``keybroker.dek_cache``), and the attestation trust
material (``attestation``, ``keybroker.attestation.settings``). Relative paths in
``broker.yaml`` are resolved against the file's directory.

``init_state`` is what ``sealbeam keys init`` runs: a local keyring, per-tenant
pseudonymization keys, a development SEV-SNP chain, a demo release policy, the broker's
identity key (``broker-identity.pem``, which signs grants and ledger checkpoints) and broker.yaml.
It refuses to overwrite an existing state unless ``force``. It takes the measurement
allow-list as a parameter, because keybroker must not import the enclave code that knows
the simulated worker's measurement; the CLI passes it in.

This module does not start the service and does not decide releases.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from keybroker.attestation.dev_chain import create_dev_chain
from keybroker.attestation.errors import TrustStoreError
from keybroker.attestation.settings import AttestationSettings
from keybroker.bounded_read import read_bounded
from keybroker.dek_cache import DekCacheSettings
from keybroker.identity import IDENTITY_KEY_FILE, BrokerIdentity, IdentityError
from keybroker.kms.backend_settings import KmsBackendSettings
from keybroker.kms.base import KmsError
from keybroker.kms.local import LocalKeyring, local_kek_uri
from keybroker.kms.named_keys import NamedKeyStore, named_key_aad, validate_key_name
from keybroker.policy import ReleasePolicy
from keybroker.service_limits import LimitsError, ServiceLimits
from keybroker.settings_fields import checked_section

__all__ = [
    "BROKER_SETTINGS_FILE",
    "BrokerSettings",
    "ConfigError",
    "StateExistsError",
    "demo_policy_document",
    "init_state",
]

SETTINGS_VERSION = 1
BROKER_SETTINGS_FILE = "broker.yaml"
MAX_SETTINGS_BYTES = 64 * 1024
NAMED_KEY_BYTES = 32
CHECKPOINTS_FILE = "ledger-checkpoints.jsonl"
_MANAGED_FILES = (
    "keyring.json",
    "named-keys.json",
    "policy.yaml",
    BROKER_SETTINGS_FILE,
    IDENTITY_KEY_FILE,
)
_DEV_CHAIN_DIR = "dev-tee"
_TENANT = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")
_SETTINGS_FIELDS = frozenset(
    {
        "version",
        "keyring",
        "named_keys",
        "policy",
        "ledger",
        "dev_tee",
        "snp_trust_dir",
        "region_keks",
        "nonce_ttl_seconds",
        "session_ttl_seconds",
        "max_pending_nonces",
        "max_sessions",
        "max_request_bytes",
        "kms",
        "dek_cache",
        "attestation",
        "identity_key",
        "ledger_url",
        "checkpoints",
        "checkpoint_interval_seconds",
        "limits",
    }
)


class ConfigError(Exception):
    """The broker settings or the state directory are unusable; the message names the field."""


class StateExistsError(ConfigError):
    """``init_state`` would overwrite an existing state (pass force to replace it)."""


@dataclass(frozen=True)
class BrokerSettings:
    """Everything the broker service is built from."""

    state_dir: Path
    keyring_path: Path
    named_keys_path: Path
    policy_path: Path
    ledger_path: Path
    region_keks: Mapping[str, str]
    dev_chain_dir: Path | None = None
    snp_trust_dir: Path | None = None
    nonce_ttl_seconds: float = 60.0
    session_ttl_seconds: float = 900.0
    max_pending_nonces: int = 10_000
    max_sessions: int = 10_000
    max_request_bytes: int = 1 << 20
    kms: KmsBackendSettings = field(default_factory=KmsBackendSettings)
    dek_cache: DekCacheSettings = field(default_factory=DekCacheSettings)
    attestation: AttestationSettings = field(default_factory=AttestationSettings)
    identity_key_path: Path | None = None
    """The broker's identity key (default ``<state>/broker-identity.pem``)."""
    ledger_url: str | None = None
    """``postgresql://...``: a ledger, and the spent-nonce set, shared by several brokers;
    None: SQLite at ledger_path (and ``<state>/nonces.sqlite``)."""
    checkpoints_path: Path | None = None
    """Signed ledger checkpoints, one JSON a line (default <state>/ledger-checkpoints.jsonl)."""
    checkpoint_interval_seconds: float = 60.0

    @property
    def identity_path(self) -> Path:
        return self.identity_key_path or Path(self.state_dir) / IDENTITY_KEY_FILE

    @property
    def checkpoint_file(self) -> Path:
        return self.checkpoints_path or Path(self.state_dir) / CHECKPOINTS_FILE
    limits: ServiceLimits = field(default_factory=ServiceLimits)

    def __post_init__(self) -> None:
        if not isinstance(self.limits, ServiceLimits):
            raise ConfigError("limits: expected ServiceLimits")
        if not isinstance(self.attestation, AttestationSettings):
            raise ConfigError("attestation: expected AttestationSettings")
        if not isinstance(self.kms, KmsBackendSettings):
            raise ConfigError("kms: expected KmsBackendSettings")
        if not isinstance(self.dek_cache, DekCacheSettings):
            raise ConfigError("dek_cache: expected DekCacheSettings")
        if not self.region_keks:
            raise ConfigError("region_keks: at least one region is required")
        for name in ("nonce_ttl_seconds", "session_ttl_seconds"):
            value = getattr(self, name)
            if (
                not isinstance(value, int | float)
                or isinstance(value, bool)
                or not 0 < value <= 86400
            ):
                raise ConfigError(f"{name}: expected a number of seconds in (0, 86400]")
        interval = self.checkpoint_interval_seconds
        if not isinstance(interval, int | float) or isinstance(interval, bool) or not (
            1 <= interval <= 86400
        ):
            raise ConfigError("checkpoint_interval_seconds: expected a number in [1, 86400]")
        if self.ledger_url is not None and (
            not isinstance(self.ledger_url, str)
            or not self.ledger_url.startswith(("postgresql://", "postgres://"))
        ):
            raise ConfigError("ledger_url: expected a postgresql:// URL or null")
        for name in ("max_pending_nonces", "max_sessions"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= 1_000_000:
                raise ConfigError(f"{name}: expected an integer 1..1000000")
        if (
            not isinstance(self.max_request_bytes, int)
            or not 4096 <= self.max_request_bytes <= 1 << 26
        ):
            raise ConfigError("max_request_bytes: expected an integer 4096..67108864")

    @classmethod
    def load(cls, path: Path) -> BrokerSettings:
        """Read ``broker.yaml``; relative paths are taken from the file's directory."""
        path = Path(path)
        content = read_bounded(
            path, MAX_SETTINGS_BYTES, ConfigError,
            cannot_read=f"cannot read broker settings {path}",
            too_large=f"broker settings {path} are over {MAX_SETTINGS_BYTES} bytes")
        try:
            document = yaml.safe_load(content.decode("utf-8"))
        except (UnicodeDecodeError, yaml.YAMLError) as error:
            raise ConfigError(f"broker settings {path} are not valid YAML: {error}") from None
        return cls.from_mapping(document, base_dir=path.resolve().parent)

    @classmethod
    def from_mapping(cls, document: object, *, base_dir: Path) -> BrokerSettings:
        document = checked_section(document, "broker settings", _SETTINGS_FIELDS, ConfigError)
        if document.get("version") != SETTINGS_VERSION:
            raise ConfigError(f"version: expected {SETTINGS_VERSION}")

        def required_path(key: str) -> Path:
            value = document.get(key)
            if not isinstance(value, str) or not value:
                raise ConfigError(f"{key}: expected a path")
            return (base_dir / value).resolve()

        def optional_path(key: str) -> Path | None:
            value = document.get(key)
            if value is None:
                return None
            if not isinstance(value, str) or not value:
                raise ConfigError(f"{key}: expected a path or null")
            return (base_dir / value).resolve()

        region_keks = document.get("region_keks")
        if not isinstance(region_keks, Mapping) or not all(
            isinstance(region, str) and isinstance(uri, str) for region, uri in region_keks.items()
        ):
            raise ConfigError("region_keks: expected a mapping of region -> KEK URI")
        optional_numbers = {
            key: document[key]
            for key in (
                "nonce_ttl_seconds",
                "session_ttl_seconds",
                "max_pending_nonces",
                "max_sessions",
                "max_request_bytes",
                "checkpoint_interval_seconds",
                "ledger_url",
            )
            if key in document
        }
        try:
            kms = KmsBackendSettings.from_mapping(document.get("kms"), base_dir=base_dir)
            dek_cache = DekCacheSettings.from_mapping(document.get("dek_cache"))
            attestation = AttestationSettings.from_mapping(document.get("attestation"),
                                                           base_dir=base_dir)
            limits = ServiceLimits.from_mapping(document.get("limits"))
        except (KmsError, TrustStoreError, LimitsError) as error:
            raise ConfigError(str(error)) from None
        return cls(
            state_dir=base_dir.resolve(),
            keyring_path=required_path("keyring"),
            named_keys_path=required_path("named_keys"),
            policy_path=required_path("policy"),
            ledger_path=required_path("ledger"),
            region_keks=dict(region_keks),
            dev_chain_dir=optional_path("dev_tee"),
            snp_trust_dir=optional_path("snp_trust_dir"),
            kms=kms,
            dek_cache=dek_cache,
            attestation=attestation,
            identity_key_path=optional_path("identity_key"),
            checkpoints_path=optional_path("checkpoints"),
            limits=limits,
            **optional_numbers,
        )

    def to_mapping(self) -> dict[str, object]:
        """The broker.yaml document, with paths relative to ``state_dir`` where possible."""

        def relative(path: Path | None) -> str | None:
            if path is None:
                return None
            try:
                return str(Path(path).relative_to(self.state_dir))
            except ValueError:
                return str(path)

        return {
            "version": SETTINGS_VERSION,
            "keyring": relative(self.keyring_path),
            "named_keys": relative(self.named_keys_path),
            "policy": relative(self.policy_path),
            "ledger": relative(self.ledger_path),
            "dev_tee": relative(self.dev_chain_dir),
            "snp_trust_dir": relative(self.snp_trust_dir),
            "region_keks": dict(self.region_keks),
            "nonce_ttl_seconds": self.nonce_ttl_seconds,
            "session_ttl_seconds": self.session_ttl_seconds,
            "max_pending_nonces": self.max_pending_nonces,
            "max_sessions": self.max_sessions,
            "max_request_bytes": self.max_request_bytes,
            "kms": self.kms.to_mapping(relative),
            "dek_cache": self.dek_cache.to_mapping(),
            "attestation": self.attestation.to_mapping(relative),
            "identity_key": relative(self.identity_path),
            "ledger_url": self.ledger_url,
            "checkpoints": relative(self.checkpoint_file),
            "checkpoint_interval_seconds": self.checkpoint_interval_seconds,
            "limits": self.limits.to_mapping(),
        }


def demo_policy_document(
    regions: Sequence[str], tenants: Sequence[str], measurements: Sequence[str]
) -> dict[str, object]:
    """The demo policy: only the simulated SEV-SNP worker, only for the given regions."""
    return {
        "version": 1,
        "allow_simulated": True,
        "rules": [
            {
                "name": "demo-simulated-snp",
                "tee": ["sev-snp"],
                "allow_simulated": True,
                "debug": False,
                "measurements": list(measurements) or ["*"],
                "min_tcb": {},
                "regions": list(regions),
                "keks": [f"local://keyring/{region}/*" for region in regions],
                "named_keys": [f"pseudonym/{tenant}" for tenant in tenants],
                "producers": ["*"],
            }
        ],
    }


_POLICY_HEADER = """\
# Release policy written by `sealbeam keys init` for the embedded demo.
# It trusts the SIMULATED SEV-SNP worker, whose chain ends at the development root in
# dev-tee/: every key released under it is marked simulated in the audit ledger.
# For real hardware, set allow_simulated: false and list your launch measurements.
# Grammar: docs/PROTOCOL.md, "Release policy".
"""


def init_state(
    state_dir: Path,
    regions: Sequence[str] = ("eu", "us"),
    tenants: Sequence[str] = ("acme",),
    force: bool = False,
    *,
    allowed_measurements: Sequence[str] = (),
) -> BrokerSettings:
    """Create keyring, named keys, dev chain, policy.yaml and broker.yaml in ``state_dir``.

    ``allowed_measurements`` lists the simulated worker's measurements the demo policy
    allows; when empty the policy uses ``"*"``, which matches simulated evidence only.
    """
    state_dir = Path(state_dir)
    regions = _validated_regions(regions)
    tenants = _validated_tenants(tenants)
    existing = [name for name in (*_MANAGED_FILES, _DEV_CHAIN_DIR) if (state_dir / name).exists()]
    if existing and not force:
        raise StateExistsError(
            f"state {state_dir} already holds {', '.join(existing)}; "
            "refusing to overwrite it (--force / force=True replaces keys that wrap live data)"
        )
    state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(state_dir, 0o700)

    try:
        keyring = LocalKeyring.create(state_dir / "keyring.json", regions, overwrite=force)
        named_keys = NamedKeyStore(state_dir / "named-keys.json")
        for tenant in tenants:
            name = validate_key_name(f"pseudonym/{tenant}")
            secret = os.urandom(NAMED_KEY_BYTES)
            wrapped = keyring.wrap(keyring.kek_for_region(regions[0]), secret, named_key_aad(name))
            named_keys.put(name, wrapped)
        named_keys.save()
    except KmsError as error:
        raise ConfigError(f"cannot create the keyring in {state_dir}: {error}") from error

    dev_chain_dir = state_dir / _DEV_CHAIN_DIR
    create_dev_chain(dev_chain_dir, force=force)
    try:
        BrokerIdentity.create(state_dir / IDENTITY_KEY_FILE, overwrite=force)
    except IdentityError as error:
        raise ConfigError(str(error)) from None

    policy_document = demo_policy_document(regions, tenants, list(allowed_measurements))
    policy_text = _POLICY_HEADER + yaml.safe_dump(policy_document, sort_keys=False)
    ReleasePolicy.from_yaml(policy_text)  # the demo policy must itself be valid
    (state_dir / "policy.yaml").write_text(policy_text, encoding="utf-8")

    settings = BrokerSettings(
        state_dir=state_dir.resolve(),
        keyring_path=(state_dir / "keyring.json").resolve(),
        named_keys_path=(state_dir / "named-keys.json").resolve(),
        policy_path=(state_dir / "policy.yaml").resolve(),
        ledger_path=(state_dir / "ledger.sqlite").resolve(),
        region_keks={region: local_kek_uri(region) for region in regions},
        dev_chain_dir=dev_chain_dir.resolve(),
    )
    settings_text = yaml.safe_dump(settings.to_mapping(), sort_keys=False)
    (state_dir / BROKER_SETTINGS_FILE).write_text(settings_text, encoding="utf-8")
    return BrokerSettings.load(state_dir / BROKER_SETTINGS_FILE)


def _validated_regions(regions: Sequence[str]) -> list[str]:
    region_list = list(regions)
    if not region_list:
        raise ConfigError("regions: at least one region is required")
    for region in region_list:
        try:
            local_kek_uri(region)
        except KmsError:
            raise ConfigError(f"regions: not a region name: {region!r}") from None
    if len(set(region_list)) != len(region_list):
        raise ConfigError(f"regions: duplicates in {region_list!r}")
    return region_list


def _validated_tenants(tenants: Sequence[str]) -> list[str]:
    tenant_list = list(tenants)
    for tenant in tenant_list:
        if not isinstance(tenant, str) or not _TENANT.match(tenant):
            raise ConfigError(f"tenants: not a tenant name: {tenant!r}")
    if len(set(tenant_list)) != len(tenant_list):
        raise ConfigError(f"tenants: duplicates in {tenant_list!r}")
    return tenant_list
