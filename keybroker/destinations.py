"""An output destination as the ledger records it: a region's sink and where it was verified.

What it does: ``destination_record`` checks the three facts a ``generate`` request may carry
about where the outputs sealed under the new key go (the sink URL, the location preflight
read from the store, whether it was read or only assumed) and returns them as the ledger's
``destination`` detail. The client checks before sending and the broker again on receipt, so
a malformed destination is refused on both sides with the same message.

What it does not: verify the location (preflight does that, before any data moves); the
broker records what the pipeline states, beside the attested session that stated it.
"""

from __future__ import annotations

import re

__all__ = ["DESTINATION_SCHEMES", "MAX_LOCATION_CHARS", "MAX_SINK_CHARS", "DestinationError",
           "destination_record"]

DESTINATION_SCHEMES = ("file://", "gs://", "azfs://", "abfs://")
MAX_SINK_CHARS = 1024
MAX_LOCATION_CHARS = 64
_LOCATION = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:/-]{0,63}")


class DestinationError(ValueError):
    """A destination field is missing, too long or malformed; the message names the field."""


def destination_record(sink: object, location: object, verified: object) -> dict[str, object]:
    """``{"sink", "location", "verified"}`` after checking each; ``DestinationError`` if not."""
    if not isinstance(sink, str) or not 1 <= len(sink) <= MAX_SINK_CHARS:
        raise DestinationError(f"destination.sink: expected a URL of 1-{MAX_SINK_CHARS} "
                               "characters")
    if not sink.startswith(DESTINATION_SCHEMES) or any(c < " " or c == "\x7f" for c in sink):
        raise DestinationError(f"destination.sink: expected a {', '.join(DESTINATION_SCHEMES)} "
                               "URL without control characters")
    if not isinstance(location, str) or not _LOCATION.fullmatch(location):
        raise DestinationError(f"destination.location: expected 1-{MAX_LOCATION_CHARS} "
                               "characters of letters, digits and ._:/- starting with a letter "
                               "or digit")
    if not isinstance(verified, bool):
        raise DestinationError("destination.verified: expected true or false")
    return {"sink": sink, "location": location, "verified": verified}
