"""The HTTP side of the Azure Key Vault fake: routing, Key Vault error bodies, request handler.

`route` maps a method and path to the operation the fake serves (get, wrapkey, unwrapkey, release,
rotate, update, delete, getdeleted, purge); `VaultError` is an error answer and `error_body` its
Key Vault JSON body (``{"error": {"code", "message", "innererror"}}``); `handler_for` builds the
``BaseHTTPRequestHandler`` that bounds the request body, hands it to `FakeKeyVault.handle`, and
records a crash of the fake so that the test fails on ``close()``. It keeps no key state and
checks no authentication (``fake_azure_kv.FakeKeyVault`` does both).
"""

from __future__ import annotations

import json
import re
from http.server import BaseHTTPRequestHandler
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tests.keybroker.kms.fake_azure_kv import FakeKeyVault

_PATH_RE = re.compile(
    r"^/keys/(?P<name>[A-Za-z0-9-]+)(?:/(?P<version>[A-Za-z0-9]*))?"
    r"(?:/(?P<op>wrapkey|unwrapkey|release))?/?$"
)
_ROTATE_RE = re.compile(r"^/keys/(?P<name>[A-Za-z0-9-]+)/rotate/?$")
_DELETED_RE = re.compile(r"^/deletedkeys/(?P<name>[A-Za-z0-9-]+)/?$")


class VaultError(Exception):
    def __init__(self, status: int, code: str, message: str, inner: str | None = None) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.inner = status, code, message, inner


def route_of(method: str, path: str) -> tuple[str, str, str] | None:
    """(operation, key name, version) of a request the fake serves, or None."""
    deleted = _DELETED_RE.match(path)
    if deleted is not None:
        operation = {"GET": "getdeleted", "DELETE": "purge"}.get(method)
        return (operation, deleted.group("name"), "") if operation else None
    rotate = _ROTATE_RE.match(path)
    if rotate is not None:
        return ("rotate", rotate.group("name"), "") if method == "POST" else None
    match = _PATH_RE.match(path)
    if match is None:
        return None
    name, version, op = match.group("name"), match.group("version") or "", match.group("op")
    if op is not None:
        return (op, name, version) if method == "POST" else None
    operation = {"GET": "get", "PATCH": "update"}.get(method)
    if method == "DELETE" and not version:
        operation = "delete"
    return (operation, name, version) if operation else None


def error_body(code: str, message: str, inner: str | None = None) -> dict[str, Any]:
    error: dict[str, Any] = {"code": code, "message": message}
    if inner:
        error["innererror"] = {"code": inner}
    return {"error": error}


def handler_for(vault: FakeKeyVault) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def _serve(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            if length > 1 << 20:
                self.send_error(413)
                return
            body = self.rfile.read(length) if length else b""
            try:
                status, headers, answer = vault.handle(self.command, self.path, self.headers, body)
            except Exception as exc:  # a bug in the fake: answer, and fail the test on close()
                vault.unexpected.append(f"{self.command} {self.path}: {exc!r}")
                status, headers, answer = 500, {}, error_body("FakeCrashed", repr(exc))
            vault.requests.append((self.command, self.path, status))
            data = b"" if answer is None else json.dumps(answer).encode()
            self.send_response(status)
            for name, value in {
                "Content-Type": "application/json; charset=utf-8",
                **headers,
            }.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_POST = do_PATCH = do_DELETE = _serve

        def log_message(self, format: str, *args: Any) -> None:
            return

    return Handler
