"""Preflight of an Azure Blob sink: where its storage account is, where it replicates, its keys.

What it does: ``read_account`` asks the Azure Resource Manager through ``azure-mgmt-storage``
(the data plane does not say where an account is): the account's location, replication SKU
and secondary location, its encryption key source, and the container's default encryption
scope (and that scope's key source). ``check_azure_sink`` refuses the sink unless the
account's location is allowed for the data's region; unless, for geo-redundant SKUs (GRS,
RA-GRS, GZRS, RA-GZRS), the secondary (as reported, else Azure's paired region) is allowed
too; and, where the map requires a customer-managed key, unless the account encrypts with a
Key Vault key or the container's default encryption scope does, with scope override denied.

What it does not: check that the Key Vault key is itself in the region (its URI does not say
where the vault is).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pipelines.residency.locations import (
    AZURE_GEO_REDUNDANT_SKUS,
    azure_paired_region,
    location_allowed,
)
from pipelines.residency.residency_map import AzureAccount, RegionResidency
from pipelines.residency.sinks import SinkUrl

from .report import SinkCheck

__all__ = ["AccountFacts", "check_azure_sink", "read_account"]

KEY_VAULT = "microsoft.keyvault"
ACCOUNT_SCOPE = "$account-encryption-key"


@dataclass(frozen=True)
class AccountFacts:
    """What the management API says about an account and one of its containers."""

    location: str
    sku: str
    secondary_location: str | None
    key_source: str
    scope: str | None
    scope_key_source: str | None
    scope_enforced: bool

    @property
    def geo_redundant(self) -> bool:
        return self.sku.lower() in AZURE_GEO_REDUNDANT_SKUS

    @property
    def customer_managed(self) -> bool:
        if self.key_source.lower() == KEY_VAULT:
            return True
        return (self.scope_key_source or "").lower() == KEY_VAULT and self.scope_enforced

    @property
    def encryption(self) -> str:
        if self.scope:
            return f"scope:{self.scope}:{self.scope_key_source or 'unknown'}"
        return f"account:{self.key_source}"


def read_account(client: Any, where: AzureAccount, account: str, container: str
                 ) -> AccountFacts | str:
    """The account's and container's facts, or why they could not be read (one line)."""
    from azure.core.exceptions import AzureError, HttpResponseError, ResourceNotFoundError

    group = where.resource_group
    try:
        found = client.storage_accounts.get_properties(group, account)
        blob_container = client.blob_containers.get(group, account, container)
        scope_name = blob_container.default_encryption_scope or None
        if scope_name == ACCOUNT_SCOPE:  # the account's own encryption, not a scope resource
            scope_name = None
        scope = (client.encryption_scopes.get(group, account, scope_name)
                 if scope_name else None)
    except ResourceNotFoundError as exc:
        return f"not found in resource group {group} ({exc.reason or 'not found'})"
    except HttpResponseError as exc:
        return f"its properties could not be read ({exc.status_code}: {exc.reason})"
    except AzureError as exc:                        # no credentials, no route to the API
        message = (str(exc).splitlines() or [""])[0][:200]
        return f"its properties could not be read ({type(exc).__name__}: {message})"
    encryption = found.encryption
    return AccountFacts(
        location=str(found.location or ""),
        sku=_text(found.sku.name if found.sku else ""),
        secondary_location=found.secondary_location or None,
        key_source=_text(encryption.key_source if encryption else "Microsoft.Storage"),
        scope=scope_name,
        scope_key_source=_text(scope.source) if scope is not None and scope.source else None,
        scope_enforced=bool(blob_container.deny_encryption_scope_override),
    )


def _text(value: Any) -> str:
    """The SDK's enums (``SkuName.STANDARD_LRS``) as the API spells them (``Standard_LRS``)."""
    return str(getattr(value, "value", value) or "")


def check_azure_sink(sink: SinkUrl, role: str, region: RegionResidency, client: Any,
                     where: AzureAccount) -> SinkCheck:
    """The check of one ``azfs://``/``abfs://`` sink against ``region``'s pinning."""
    label = f"{role} {sink.url} of region {region.region}"
    allowed = ", ".join(region.locations)
    facts = read_account(client, where, sink.store, sink.container)
    if isinstance(facts, str):
        return SinkCheck(region.region, role, sink.url, "unknown", "", (), "unknown",
                         f"{label}: storage account {sink.store}: {facts}")
    secondary = facts.secondary_location or (
        azure_paired_region(facts.location) if facts.geo_redundant else None)
    members = tuple(sorted({facts.location.lower()} | ({secondary.lower()} if secondary and
                                                      facts.geo_redundant else set())))

    def check(refusal: str | None) -> SinkCheck:
        return SinkCheck(region.region, role, sink.url, facts.location, facts.sku, members,
                         facts.encryption, refusal)

    if not facts.location or not location_allowed(facts.location, region.locations):
        return check(f"{label} is in {facts.location or 'an unknown location'} "
                     f"(account {sink.store}, {facts.sku}); allowed: {allowed}")
    if facts.geo_redundant:
        if secondary is None:
            return check(f"{label} replicates ({facts.sku}) from {facts.location} to an "
                         f"unknown secondary; allowed: {allowed}")
        if not location_allowed(secondary, region.locations):
            return check(f"{label} replicates ({facts.sku}) from {facts.location} to "
                         f"{secondary}; allowed: {allowed}")
    if region.require_cmk and not facts.customer_managed:
        return check(f"{label} in {facts.location} is encrypted with "
                     f"{facts.encryption}, not a customer-managed key; region "
                     f"{region.region} requires one")
    return check(None)
