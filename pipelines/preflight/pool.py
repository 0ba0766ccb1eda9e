"""Preflight of a remote-mode job's pool: where each pool worker is attested to be.

What it does: ``check_pool_workers(endpoints, residency, regions)`` attests every pool
endpoint now, with the verifier the Beam workers use (``transforms.pool_trust``: the broker's
verifier code and the pool policy), and holds each worker's *attested* location (verified
claims: the Confidential Space zone, the MAA claim the rule names, the simulated TEE's
HOST_DATA) against the ``worker_locations`` of every region of the job. An endpoint attested
elsewhere, with no attested location, or that cannot be attested at all is refused, one line
naming the endpoint, where it is and what is allowed. ``pool_worker_checks(options, ...)``
builds the endpoints from the run's options (``--pool_endpoints``/``--pool_discovery``,
``--pool_policy``, the feature spec and output format). ``pool_location_patterns`` is what
the Beam workers hold every later handshake to (``PoolTrust.worker_locations``): the regions a
pool worker may be attested in to serve all of the job's regions, so an endpoint that changes
after preflight is refused too.

What it does not: replace the broker's check (each pool worker's own key requests are
judged by ``worker_locations`` rules) or the per-handshake check of ``PoolTrust``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Protocol

from apache_beam.options.pipeline_options import PipelineOptions

from pipelines.confidential_mode import pool_endpoints
from pipelines.errors import PipelineError
from pipelines.options import SealbeamOptions, feature_spec, output_format, required
from pipelines.residency.locations import member_regions
from pipelines.residency.residency_map import ResidencyMap
from transforms.confidential import compile_for_workers
from transforms.errors import TransformError
from transforms.pool_client import PoolEndpoint, PoolError
from transforms.pool_trust import PoolAttestationError, PoolTrust
from transforms.remote import load_endpoints

from .report import WorkerCheck
from .workers import check_worker_location

__all__ = ["check_pool_workers", "pool_location_patterns", "pool_worker_checks"]

ATTEST_TIMEOUT_S = 30.0


class AttestableEndpoint(Protocol):
    url: str

    def attest(self) -> object: ...


def check_pool_workers(endpoints: Sequence[AttestableEndpoint], residency: ResidencyMap,
                       regions: Iterable[str]) -> tuple[WorkerCheck, ...]:
    """One ``WorkerCheck`` per endpoint (see the module docstring)."""
    regions = tuple(sorted(r for r in regions if r in residency.regions))
    allowed = "; ".join(f"region {name} allows workers in "
                        f"{', '.join(residency.regions[name].worker_locations)}"
                        for name in regions)
    checks = []
    for endpoint in endpoints:
        source = f"pool worker {endpoint.url}"
        try:
            verified = endpoint.attest()
        except (PoolError, PoolAttestationError) as exc:
            checks.append(WorkerCheck("unknown", source, (
                f"{source} could not be attested ({_first_line(exc)}), so where it runs is "
                f"unknown; {allowed}")))
            continue
        location = getattr(verified, "location", None)
        if location is None:
            tee = getattr(verified, "tee", "its")
            checks.append(WorkerCheck("unattested", source, (
                f"{source} has no attested location (its {tee} evidence does not say where it "
                f"runs); {allowed}")))
            continue
        checks.append(check_worker_location(location, f"{source}, attested", residency,
                                            regions))
    return tuple(checks)


def pool_location_patterns(residency: ResidencyMap, regions: Iterable[str]
                           ) -> tuple[str, ...] | None:
    """The locations (member regions, lowercase) allowed for workers by every region of the
    job; None for a map derived from ``--output_root`` (it pins no worker)."""
    if residency.derived:
        return None
    allowed: frozenset[str] | None = None
    for name in sorted(regions):
        region = residency.regions.get(name)
        if region is None:
            continue
        members = frozenset().union(*(member_regions(loc) for loc in region.worker_locations))
        allowed = members if allowed is None else allowed & members
    return tuple(sorted(allowed or ()))


def _first_line(exc: BaseException) -> str:
    return (str(exc).splitlines() or [type(exc).__name__])[0][:200]


def pool_worker_checks(options: PipelineOptions, residency: ResidencyMap,
                       regions: Iterable[str]) -> tuple[WorkerCheck, ...]:
    """The pool endpoints of a remote-mode run, attested and checked (one line on a bad
    setting, as the confidential step would say it)."""
    opts = options.view_as(SealbeamOptions)
    try:
        trust = PoolTrust.from_file(
            required(opts, "pool_policy"), opts.dev_tee_dir,
            confidential_space_audience=opts.pool_confidential_space_audience,
            dev_tdx_root=opts.pool_dev_tdx_root)
        verifier = trust.verifier()
        _, compiled = compile_for_workers(feature_spec(opts))
        urls = load_endpoints(pool_endpoints(opts), opts.pool_discovery)
        endpoints = [PoolEndpoint(url, verifier, spec_fingerprint=compiled.fingerprint,
                                  output_format=output_format(opts),
                                  timeout_s=ATTEST_TIMEOUT_S) for url in urls]
    except (TransformError, ValueError, OSError) as exc:   # a bad policy, spec, discovery file
        raise PipelineError(_first_line(exc)) from None
    return check_pool_workers(endpoints, residency, regions)
