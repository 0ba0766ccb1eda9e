"""A location claim for the simulated SEV-SNP TEE, carried in the report's HOST_DATA.

What it does: ``location_host_data("europe-west4")`` is the 32-byte HOST_DATA a simulated
worker puts in its report (``SBLOC:`` + the location, zero-padded), so the location is signed
by the dev chain with the rest of the report; ``host_data_location`` reads it back (None
when HOST_DATA holds no such claim).

What it does not: make a real report's HOST_DATA a location: on hardware the host chooses
HOST_DATA, so the broker's policy reads this claim from simulated evidence only
(``keybroker.policy.location``).
"""

from __future__ import annotations

import re

__all__ = ["HOST_DATA_SIZE", "host_data_location", "location_host_data"]

HOST_DATA_SIZE = 32
_PREFIX = b"SBLOC:"
_LOCATION = re.compile(r"^[a-z0-9][a-z0-9-]{0,25}$")


def location_host_data(location: str) -> bytes:
    """HOST_DATA carrying ``location`` (lowercase letters, digits, '-'; at most 26)."""
    lowered = location.strip().lower()
    if not _LOCATION.match(lowered):
        raise ValueError(f"a simulated location is 1-26 lowercase letters, digits or '-', not "
                         f"{location!r}")
    return (_PREFIX + lowered.encode("ascii")).ljust(HOST_DATA_SIZE, b"\0")


def host_data_location(host_data: bytes) -> str | None:
    """The location a ``location_host_data`` HOST_DATA carries, else None."""
    if len(host_data) != HOST_DATA_SIZE or not host_data.startswith(_PREFIX):
        return None
    text = host_data[len(_PREFIX):].rstrip(b"\0")
    try:
        location = text.decode("ascii")
    except UnicodeDecodeError:
        return None
    return location if _LOCATION.match(location) else None
