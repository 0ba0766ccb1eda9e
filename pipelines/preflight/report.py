"""What preflight found: one ``SinkCheck`` per sink, one ``WorkerCheck`` per worker location.

What it does: holds the verified facts (where a sink is, how it encrypts at rest, where each
region's KEK is, where the workers are) and the refusal, if any, as the one line a user
sees; ``PreflightRefused`` is raised with the first refusal before any data moves;
``PreflightReport.to_json`` is what the run summary records for every region (its sink,
dead-letter sink, KEK and verified locations).

What it does not: read anything from a cloud (``gcs``, ``azure``, ``local``, ``workers``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING

from pipelines.errors import PipelineError

if TYPE_CHECKING:
    from .keks import KekCheck

__all__ = ["PreflightRefused", "PreflightReport", "SinkCheck", "WorkerCheck"]


class PreflightRefused(PipelineError):
    """A sink or worker is not where the residency map allows: nothing was started."""


@dataclass(frozen=True)
class SinkCheck:
    """One sink as found: ``location`` is what the store reported, ``regions`` its members."""

    region: str
    role: str
    url: str
    location: str
    location_type: str
    regions: tuple[str, ...]
    encryption: str
    refusal: str | None = None

    def to_json(self) -> dict[str, object]:
        return {**asdict(self), "regions": list(self.regions)}


@dataclass(frozen=True)
class WorkerCheck:
    """Where the workers of this job are, and how that was learned (a flag, the machine)."""

    location: str
    source: str
    refusal: str | None = None

    def to_json(self) -> dict[str, object]:
        return asdict(self)


@dataclass(frozen=True)
class PreflightReport:
    """Every check of one preflight; ``refusals`` lists the failed ones, one line each."""

    sinks: tuple[SinkCheck, ...]
    workers: tuple[WorkerCheck, ...] = ()
    verified: bool = True
    notes: tuple[str, ...] = field(default_factory=tuple)
    keks: tuple[KekCheck, ...] = ()

    @property
    def refusals(self) -> tuple[str, ...]:
        return tuple(c.refusal for c in (*self.sinks, *self.keks, *self.workers) if c.refusal)

    def raise_if_refused(self) -> None:
        refusals = self.refusals
        if refusals:
            more = f" (and {len(refusals) - 1} more refusal(s))" if len(refusals) > 1 else ""
            raise PreflightRefused(f"preflight refused: {refusals[0]}{more}")

    def destinations(self) -> dict[str, dict[str, object]]:
        """Per region, its output sink, where preflight found it and whether that was read
        from the store (``unverified`` for a map derived from ``--output_root``): what each
        output key's ledger entry records."""
        return {check.region: {"sink": check.url, "location": check.location,
                               "verified": self.verified and check.location != "unverified"}
                for check in self.sinks if check.role == "sink"}

    def to_json(self) -> dict[str, object]:
        return {"verified": self.verified, "notes": list(self.notes),
                "sinks": [c.to_json() for c in self.sinks],
                "keks": [c.to_json() for c in self.keks],
                "workers": [c.to_json() for c in self.workers]}
