"""The broker's limits against cheap denial of service: one settings object, ``ServiceLimits``.

Rate limits per client address on the unauthenticated routes, the HTTP server's bounds
(concurrency, header size, header/body/keep-alive timeouts) and how denials of
unauthenticated callers are written to the audit ledger (a few in full per source and
interval, the rest counted in one summary row). ``broker.yaml`` may carry a ``limits``
mapping with any of these fields; absent fields keep their defaults. This module only
holds and validates numbers; keybroker/service applies them.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from keybroker.settings_fields import checked_section

__all__ = ["LimitsError", "ServiceLimits"]


class LimitsError(ValueError):
    """A limit is out of its range; the message names it."""


# name -> (minimum, maximum, integer?)
_RANGES: dict[str, tuple[float, float, bool]] = {
    "rate_per_second": (0.01, 1_000_000, False),
    "rate_burst": (1, 1_000_000, True),
    "rate_max_clients": (1, 10_000_000, True),
    "max_concurrency": (1, 100_000, True),
    "max_header_bytes": (1024, 1 << 20, True),
    "header_timeout_seconds": (0.1, 3600, False),
    "body_timeout_seconds": (0.1, 3600, False),
    "keep_alive_seconds": (1, 3600, True),
    "denial_interval_seconds": (0.01, 86400, False),
    "denials_in_full": (0, 1_000_000, True),
    "denial_max_sources": (1, 1_000_000, True),
    "anonymous_denial_bytes": (512, 64 * 1024, True),
}


@dataclass(frozen=True)
class ServiceLimits:
    """Bounds that keep one caller (or many without credentials) from starving the rest.

    rate_*: token bucket per client address for /v1/challenge, /v1/attest and unknown
    paths (``rate_burst`` requests at once, refilled at ``rate_per_second``; at most
    ``rate_max_clients`` addresses are tracked, the least recently seen forgotten first).
    max_concurrency: connections plus in-flight requests before uvicorn answers 503.
    max_header_bytes: the request line and headers (h11's max incomplete event size).
    header_timeout_seconds: from connection (or the previous response) to complete headers.
    body_timeout_seconds: to receive the whole body once the headers are in.
    keep_alive_seconds: an idle keep-alive connection is closed after this.
    denial_interval_seconds, denials_in_full, denial_max_sources: per interval and source
    address, the first ``denials_in_full`` unauthenticated denials get a ledger row each,
    the rest one counted summary row (sources beyond ``denial_max_sources`` share one).
    anonymous_denial_bytes: the details cap of an unauthenticated denial's row.
    """

    rate_per_second: float = 5.0
    rate_burst: int = 60
    rate_max_clients: int = 100_000
    max_concurrency: int = 512
    max_header_bytes: int = 16 * 1024
    header_timeout_seconds: float = 10.0
    body_timeout_seconds: float = 30.0
    keep_alive_seconds: int = 5
    denial_interval_seconds: float = 60.0
    denials_in_full: int = 20
    denial_max_sources: int = 10_000
    anonymous_denial_bytes: int = 4096

    def __post_init__(self) -> None:
        for name, (minimum, maximum, integer) in _RANGES.items():
            value = getattr(self, name)
            kind_ok = isinstance(value, int) if integer else isinstance(value, int | float)
            if not kind_ok or isinstance(value, bool) or not minimum <= value <= maximum:
                kind = "an integer" if integer else "a number"
                raise LimitsError(f"limits.{name}: expected {kind} in [{minimum}, {maximum}]")

    @classmethod
    def from_mapping(cls, document: object) -> ServiceLimits:
        """From broker.yaml's ``limits`` (None: all defaults); unknown fields are refused."""
        if document is None:
            return cls()
        document = checked_section(document, "limits", _RANGES, LimitsError)
        return cls(**{str(key): value for key, value in document.items()})

    def to_mapping(self) -> dict[str, object]:
        return dataclasses.asdict(self)
