"""``SealbeamOptions``: the pipeline options of sealbeam's batch (and later streaming) jobs.

What it does: declares the flags (``--input``, ``--output_root``, ``--broker_url``, ``--tee``,
``--dev_tee_dir``, ``--regions``, ``--feature_spec``, ``--output_format``, batching and
key-session limits) and turns them into the transforms' settings objects, validating as it
goes: a bad feature spec fails here, with every problem listed, before anything runs.

What it does not: it does not pick a runner (``batch.run_batch`` does) or start a broker.
"""

from __future__ import annotations

from apache_beam.options.pipeline_options import PipelineOptions

from enclave_workers.batch_processor import OUTPUT_FORMATS, SEALED_ARROW, default_feature_spec
from enclave_workers.features import FeatureError, FeatureSpec, compile_spec
from transforms import SessionLimits, TeeSettings, TransformError
from transforms.batching import DEFAULT_MAX_BATCH_BYTES, DEFAULT_SHARDS
from transforms.broker_identity import BrokerTrust
from transforms.confidential import BROKER_RETRIES_DEFAULT
from transforms.dedupe import DEFAULT_HORIZON_S
from transforms.read import DEFAULT_RANGE_BYTES
from transforms.tee import SIMULATED_SEV_SNP, SUPPORTED_TEES
from transforms.write import is_region_name

from .errors import PipelineError

DEFAULT_REGIONS = "eu,us"
DEFAULT_MIN_BATCH_SIZE = 256


class SealbeamOptions(PipelineOptions):
    """Flags of sealbeam pipelines (every flag also has a ``sealbeam run batch`` form)."""

    @classmethod
    def _add_argparse_args(cls, parser) -> None:
        parser.add_argument("--input", help="file pattern of sealed record files "
                            "(one base64 envelope per line)")
        parser.add_argument("--output_root", help="root of the region-pinned outputs; "
                            "dead letters go to <output_root>/dead-letter/")
        parser.add_argument("--residency_map", default=None,
                            help="residency map (YAML): each region's sink, dead-letter sink, "
                                 "allowed locations, KEK and worker locations; checked by "
                                 "preflight before any data moves (instead of --output_root)")
        parser.add_argument("--worker_location", default="local",
                            help="where this machine's workers are, checked against the map's "
                                 "worker_locations (Dataflow: --region/--worker_region)")
        parser.add_argument("--broker_url", help="base URL of the key broker")
        parser.add_argument("--broker_identity", default=None,
                            help="the broker's public identity key (PEM) that workers pin "
                                 "and verify every grant with (default for the simulated TEE: "
                                 "broker-identity.pub.pem beside --dev_tee_dir)")
        parser.add_argument("--broker_ca_bundle", default=None,
                            help="CA certificates (PEM) the broker's https:// certificate must "
                                 "chain to (default: the system's)")
        parser.add_argument("--broker_pinned_cert", default=None,
                            help="the broker's own TLS certificate (PEM), trusted alone")
        parser.add_argument("--tee", default=SUPPORTED_TEES[0], choices=SUPPORTED_TEES,
                            help="the TEE the workers attest as")
        parser.add_argument("--dev_tee_dir", default=None,
                            help="dev SEV-SNP chain for the simulated TEE (STATE/dev-tee)")
        parser.add_argument("--regions", default=DEFAULT_REGIONS,
                            help="comma-separated regions the sinks may write to")
        parser.add_argument("--feature_spec", default=None,
                            help="feature spec (YAML) run inside the TEE; default: the shipped "
                                 "partner-records spec (enclave_workers/default_spec.yaml)")
        parser.add_argument("--output_format", default=SEALED_ARROW, choices=OUTPUT_FORMATS,
                            help="sealed-arrow: sealed batch envelopes (.sbatch); parquet-pme: "
                                 "Parquet with modular encryption (.parquet), master keys from "
                                 "the broker")
        parser.add_argument("--min_batch_size", type=int, default=DEFAULT_MIN_BATCH_SIZE,
                            help="not used by the batching by data key (each group is cut into "
                                 "near-equal batches of up to --max_batch_size) nor by the "
                                 "per-bundle batching of streaming runs; kept so that existing "
                                 "command lines still parse")
        parser.add_argument("--max_batch_size", type=int, default=2000,
                            help="largest batch handed to the confidential step")
        parser.add_argument("--max_batch_bytes", type=int, default=DEFAULT_MAX_BATCH_BYTES,
                            help="bytes of sealed input in one confidential batch (an envelope "
                                 "larger than this is a batch of its own)")
        parser.add_argument("--key_shards", type=int, default=DEFAULT_SHARDS,
                            help="groups (and so workers) one region and producer spread over; "
                                 "every data key's envelopes share one group (--key_spread)")
        parser.add_argument("--key_spread", type=int, default=1,
                            help="groups one data key's envelopes may spread over (raise it "
                                 "when one key seals a large part of the input)")
        parser.add_argument("--range_bytes", type=int, default=DEFAULT_RANGE_BYTES,
                            help="input files are read in byte ranges of this size, spread "
                                 "over the workers")
        parser.add_argument("--dedupe_horizon_s", type=float, default=DEFAULT_HORIZON_S,
                            help="exact copies of an envelope within this many seconds (event "
                                 "time) are dropped and counted as duplicates")
        parser.add_argument("--broker_retries", type=int, default=BROKER_RETRIES_DEFAULT,
                            help="retries, with backoff, of a batch while the broker is "
                                 "unavailable, before the bundle fails and is retried")
        parser.add_argument("--key_ttl_s", type=float, default=300.0,
                            help="seconds a released key stays cached in a worker")
        parser.add_argument("--max_uses_per_key", type=int, default=100_000,
                            help="uses of a cached data key before it is released again")
        parser.add_argument("--output_key_max_envelopes", type=int, default=1024,
                            help="output envelopes sealed under one output key (parquet-pme "
                                 "uses a fresh key per master key)")
        # Remote mode (pipelines/confidential_mode.py): the confidential step on an attested pool.
        parser.add_argument("--pool_endpoints", default=None,
                            help="comma-separated pool worker URLs (sealbeam worker serve): run "
                                 "the confidential step there, not in the Beam worker")
        parser.add_argument("--pool_discovery", default=None,
                            help="file listing pool worker URLs (JSON {\"endpoints\": [...]} "
                                 "or one per line; any Beam filesystem path)")
        parser.add_argument("--pool_policy", default=None,
                            help="release policy (YAML) a pool worker's evidence must satisfy "
                                 "before it is sent data (the broker's policy.yaml)")
        parser.add_argument("--pool_confidential_space_audience", default=None,
                            help="token audience a Confidential Space pool worker must show")
        parser.add_argument("--pool_dev_tdx_root", default=None,
                            help="dev TDX root (root.pem) trusted for simulated TDX pools when "
                                 "the pool policy allows simulation")
        parser.add_argument("--pool_timeout_s", type=float, default=120.0,
                            help="seconds to wait for one pool request")


def required(options: SealbeamOptions, name: str) -> str:
    value = getattr(options, name)
    if not value:
        raise PipelineError(f"--{name} is required")
    return str(value)


def broker_trust(options: SealbeamOptions) -> BrokerTrust:
    """The PEM texts of ``--broker_identity``, ``--broker_ca_bundle``, ``--broker_pinned_cert``
    (each None when not given; the identity then defaults beside ``--dev_tee_dir``)."""
    return BrokerTrust(
        identity_pem=_pem_option(options, "broker_identity"),
        ca_pem=_pem_option(options, "broker_ca_bundle"),
        pinned_certificate_pem=_pem_option(options, "broker_pinned_cert"),
    )


def _pem_option(options: SealbeamOptions, name: str) -> str | None:
    path = getattr(options, name, None)
    if not path:
        return None
    try:
        with open(path, "rb") as handle:
            return handle.read(1 << 20).decode("ascii")
    except (OSError, UnicodeDecodeError) as exc:
        raise PipelineError(f"--{name}: cannot read {path}: {exc}") from None


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
        location = getattr(options, "worker_location", None)
        return TeeSettings(tee=options.tee, dev_tee_dir=options.dev_tee_dir,
                           location=location if options.tee == SIMULATED_SEV_SNP else None)
    except TransformError as exc:
        raise PipelineError(str(exc)) from None


def load_feature_spec(path: str | None) -> FeatureSpec:
    """The spec at ``path``, or the shipped default, checked by compiling it; every problem
    (with its line) in one message."""
    try:
        spec = default_feature_spec() if path is None else FeatureSpec.load(path)
        compile_spec(spec)
        return spec
    except FeatureError as exc:
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
        raise PipelineError(" ".join(lines)) from None


def feature_spec(options: SealbeamOptions) -> FeatureSpec:
    return load_feature_spec(options.feature_spec)


def output_format(options: SealbeamOptions) -> str:
    if options.output_format not in OUTPUT_FORMATS:
        raise PipelineError(f"--output_format must be one of {', '.join(OUTPUT_FORMATS)}")
    return str(options.output_format)


def session_limits(options: SealbeamOptions) -> SessionLimits:
    try:
        return SessionLimits(key_ttl_s=options.key_ttl_s,
                             max_uses_per_key=options.max_uses_per_key,
                             output_key_max_envelopes=options.output_key_max_envelopes)
    except TransformError as exc:
        raise PipelineError(str(exc)) from None
