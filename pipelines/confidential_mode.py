"""Which confidential step a pipeline runs: in the Beam worker, or on an attested pool.

``confidential_step`` reads the options: with ``--pool_endpoints`` or ``--pool_discovery``
it builds ``transforms.remote.ConfidentialProcessRemote`` (the Beam worker holds no key and
needs no broker; ``--pool_policy`` names the policy a pool worker's evidence must satisfy,
``--dev_tee_dir`` the dev chain trusted for simulated pools when that policy allows it);
otherwise ``ConfidentialProcess`` as before (``--broker_url``, ``--tee``, the pinned
``--broker_identity``). Both have the tags ``SEALED`` and ``DEAD_LETTER`` and the same
output types.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace

import apache_beam as beam

from transforms import ConfidentialProcess, TransformError
from transforms.pool_trust import PoolTrust
from transforms.remote import ConfidentialProcessRemote

from .errors import PipelineError
from .options import (
    SealbeamOptions,
    broker_trust,
    feature_spec,
    output_format,
    required,
    session_limits,
    tee_settings,
)

__all__ = ["confidential_step", "pool_endpoints", "remote_mode"]


def pool_endpoints(opts: SealbeamOptions) -> list[str]:
    return [u.strip() for u in str(opts.pool_endpoints or "").split(",") if u.strip()]


def remote_mode(opts: SealbeamOptions) -> bool:
    return bool(pool_endpoints(opts) or opts.pool_discovery)


def confidential_step(opts: SealbeamOptions, *, batcher: beam.PTransform | None = None,
                      drop_duplicates: bool = False,
                      destinations: Mapping[str, Mapping[str, object]] | None = None,
                      pool_locations: tuple[str, ...] | None = None) -> beam.PTransform:
    """The confidential PTransform the options ask for (checked here, before anything runs).

    Both modes take ``SealedEnvelope`` elements, batch them alike (``BatchByDataKey`` from
    ``--max_batch_size``, ``--max_batch_bytes``, ``--key_shards``, ``--key_spread``, or
    ``batcher``) and name each output by its batch (``output_name_id``), so a retried or
    re-run batch rewrites the same names in either mode. ``drop_duplicates`` drops exact
    copies inside the data-key groups (a ``DUPLICATES`` output) in either mode.
    ``destinations`` (preflight's per-region sink facts) go into the broker's ledger with each
    output key: in-process from the Beam worker, in remote mode from the pool worker, to which
    each batch carries its region's. ``pool_locations`` (from the residency map) are where a
    pool worker must be attested to be sent anything, checked on every handshake
    (``PoolTrust.worker_locations``); None checks no location.
    """
    batching = {"max_batch_size": opts.max_batch_size, "max_batch_bytes": opts.max_batch_bytes,
                "key_shards": opts.key_shards, "key_spread": opts.key_spread,
                "batcher": batcher, "drop_duplicates": drop_duplicates}
    try:
        if not remote_mode(opts):
            return ConfidentialProcess(
                required(opts, "broker_url"), tee_settings(opts), feature_spec(opts),
                output_format=output_format(opts), limits=session_limits(opts),
                broker_retries=opts.broker_retries, broker_trust=broker_trust(opts),
                destinations=destinations, **batching)
        trust = PoolTrust.from_file(
            required(opts, "pool_policy"), opts.dev_tee_dir,
            confidential_space_audience=opts.pool_confidential_space_audience,
            dev_tdx_root=opts.pool_dev_tdx_root)
        if pool_locations is not None:
            trust = replace(trust, worker_locations=pool_locations)
        return ConfidentialProcessRemote(
            trust=trust, spec=feature_spec(opts), endpoints=pool_endpoints(opts),
            discovery=opts.pool_discovery, output_format=output_format(opts),
            timeout_s=opts.pool_timeout_s, destinations=destinations, **batching)
    except TransformError as exc:   # a bad setting: one line, before anything runs
        raise PipelineError(str(exc)) from None
