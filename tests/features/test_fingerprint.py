"""The fingerprint is stable across layouts and changes with any change to the spec."""

from __future__ import annotations

import copy
import hashlib

import pytest
import yaml

from enclave_workers.features import (
    FINGERPRINT_METADATA_KEY,
    FeatureSpec,
    FeatureSpecError,
    canonical_bytes,
    compile_spec,
)

from .test_spec_validation import GOOD


def _fingerprint(document) -> str:
    return compile_spec(FeatureSpec.from_dict(document)).fingerprint


def test_same_spec_same_fingerprint_whatever_the_layout():
    a = compile_spec(FeatureSpec.from_yaml(GOOD))
    document = yaml.safe_load(GOOD)
    reordered = dict(reversed(list(document.items())))
    reordered["features"] = [dict(reversed(list(f.items()))) for f in document["features"]]
    block_style = yaml.safe_dump(reordered, default_flow_style=False)
    b = compile_spec(FeatureSpec.from_yaml("# a comment\n" + block_style))
    assert a.fingerprint == b.fingerprint == _fingerprint(document)
    assert len(a.fingerprint) == 64 and a.fingerprint == a.fingerprint.lower()
    assert a.fingerprint == hashlib.sha256(canonical_bytes(document)).hexdigest()
    assert a.fingerprint_bytes == bytes.fromhex(a.fingerprint)
    assert a.output_schema.metadata[FINGERPRINT_METADATA_KEY] == a.fingerprint.encode()


def _mutations(document):
    """Every leaf of the document changed once, plus structural changes."""
    def walk(node, path):
        if isinstance(node, dict):
            for key, value in node.items():
                yield from walk(value, (*path, key))
        elif isinstance(node, list):
            for index, value in enumerate(node):
                yield from walk(value, (*path, index))
        else:
            yield path, node

    for path, value in walk(document, ()):
        if isinstance(value, bool):
            new = not value
        elif isinstance(value, int | float):
            new = value + 1 if isinstance(value, int) else value * 1.5
        else:
            continue
        changed = copy.deepcopy(document)
        target = changed
        for part in path[:-1]:
            target = target[part]
        target[path[-1]] = new
        yield changed
    with_float = copy.deepcopy(document)
    with_float["features"][2]["boundaries"][0] = 10.0       # 10 -> 10.0 is a change too
    yield with_float
    dropped = copy.deepcopy(document)
    dropped["features"].pop()
    yield dropped
    explicit_default = copy.deepcopy(document)
    explicit_default["input"]["columns"][2]["nullable"] = True
    yield explicit_default
    renamed = copy.deepcopy(document)
    renamed["features"][0]["key"] = "tenant2"
    yield renamed


def _fingerprint_or_none(document) -> str | None:
    try:
        return _fingerprint(document)
    except FeatureSpecError:
        return None


def test_any_change_changes_the_fingerprint():
    document = yaml.safe_load(GOOD)
    base = _fingerprint(document)
    seen = {base}
    count = 0
    for changed in _mutations(document):
        fingerprint = _fingerprint_or_none(changed)
        if fingerprint is None:   # a mutation that makes the spec invalid has no fingerprint
            continue
        assert fingerprint not in seen
        seen.add(fingerprint)
        count += 1
    assert count >= 10


def test_keys_never_enter_the_fingerprint():
    compiled = compile_spec(FeatureSpec.from_yaml(GOOD))
    with pytest.raises(TypeError):
        canonical_bytes({"key": b"\x00" * 32})
    assert b"tenant" in canonical_bytes(compiled.spec.to_json_document())
