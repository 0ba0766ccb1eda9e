"""Fetch AMD endorsements from the AMD Key Distribution Service, with an on-disk cache.

What it does: builds the KDS URLs (``/vcek/v1/{product}/cert_chain``,
``/vcek/v1/{product}/{hwid}?blSPL=..&teeSPL=..&snpSPL=..&ucodeSPL=..`` plus ``fmcSPL`` on
Turin, ``/vlek/v1/{product}/cert_chain``), fetches through an injected getter with a
timeout, caches every answer under a directory, and raises one clear
`KdsUnavailableError` when offline. What it does not: trust what it fetched; every
certificate still goes through the chain checks against the pinned ARKs.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from keybroker.attestation.errors import EndorsementUnavailableError, EvidenceFormatError
from keybroker.attestation.snp.certificates import (
    MAX_CERTIFICATE_SIZE,
    MAX_PEM_BUNDLE_SIZE,
    load_der_certificate,
    load_pem_certificates,
)
from keybroker.attestation.snp.product import PRODUCTS, hwid_size
from keybroker.attestation.snp.tcb import TCB_COMPONENTS

__all__ = ["AMD_KDS_URL", "AmdKdsClient", "Getter", "KdsUnavailableError", "httpx_getter"]

AMD_KDS_URL = "https://kdsintf.amd.com"
Getter = Callable[[str, float], bytes]
"""(url, timeout_seconds) -> response body; raises on any failure (network, non-200)."""

_URL_SPL_NAMES = {"fmc": "fmcSPL", "bootloader": "blSPL", "tee": "teeSPL", "snp": "snpSPL",
                  "microcode": "ucodeSPL"}


class KdsUnavailableError(EndorsementUnavailableError):
    """AMD KDS could not be reached or answered with an error, and nothing was cached."""


def httpx_getter(url: str, timeout: float) -> bytes:
    """Production getter: one HTTPS GET with a timeout, body bounded in size."""
    import httpx

    try:
        with httpx.Client(timeout=timeout, follow_redirects=False) as client:
            response = client.get(url)
    except httpx.HTTPError as exc:
        raise KdsUnavailableError(f"AMD KDS is unreachable ({type(exc).__name__}) for {url}") \
            from None
    if response.status_code != 200:
        raise KdsUnavailableError(f"AMD KDS answered HTTP {response.status_code} for {url}")
    if len(response.content) > MAX_PEM_BUNDLE_SIZE:
        raise KdsUnavailableError(f"AMD KDS answer for {url} is too large")
    return response.content


class AmdKdsClient:
    """AMD KDS endorsements by product, hwID and TCB; cached so a restart works offline."""

    def __init__(self, getter: Getter = httpx_getter, *, cache_dir: Path | str | None = None,
                 timeout: float = 10.0, base_url: str = AMD_KDS_URL) -> None:
        if timeout <= 0:
            raise ValueError("KDS timeout must be positive")
        self._getter = getter
        self._cache_dir = Path(cache_dir) if cache_dir is not None else None
        self._timeout = timeout
        self._base_url = base_url.rstrip("/")

    # --- URLs -----------------------------------------------------------------------
    def cert_chain_url(self, product: str, kind: str = "vcek") -> str:
        _check_product(product)
        if kind not in ("vcek", "vlek"):
            raise ValueError(f"unknown endorsement key kind {kind!r}")
        return f"{self._base_url}/{kind}/v1/{product}/cert_chain"

    def vcek_url(self, product: str, hwid: bytes, tcb: Mapping[str, int]) -> str:
        _check_product(product)
        size = hwid_size(product)
        if len(hwid) < size:
            raise ValueError(f"{product} hwID needs {size} bytes")
        missing = [name for name in TCB_COMPONENTS[product] if name not in tcb]
        if missing:
            raise ValueError(f"TCB components {missing} missing for {product}")
        query = "&".join(f"{_URL_SPL_NAMES[name]}={int(tcb[name])}"
                         for name in TCB_COMPONENTS[product])
        return f"{self._base_url}/vcek/v1/{product}/{hwid[:size].hex()}?{query}"

    # --- fetching -------------------------------------------------------------------
    def cert_chain(self, product: str, kind: str = "vcek") -> tuple[bytes, bytes]:
        """(ASK or ASVK DER, ARK DER) from ``cert_chain`` (PEM: intermediate, then ARK)."""
        body = self._fetch(self.cert_chain_url(product, kind))
        certificates = load_pem_certificates(body, f"AMD KDS {product} {kind} cert_chain")
        if len(certificates) != 2:
            raise EvidenceFormatError(
                f"AMD KDS {product} cert_chain has {len(certificates)} certificates, expected 2")
        return tuple(_der(certificate) for certificate in certificates)  # type: ignore[return-value]

    def vcek(self, product: str, hwid: bytes, tcb: Mapping[str, int]) -> bytes:
        """The VCEK DER certificate for this chip at this TCB."""
        body = self._fetch(self.vcek_url(product, hwid, tcb))
        if len(body) > MAX_CERTIFICATE_SIZE:
            raise EvidenceFormatError("AMD KDS VCEK answer is over the certificate size limit")
        load_der_certificate(body, "AMD KDS vcek")
        return body

    def _cache_path(self, url: str) -> Path | None:
        if self._cache_dir is None:
            return None
        return self._cache_dir / (hashlib.sha256(url.encode()).hexdigest() + ".bin")

    def _fetch(self, url: str) -> bytes:
        cached = self._cache_path(url)
        if cached is not None and cached.is_file():
            if cached.stat().st_size > MAX_PEM_BUNDLE_SIZE:
                raise EvidenceFormatError(f"KDS cache entry {cached} is too large")
            return cached.read_bytes()
        try:
            body = self._getter(url, self._timeout)
        except KdsUnavailableError:
            raise
        except Exception as exc:  # the getter is injected: any failure means "offline"
            raise KdsUnavailableError(
                f"AMD KDS fetch failed ({type(exc).__name__}: {exc}) for {url}; "
                "provide the endorsements or a KDS cache") from None
        if not isinstance(body, bytes) or not body:
            raise KdsUnavailableError(f"AMD KDS returned an empty answer for {url}")
        if cached is not None:
            _write_atomically(cached, body)
        return body


def _check_product(product: str) -> None:
    if product not in PRODUCTS:
        raise ValueError(f"unknown SEV-SNP product {product!r}; expected one of {PRODUCTS}")


def _der(certificate: x509.Certificate) -> bytes:
    return certificate.public_bytes(serialization.Encoding.DER)


def _write_atomically(path: Path, body: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=".kds-")
    try:
        with os.fdopen(handle, "wb") as stream:
            stream.write(body)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
