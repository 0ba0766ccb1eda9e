"""Azure Key Vault key URIs: ``azure-kv://HOST/keys/NAME[/VERSION]`` parsed and checked.

`AzureKeyUri.parse` bounds the URI's length and checks its host (an Azure Key Vault / Managed HSM
domain of the public, China or US Government clouds, or a ``host[:port]`` allowed by name), the key
name and the version against Key Vault's own rules; ``KEY_NAME_PATTERN`` and
``KEY_VERSION_PATTERN`` are those rules for callers that check a name or version alone. This module
makes no vault calls and maps no service errors (``keybroker.kms.azure_kv_errors`` does).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from keybroker.kms.azure_kv_errors import KmsInputError

__all__ = [
    "AZURE_VAULT_DOMAINS",
    "KEY_NAME_PATTERN",
    "KEY_VERSION_PATTERN",
    "SCHEME",
    "AzureKeyUri",
]

SCHEME = "azure-kv"
AZURE_VAULT_DOMAINS = (
    "vault.azure.net",
    "managedhsm.azure.net",
    "vault.azure.cn",
    "managedhsm.azure.cn",
    "vault.usgovcloudapi.net",
    "managedhsm.usgovcloudapi.net",
)

_MAX_URI_CHARS = 512

_HOST_PATTERN = re.compile(r"^[A-Za-z0-9.-]{1,253}(:[0-9]{1,5})?$")
KEY_NAME_PATTERN = re.compile(r"^[A-Za-z0-9-]{1,127}$")
KEY_VERSION_PATTERN = re.compile(r"^[A-Za-z0-9]{1,64}$")


@dataclass(frozen=True)
class AzureKeyUri:
    """A parsed ``azure-kv://HOST/keys/NAME[/VERSION]`` key reference."""

    host: str
    name: str
    version: str | None

    @property
    def vault_url(self) -> str:
        return f"https://{self.host}"

    @property
    def unversioned_uri(self) -> str:
        return f"{SCHEME}://{self.host}/keys/{self.name}"

    def key_id(self, version: str) -> str:
        """The vault's own identifier (``kid``) of one version of this key."""
        return f"{self.vault_url}/keys/{self.name}/{version}"

    @classmethod
    def parse(cls, uri: str, allowed_hosts: frozenset[str] = frozenset()) -> AzureKeyUri:
        """Parse and check a key URI; the host must be an Azure vault domain or allowed by name."""
        if not isinstance(uri, str) or len(uri) > _MAX_URI_CHARS:
            raise KmsInputError(
                f"azure-kv key URI must be a string of at most {_MAX_URI_CHARS} chars"
            )
        prefix = f"{SCHEME}://"
        if not uri.startswith(prefix):
            raise KmsInputError(f"key URI {uri!r} does not start with {prefix!r}")
        parts = uri[len(prefix) :].split("/")
        if len(parts) not in (3, 4) or parts[1] != "keys":
            raise KmsInputError(
                f"key URI {uri!r} is not of the form {prefix}HOST/keys/NAME[/VERSION]"
            )
        host, name = parts[0].lower(), parts[2]
        version = parts[3] if len(parts) == 4 else None
        if not _HOST_PATTERN.match(host) or not _host_is_allowed(host, allowed_hosts):
            raise KmsInputError(
                f"key URI host {host!r} is neither an Azure Key Vault / Managed HSM domain "
                f"({', '.join(AZURE_VAULT_DOMAINS)}) nor an explicitly allowed host"
            )
        if not KEY_NAME_PATTERN.match(name):
            raise KmsInputError(f"key name {name!r} must be 1-127 letters, digits or '-'")
        if version is not None and not KEY_VERSION_PATTERN.match(version):
            raise KmsInputError(f"key version {version!r} must be 1-64 letters or digits")
        return cls(host=host, name=name, version=version)


def _host_is_allowed(host: str, allowed_hosts: frozenset[str]) -> bool:
    if host in allowed_hosts:
        return True
    bare = host.split(":", 1)[0]
    return ":" not in host and any(
        bare.endswith("." + domain) and len(bare) > len(domain) + 1
        for domain in AZURE_VAULT_DOMAINS
    )
