"""A local HTTP server that answers the cloud metadata calls emulators cannot.

``gcp-storage-emulator`` reports every bucket in ``US`` and knows no KMS key; Azurite has no
management API at all. ``MetadataServer`` serves prepared JSON documents by path on
127.0.0.1 (a free port), so preflight reads locations through the real SDKs:
``gcs_client(server)`` is a ``google.cloud.storage.Client`` whose endpoint is the server,
``azure_management_client(server, subscription)`` an ``azure.mgmt.storage`` client and
``key_vault_management_client(server, subscription)`` an ``azure.mgmt.keyvault`` client whose
``base_url`` is the server, with a fake bearer credential (the server checks the header).
Prepared documents: ``gcs_bucket(...)``, ``azure_account(...)``, ``azure_container(...)``,
``azure_scope(...)``, ``key_vault(...)`` (``put_key_vault``). Unknown paths answer 404 in each
API's error format.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

__all__ = [
    "MetadataServer",
    "azure_account",
    "azure_container",
    "azure_management_client",
    "azure_scope",
    "gcs_bucket",
    "gcs_client",
    "key_vault",
    "key_vault_management_client",
    "metadata_server",
]

ARM_PREFIX = "/subscriptions/{sub}/resourceGroups/{group}/providers/Microsoft.Storage/" \
             "storageAccounts/{account}"
VAULT_PREFIX = "/subscriptions/{sub}/resourceGroups/{group}/providers/Microsoft.KeyVault/" \
               "{kind}/{name}"
FAKE_TOKEN = "preflight-test-token"


class MetadataServer:
    """Prepared JSON by path; ``requests`` lists the paths asked, in order."""

    def __init__(self) -> None:
        self.documents: dict[str, dict[str, Any]] = {}
        self.requests: list[str] = []
        self.authorizations: list[str | None] = []
        self.url = ""

    def put_gcs_bucket(self, name: str, document: dict[str, Any]) -> None:
        self.documents[f"/storage/v1/b/{name}"] = document

    def put_azure(self, subscription: str, group: str, account: str,
                  account_doc: dict[str, Any], containers: dict[str, dict[str, Any]],
                  scopes: dict[str, dict[str, Any]] | None = None) -> None:
        prefix = ARM_PREFIX.format(sub=subscription, group=group, account=account)
        self.documents[prefix] = account_doc
        for name, doc in containers.items():
            self.documents[f"{prefix}/blobServices/default/containers/{name}"] = doc
        for name, doc in (scopes or {}).items():
            self.documents[f"{prefix}/encryptionScopes/{name}"] = doc


    def put_key_vault(self, subscription: str, group: str, document: dict[str, Any]) -> None:
        """A vault or managed HSM document (``key_vault``), at its management API path."""
        kind = "managedHSMs" if document["type"].endswith("managedHSMs") else "vaults"
        self.documents[VAULT_PREFIX.format(sub=subscription, group=group, kind=kind,
                                           name=document["name"])] = document


def _handler(server: MetadataServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            path = urlsplit(self.path).path
            server.requests.append(path)
            server.authorizations.append(self.headers.get("Authorization"))
            document = server.documents.get(path)
            if document is None:
                body = ({"error": {"code": "ResourceNotFound", "message": f"{path} not found"}}
                        if path.startswith("/subscriptions/") else
                        {"error": {"code": 404, "message": "Not Found"}})
                self._send(404, body)
                return
            self._send(200, document)

        def _send(self, status: int, body: dict[str, Any]) -> None:
            encoded = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(encoded)))
            self.end_headers()
            self.wfile.write(encoded)

        def log_message(self, *args: object) -> None:
            return

    return Handler


@contextmanager
def metadata_server() -> Iterator[MetadataServer]:
    """Serve a ``MetadataServer`` on 127.0.0.1 (port 0) until the block ends."""
    state = MetadataServer()
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler(state))
    state.url = f"http://127.0.0.1:{httpd.server_address[1]}"
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)


def gcs_bucket(name: str, location: str, location_type: str, *, kms_key: str | None = None,
               data_locations: list[str] | None = None) -> dict[str, Any]:
    document: dict[str, Any] = {"kind": "storage#bucket", "id": name, "name": name,
                                "location": location, "locationType": location_type}
    if kms_key:
        document["encryption"] = {"defaultKmsKeyName": kms_key}
    if data_locations:
        document["customPlacementConfig"] = {"dataLocations": data_locations}
    return document


def azure_account(name: str, location: str, sku: str, *, secondary: str | None = None,
                  key_source: str = "Microsoft.Storage") -> dict[str, Any]:
    properties: dict[str, Any] = {"encryption": {"keySource": key_source, "services": {}},
                                  "primaryLocation": location}
    if secondary:
        properties["secondaryLocation"] = secondary
    return {"id": f"/accounts/{name}", "name": name, "location": location, "kind": "StorageV2",
            "type": "Microsoft.Storage/storageAccounts",
            "sku": {"name": sku, "tier": sku.split("_")[0]}, "properties": properties}


def azure_container(name: str, *, scope: str = "$account-encryption-key",
                    deny_override: bool = False) -> dict[str, Any]:
    return {"id": f"/containers/{name}", "name": name,
            "properties": {"defaultEncryptionScope": scope,
                           "denyEncryptionScopeOverride": deny_override}}


def azure_scope(name: str, source: str) -> dict[str, Any]:
    return {"id": f"/scopes/{name}", "name": name,
            "properties": {"source": source, "state": "Enabled"}}


def key_vault(name: str, location: str, *, managed_hsm: bool = False) -> dict[str, Any]:
    """A Key Vault (or Managed HSM) resource as ``vaults.get`` (``managed_hsms.get``) reads
    it."""
    kind = "managedHSMs" if managed_hsm else "vaults"
    properties: dict[str, Any] = {"tenantId": "00000000-0000-0000-0000-00000000000a",
                                  "sku": {"family": "A", "name": "premium"}}
    if not managed_hsm:
        properties["vaultUri"] = f"https://{name}.vault.azure.net/"
    return {"id": f"/vaults/{name}", "name": name, "type": f"Microsoft.KeyVault/{kind}",
            "location": location, "properties": properties}


def gcs_client(server: MetadataServer) -> Any:
    """A real ``google.cloud.storage.Client`` whose API endpoint is ``server``."""
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import storage

    return storage.Client(project="preflight-test", credentials=AnonymousCredentials(),
                          client_options={"api_endpoint": server.url})


class _FakeCredential:
    """A bearer-token credential that never leaves the machine."""

    def get_token(self, *scopes: str, **kwargs: Any) -> Any:
        from azure.core.credentials import AccessToken

        return AccessToken(FAKE_TOKEN, 4_102_444_800)


def azure_management_client(server: MetadataServer, subscription: str) -> Any:
    """A real ``StorageManagementClient`` whose ``base_url`` is ``server`` (plain HTTP, so the
    bearer header is added by a policy of the test instead of the TLS-only default)."""
    from azure.core.pipeline.policies import SansIOHTTPPolicy
    from azure.mgmt.storage import StorageManagementClient

    class _Bearer(SansIOHTTPPolicy):
        def on_request(self, request: Any) -> None:
            request.http_request.headers["Authorization"] = f"Bearer {FAKE_TOKEN}"

    return StorageManagementClient(_FakeCredential(), subscription, base_url=server.url,
                                   authentication_policy=_Bearer(), retry_total=0)


def key_vault_management_client(server: MetadataServer, subscription: str) -> Any:
    """A real ``KeyVaultManagementClient`` whose ``base_url`` is ``server`` (as above)."""
    from azure.core.pipeline.policies import SansIOHTTPPolicy
    from azure.mgmt.keyvault import KeyVaultManagementClient

    class _Bearer(SansIOHTTPPolicy):
        def on_request(self, request: Any) -> None:
            request.http_request.headers["Authorization"] = f"Bearer {FAKE_TOKEN}"

    return KeyVaultManagementClient(_FakeCredential(), subscription, base_url=server.url,
                                    authentication_policy=_Bearer(), retry_total=0)
