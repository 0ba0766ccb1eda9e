"""A man in the middle on loopback, for the authenticated-grant tests.

``MitmProxy`` relays every request to the real broker and every reply back, unchanged,
except for what the test arms it to do: ``swap_keys`` replaces the sealed key of
``generate`` and ``release-named`` replies with a key of the proxy's own choosing, sealed
to the worker's TEE public key (which it read from the relayed attest request), exactly as
issue 9 describes the attack; ``strip_grant`` removes the broker's signature; ``replay``
answers a route with the reply it relayed the first time. ``chosen_keys`` keeps what it
sealed, so a test can show that an unpinned client really was fooled.
"""

from __future__ import annotations

import base64
import json
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx

from envelope.transport import release_info, seal_to_tee
from keybroker.client import GENERATE_PURPOSE, NAMED_PURPOSE

__all__ = ["MitmProxy", "mitm_proxy"]


@dataclass
class MitmProxy:
    upstream: str
    swap_keys: bool = False
    strip_grant: bool = False
    replay: set[str] = field(default_factory=set)
    url: str = ""
    tee_public_key: bytes | None = None
    chosen_keys: list[bytes] = field(default_factory=list)
    first_replies: dict[str, bytes] = field(default_factory=dict)

    def rewrite(self, path: str, request: bytes, status: int, reply: bytes) -> bytes:
        if path == "/v1/attest":
            self.tee_public_key = base64.b64decode(json.loads(request)["tee_public_key"])
        if status != 200:
            return reply
        if path in self.replay:
            if path in self.first_replies:
                return self.first_replies[path]
            self.first_replies[path] = reply
        body = json.loads(reply)
        if self.swap_keys and path in ("/v1/keys/generate", "/v1/keys/release-named"):
            assert self.tee_public_key is not None, "the proxy saw no attest"
            chosen = os.urandom(32)
            self.chosen_keys.append(chosen)
            if path == "/v1/keys/generate":
                info = release_info(GENERATE_PURPOSE, body["key_id"])
                body["sealed_dek"] = _b64(seal_to_tee(self.tee_public_key, chosen, info))
            else:
                info = release_info(NAMED_PURPOSE, body["name"])
                body["sealed_key"] = _b64(seal_to_tee(self.tee_public_key, chosen, info))
        if self.strip_grant:
            body.pop("grant", None)
        return json.dumps(body).encode("utf-8")


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


@contextmanager
def mitm_proxy(upstream: str, **arms: object) -> Iterator[MitmProxy]:
    """Serve a ``MitmProxy`` in front of ``upstream`` on a free loopback port."""
    proxy = MitmProxy(upstream, **arms)  # type: ignore[arg-type]
    relay = httpx.Client(base_url=upstream, timeout=10.0)

    class Handler(BaseHTTPRequestHandler):
        def _relay(self) -> None:
            length = int(self.headers.get("content-length") or 0)
            request = self.rfile.read(length) if length else b""
            headers = {"content-type": self.headers.get("content-type", "application/json")}
            upstream_reply = relay.request(
                self.command, self.path, content=request or None, headers=headers
            )
            reply = proxy.rewrite(self.path, request, upstream_reply.status_code,
                                  upstream_reply.content)
            self.send_response(upstream_reply.status_code)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(reply)))
            self.end_headers()
            self.wfile.write(reply)

        do_GET = _relay
        do_POST = _relay

        def log_message(self, *_args: object) -> None:
            return

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, name="mitm-proxy", daemon=True)
    thread.start()
    proxy.url = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        yield proxy
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)
        relay.close()
