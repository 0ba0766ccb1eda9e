"""Preflight of a Google Cloud Storage sink: where its bucket is and how it encrypts at rest.

What it does: ``read_bucket`` asks the bucket's metadata through ``google-cloud-storage``
(``location``, ``locationType``, the data locations of a configurable dual-region, the
default KMS key); ``check_gcs_sink`` expands a dual- or multi-region to its member regions and
refuses the sink unless every member is allowed for the data's region and, where the map
requires a customer-managed key, unless the bucket's default KMS key exists and is in an
allowed location too (``projects/P/locations/L/keyRings/R/cryptoKeys/K``).

What it does not: write to the bucket (the pipeline does) or check that the key is usable.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from pipelines.residency.locations import location_allowed, member_regions
from pipelines.residency.residency_map import RegionResidency
from pipelines.residency.sinks import SinkUrl

from .report import SinkCheck

__all__ = ["BucketFacts", "check_gcs_sink", "read_bucket"]

READ_TIMEOUT_S = 10.0
READ_DEADLINE_S = 30.0
_KMS_KEY = re.compile(r"^projects/[^/]+/locations/([^/]+)/keyRings/[^/]+/cryptoKeys/[^/]+$")


@dataclass(frozen=True)
class BucketFacts:
    """What the bucket's metadata says."""

    location: str
    location_type: str
    data_locations: tuple[str, ...]
    kms_key: str | None

    @property
    def regions(self) -> frozenset[str]:
        if self.data_locations:
            return frozenset().union(*(member_regions(r) for r in self.data_locations))
        return member_regions(self.location)


def read_bucket(client: Any, bucket: str) -> BucketFacts | str:
    """The bucket's facts, or why they could not be read (one line)."""
    from google.api_core import exceptions
    from google.auth.exceptions import GoogleAuthError
    from google.cloud.storage.retry import DEFAULT_RETRY

    try:
        found = client.get_bucket(bucket, timeout=READ_TIMEOUT_S,
                                  retry=DEFAULT_RETRY.with_deadline(READ_DEADLINE_S))
    except exceptions.NotFound:
        return "the bucket does not exist"
    except exceptions.GoogleAPICallError as exc:
        return f"its metadata could not be read ({exc.code}: {exc.message})"
    except (GoogleAuthError, OSError, exceptions.RetryError) as exc:  # no credentials, no route
        return f"its metadata could not be read ({type(exc).__name__}: {_first_line(exc)})"
    return BucketFacts(
        location=str(found.location or ""),
        location_type=str(found.location_type or ""),
        data_locations=tuple(found.data_locations or ()),
        kms_key=found.default_kms_key_name or None,
    )


def _first_line(exc: BaseException) -> str:
    return (str(exc).splitlines() or [""])[0][:200]


def check_gcs_sink(sink: SinkUrl, role: str, region: RegionResidency, client: Any
                   ) -> SinkCheck:
    """The check of one ``gs://`` sink against ``region``'s pinning."""
    label = f"{role} {sink.url} of region {region.region}"
    allowed = ", ".join(region.locations)
    facts = read_bucket(client, sink.store)
    if isinstance(facts, str):
        return SinkCheck(region.region, role, sink.url, "unknown", "", (), "unknown",
                         f"{label}: gs://{sink.store}: {facts}")
    members = tuple(sorted(facts.regions))
    encryption = f"kms:{facts.kms_key}" if facts.kms_key else "google-managed"
    where = f"{facts.location} ({facts.location_type or 'unknown type'}: {', '.join(members)})"

    def check(refusal: str | None) -> SinkCheck:
        return SinkCheck(region.region, role, sink.url, facts.location, facts.location_type,
                         members, encryption, refusal)

    if not facts.location or not location_allowed(members, region.locations):
        return check(f"{label} is in {where}; allowed: {allowed}")
    if region.require_cmk:
        if facts.kms_key is None:
            return check(f"{label} in {facts.location} has no default customer-managed KMS "
                         f"key; region {region.region} requires one")
        match = _KMS_KEY.match(facts.kms_key)
        key_location = match.group(1) if match else ""
        if not key_location or not location_allowed(key_location, region.locations):
            return check(f"{label}: its default KMS key {facts.kms_key} is in "
                         f"{key_location or 'an unknown location'}; allowed: {allowed}")
    return check(None)
