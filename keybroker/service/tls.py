"""TLS for ``broker serve``: the server certificate and key, and optional client certificates.

What it does: ``ServerTls`` names the PEM files (checked to exist and parse before the
server starts, so a typo fails at once rather than at the first handshake) and turns them
into uvicorn's ssl options; with ``client_ca`` every client must present a certificate that
CA issued (mutual TLS). TLS 1.2 is the minimum.

What it does not: it does not issue or rotate certificates. TLS protects the channel and
the bearer session ids; the broker's signed grants (``keybroker.grants``) protect the keys
even where TLS ends at a proxy in front of the broker.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from pathlib import Path

__all__ = ["ServerTls", "TlsConfigError"]


class TlsConfigError(Exception):
    """A TLS file is missing or does not load; the message names which."""


@dataclass(frozen=True)
class ServerTls:
    certificate: Path
    private_key: Path
    client_ca: Path | None = None

    def check(self) -> None:
        """Load the files once into a context, as the server will."""
        for name, path in (("certificate", self.certificate), ("key", self.private_key),
                           ("client CA", self.client_ca)):
            if path is not None and not Path(path).is_file():
                raise TlsConfigError(f"TLS {name} {Path(path).name} does not exist")
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        try:
            context.load_cert_chain(str(self.certificate), str(self.private_key))
            if self.client_ca is not None:
                context.load_verify_locations(cafile=str(self.client_ca))
        except (ssl.SSLError, ValueError) as error:
            raise TlsConfigError(f"TLS certificate, key or client CA does not load: {error}"
                                 ) from None

    def uvicorn_options(self) -> dict[str, object]:
        """Keyword arguments for ``uvicorn.Config``."""
        self.check()
        options: dict[str, object] = {
            "ssl_certfile": str(self.certificate),
            "ssl_keyfile": str(self.private_key),
            "ssl_version": ssl.PROTOCOL_TLS_SERVER,
        }
        if self.client_ca is not None:
            options["ssl_ca_certs"] = str(self.client_ca)
            options["ssl_cert_reqs"] = ssl.CERT_REQUIRED
        return options
