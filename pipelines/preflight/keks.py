"""Preflight of each region's KEK: is the key its outputs are sealed under where the map allows?

What it does: ``check_kek(region, residency, clients)`` finds where the region's ``kek`` is
and refuses it, one line naming the KEK, where it is and what is allowed, unless every member
region of that location is one of the region's ``locations``:

- ``gcp-kms://projects/P/locations/L/keyRings/R/cryptoKeys/K``: ``L`` (a Cloud KMS key ring's
  location is part of its resource name; ``europe``/``us``/``asia`` are expanded to their
  member regions, ``global`` is its own location), then the key itself is read with
  ``google-cloud-kms`` (``GetCryptoKey``): a key that does not exist there is refused.
- ``azure-kv://NAME.vault.azure.net/keys/K``: the vault's location through the management API
  (``azure-mgmt-keyvault`` ``vaults.get``; the vault's resource group and subscription come
  from the map's ``azure_key_vaults``), plus Azure's paired region, where Key Vault replicates
  a vault's contents; ``NAME.managedhsm.azure.net``: ``managed_hsms.get``, its location only.
- ``local://`` (the broker's keyring file) and ``pkcs11://`` (an HSM): no location preflight
  could read; accepted only where the region sets ``local_kek: true``.

What it does not: check that the broker can use the key (the broker does), or trust a URI's
host name for a location (a vault's name says nothing about where it is).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from pipelines.residency.locations import LOCAL, azure_paired_region, location_allowed
from pipelines.residency.residency_map import RegionResidency, ResidencyMap

__all__ = ["KekCheck", "check_kek"]

READ_TIMEOUT_S = 10.0
_VAULT_SUFFIXES = (".vault.azure.net", ".vault.azure.cn", ".vault.usgovcloudapi.net")
_HSM_SUFFIXES = (".managedhsm.azure.net", ".managedhsm.azure.cn",
                 ".managedhsm.usgovcloudapi.net")


@dataclass(frozen=True)
class KekCheck:
    """One region's KEK as found: ``regions`` are the member regions of its location."""

    region: str
    kek: str
    location: str
    regions: tuple[str, ...]
    source: str
    refusal: str | None = None

    def to_json(self) -> dict[str, object]:
        return {**asdict(self), "regions": list(self.regions)}


def check_kek(region: RegionResidency, residency: ResidencyMap,
              gcp_kms: Callable[[], Any], key_vault: Callable[[str], Any]) -> KekCheck | None:
    """The check of ``region``'s KEK (None for a region without one, as a derived map)."""
    kek = region.kek
    if not kek:
        return None
    scheme = kek.split("://", 1)[0] if "://" in kek else ""
    if scheme in ("local", "pkcs11"):
        return _local(region, kek, scheme)
    if scheme == "gcp-kms":
        return _gcp(region, kek, gcp_kms)
    if scheme == "azure-kv":
        return _azure(region, kek, residency, key_vault)
    return KekCheck(region.region, kek, "unknown", (), "none", (
        f"kek {kek} of region {region.region} is not a gcp-kms://, azure-kv://, pkcs11:// or "
        "local:// KEK: where it is cannot be read"))


def _allowed(region: RegionResidency) -> str:
    return ", ".join(region.locations)


def _local(region: RegionResidency, kek: str, scheme: str) -> KekCheck:
    what = "a key in the broker's local keyring" if scheme == "local" else "a PKCS#11 HSM key"
    refusal = None if region.local_kek else (
        f"kek {kek} of region {region.region} is {what}, whose location cannot be read; "
        f"region {region.region} does not set local_kek (allowed: {_allowed(region)})")
    return KekCheck(region.region, kek, LOCAL, (LOCAL,), f"{scheme} (not verifiable)", refusal)


def _gcp(region: RegionResidency, kek: str, gcp_kms: Callable[[], Any]) -> KekCheck:
    from keybroker.kms.base import KmsError
    from keybroker.kms.gcp_names import parse_gcp_kek_uri
    from pipelines.residency.locations import member_regions

    label = f"kek {kek} of region {region.region}"
    try:
        name = parse_gcp_kek_uri(kek)
    except KmsError as exc:
        return KekCheck(region.region, kek, "unknown", (), "resource name",
                        f"{label}: {exc}")
    members = tuple(sorted(member_regions(name.location)))

    def check(refusal: str | None, source: str = "resource name") -> KekCheck:
        return KekCheck(region.region, kek, name.location, members, source, refusal)

    if not location_allowed(name.location, region.locations):
        return check(f"{label} is in {name.location} (key ring {name.key_ring}: "
                     f"{', '.join(members)}); allowed: {_allowed(region)}")
    found = _read_crypto_key(gcp_kms, name.resource_name)
    if found is not None:
        return check(f"{label} in {name.location}: {found}")
    return check(None, "resource name, Cloud KMS GetCryptoKey")


def _read_crypto_key(gcp_kms: Callable[[], Any], resource_name: str) -> str | None:
    """None when the key exists under that name, else why not (one line)."""
    from google.api_core import exceptions
    from google.auth.exceptions import GoogleAuthError

    try:
        key = gcp_kms().get_crypto_key(name=resource_name, timeout=READ_TIMEOUT_S)
    except exceptions.NotFound:
        return "the key does not exist"
    except exceptions.GoogleAPICallError as exc:
        return f"the key could not be read ({exc.code}: {exc.message})"
    except (GoogleAuthError, OSError, exceptions.RetryError) as exc:  # no credentials, route
        return f"the key could not be read ({type(exc).__name__}: {_first_line(exc)})"
    if getattr(key, "name", None) != resource_name:
        return f"Cloud KMS answered for another key ({getattr(key, 'name', '')!r})"
    return None


def _first_line(exc: BaseException) -> str:
    return (str(exc).splitlines() or [""])[0][:200]


def _vault(host: str) -> tuple[str, str] | None:
    """(kind, name) of a Key Vault or Managed HSM host; None for any other host."""
    bare = host.split(":", 1)[0]
    if ":" in host:
        return None
    for kind, suffixes in (("vault", _VAULT_SUFFIXES), ("managed HSM", _HSM_SUFFIXES)):
        for suffix in suffixes:
            if bare.endswith(suffix) and len(bare) > len(suffix):
                return kind, bare[: -len(suffix)]
    return None


def _azure(region: RegionResidency, kek: str, residency: ResidencyMap,
           key_vault: Callable[[str], Any]) -> KekCheck:
    from keybroker.kms.azure_kv_errors import KmsInputError
    from keybroker.kms.azure_kv_names import AzureKeyUri

    label = f"kek {kek} of region {region.region}"

    def refused(message: str, location: str = "unknown") -> KekCheck:
        return KekCheck(region.region, kek, location, (), "Key Vault management API",
                        f"{label}: {message}")

    try:
        uri = AzureKeyUri.parse(kek)
    except KmsInputError as exc:
        return refused(str(exc))
    vault = _vault(uri.host)
    if vault is None:
        return refused(f"{uri.host} is not a Key Vault or Managed HSM host: where it is "
                       "cannot be read")
    kind, name = vault
    where = residency.azure_key_vaults.get(name.lower())
    if where is None:
        return refused(f"{kind} {name} is not listed in azure_key_vaults (subscription_id, "
                       "resource_group): where it is cannot be read")
    location, problem = _read_vault(key_vault(where.subscription_id), where.resource_group,
                                    kind, name)
    if location is None:
        return refused(f"{kind} {name}: {problem}")
    paired = azure_paired_region(location) if kind == "vault" else None
    members = tuple(sorted({location.lower(), *([paired] if paired else [])}))

    def check(refusal: str | None) -> KekCheck:
        return KekCheck(region.region, kek, location, members,
                        f"Key Vault management API ({kind} {name})", refusal)

    if not location or not location_allowed(location, region.locations):
        return check(f"{label} is in {kind} {name} at {location or 'an unknown location'}; "
                     f"allowed: {_allowed(region)}")
    if paired and not location_allowed(paired, region.locations):
        return check(f"{label} is in {kind} {name} at {location}, which Key Vault replicates "
                     f"to its paired region {paired}; allowed: {_allowed(region)}")
    return check(None)


def _read_vault(client: Any, group: str, kind: str, name: str) -> tuple[str | None, str]:
    """(the vault's location, "") or (None, why it could not be read, one line)."""
    from azure.core.exceptions import AzureError, HttpResponseError, ResourceNotFoundError

    try:
        found = (client.vaults.get(group, name) if kind == "vault"
                 else client.managed_hsms.get(group, name))
    except ResourceNotFoundError as exc:
        return None, f"not found in resource group {group} ({exc.reason or 'not found'})"
    except HttpResponseError as exc:
        return None, f"its properties could not be read ({exc.status_code}: {exc.reason})"
    except AzureError as exc:                        # no credentials, no route to the API
        return None, (f"its properties could not be read ({type(exc).__name__}: "
                      f"{_first_line(exc)})")
    if found is None:
        return None, f"not found in resource group {group}"
    return str(found.location or "").lower(), ""
