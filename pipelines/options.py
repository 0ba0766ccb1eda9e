"""``SealbeamOptions``: the pipeline options of sealbeam's batch (and later streaming) jobs.

What it does: declares the flags (``--input``, ``--output_root``, ``--broker_url``, ``--tee``,
``--dev_tee_dir``, ``--regions``, ``--amount_mean``/``--amount_std``, batching and key-session
limits) and turns them into the transforms' settings objects, validating as it goes.

What it does not: it does not pick a runner (``batch.run_batch`` does) or start a broker.
"""

from __future__ import annotations

from apache_beam.options.pipeline_options import PipelineOptions

from enclave_workers.basic_features import FeatureError, FeatureSettings
from transforms import SessionLimits, TeeSettings, TransformError
from transforms.tee import SUPPORTED_TEES
from transforms.write import is_region_name

from .errors import PipelineError

DEFAULT_REGIONS = "eu,us"


class SealbeamOptions(PipelineOptions):
    """Flags of sealbeam pipelines (every flag also has a ``sealbeam run batch`` form)."""

    @classmethod
    def _add_argparse_args(cls, parser) -> None:
        parser.add_argument("--input", help="file pattern of sealed record files "
                            "(one base64 envelope per line)")
        parser.add_argument("--output_root", help="root of the region-pinned outputs; "
                            "dead letters go to <output_root>/dead-letter/")
        parser.add_argument("--broker_url", help="base URL of the key broker")
        parser.add_argument("--tee", default=SUPPORTED_TEES[0], choices=SUPPORTED_TEES,
                            help="the TEE the workers attest as")
        parser.add_argument("--dev_tee_dir", default=None,
                            help="dev SEV-SNP chain for the simulated TEE (STATE/dev-tee)")
        parser.add_argument("--regions", default=DEFAULT_REGIONS,
                            help="comma-separated regions the sinks may write to")
        parser.add_argument("--amount_mean", type=float, default=0.0,
                            help="mean used to standardize 'amount'")
        parser.add_argument("--amount_std", type=float, default=1.0,
                            help="standard deviation used to standardize 'amount'")
        parser.add_argument("--min_batch_size", type=int, default=1,
                            help="smallest batch handed to the confidential step")
        parser.add_argument("--max_batch_size", type=int, default=2000,
                            help="largest batch handed to the confidential step")
        parser.add_argument("--key_ttl_s", type=float, default=300.0,
                            help="seconds a released key stays cached in a worker")
        parser.add_argument("--max_uses_per_key", type=int, default=100_000,
                            help="uses of a cached data key before it is released again")
        parser.add_argument("--output_key_max_envelopes", type=int, default=1024,
                            help="output envelopes sealed under one output key")


def required(options: SealbeamOptions, name: str) -> str:
    value = getattr(options, name)
    if not value:
        raise PipelineError(f"--{name} is required")
    return str(value)


def allowed_regions(options: SealbeamOptions) -> frozenset[str]:
    regions = frozenset(r.strip() for r in str(options.regions or "").split(",") if r.strip())
    if not regions:
        raise PipelineError("--regions names no region")
    bad = sorted(r for r in regions if not is_region_name(r))
    if bad:
        raise PipelineError(f"--regions has a bad region name: {bad[0]!r}")
    return regions


def tee_settings(options: SealbeamOptions) -> TeeSettings:
    try:
        return TeeSettings(tee=options.tee, dev_tee_dir=options.dev_tee_dir)
    except TransformError as exc:
        raise PipelineError(str(exc)) from None


def feature_settings(options: SealbeamOptions) -> FeatureSettings:
    try:
        return FeatureSettings(amount_mean=options.amount_mean, amount_std=options.amount_std)
    except FeatureError as exc:
        raise PipelineError(str(exc)) from None


def session_limits(options: SealbeamOptions) -> SessionLimits:
    try:
        return SessionLimits(key_ttl_s=options.key_ttl_s,
                             max_uses_per_key=options.max_uses_per_key,
                             output_key_max_envelopes=options.output_key_max_envelopes)
    except TransformError as exc:
        raise PipelineError(str(exc)) from None
