"""Featurization inside the enclave: a declarative feature spec compiled to pyarrow kernels.

What it does: loads a YAML spec (validated against the shipped ``schema.json``), compiles it
into a plan of vectorized ``pyarrow.compute`` kernels with an output schema and a fingerprint,
and applies it to plaintext Arrow tables, reporting rows that break the declared input schema
and rows suppressed for k-anonymity::

    spec = FeatureSpec.load("features.yaml")
    compiled = compile_spec(spec)
    result = compiled.apply(table, keys={"tenant": key_bytes})
    result.table, result.violations, result.suppressed_rows, compiled.fingerprint

What it does not: no decryption, no key fetching (the caller passes named keys, e.g. from
``KeySession.named_key``), no logging, and no Beam: this runs the same in a DoFn, a worker
pool, or a test.
"""

from __future__ import annotations

from .compiler import FINGERPRINT_METADATA_KEY, CompiledSpec, compile_spec
from .conform import RowViolation
from .errors import (
    FeatureError,
    FeatureInputError,
    FeatureKeyError,
    FeatureSpecError,
    SpecProblem,
)
from .fingerprint import SEMANTICS_VERSION, canonical_bytes, spec_fingerprint
from .runner import MIN_KEY_BYTES, FeatureResult
from .spec import FeatureSpec

__all__ = [
    "FINGERPRINT_METADATA_KEY",
    "MIN_KEY_BYTES",
    "SEMANTICS_VERSION",
    "CompiledSpec",
    "FeatureError",
    "FeatureInputError",
    "FeatureKeyError",
    "FeatureResult",
    "FeatureSpec",
    "FeatureSpecError",
    "RowViolation",
    "SpecProblem",
    "canonical_bytes",
    "compile_spec",
    "spec_fingerprint",
]
