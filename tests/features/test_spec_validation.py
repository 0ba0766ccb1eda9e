"""Spec validation: schema and semantic errors name the field and the YAML line."""

from __future__ import annotations

import copy
import json
from importlib import resources

import jsonschema
import pytest

from enclave_workers.features import FeatureSpec, FeatureSpecError, compile_spec

GOOD = """\
version: 1
input:
  columns:
    - {name: email, type: string, identifier: true}
    - {name: amount, type: float64, nullable: false}
    - {name: country, type: string}
    - name: event_time
      type: timestamp[us, UTC]
features:
  - {name: user, op: pseudonymize, input: email, key: tenant, output: hex}
  - {name: amount_z, op: standardize, input: amount, mean: 100.0, std: 25.0}
  - {name: amount_band, op: bucketize, input: amount, boundaries: [10, 100, 1000]}
  - {name: country, op: one_hot, input: country, vocabulary: [DE, FR, US]}
  - {name: t, op: date_parts, input: event_time, parts: [year, month, dow, hour], tz: UTC}
"""


def _problems(text: str) -> list[tuple[int | None, str, str]]:
    with pytest.raises(FeatureSpecError) as caught:
        compile_spec(FeatureSpec.from_yaml(text))
    return [(p.line, p.field, p.message) for p in caught.value.problems]


def test_the_good_spec_compiles():
    compiled = compile_spec(FeatureSpec.from_yaml(GOOD))
    assert compiled.output_schema.names[:3] == ["user", "amount_z", "amount_band"]
    assert compiled.key_names == ("tenant",)


def test_shipped_schema_is_valid_draft_2020_12():
    text = resources.files("enclave_workers.features").joinpath("schema.json").read_text()
    jsonschema.Draft202012Validator.check_schema(json.loads(text))


@pytest.mark.parametrize(("old", "new", "line", "field", "fragment"), [
    ("std: 25.0", "std: 0", 11, "features[1].std", "less than or equal to the minimum of 0"),
    ("std: 25.0", "stdev: 25.0", 11, "features[1]", "'std' is a required property"),
    ("output: hex", "output: hex, salt: 1", 10, "features[0]", "unknown field(s) 'salt'"),
    ("op: standardize", "op: standardise", 11, "features[1].op", "is not one of"),
    ("type: float64", "type: float65", 5, "input.columns[1].type", "does not match"),
    ("[DE, FR, US]", "[DE, FR, NO]", 13, "features[3].vocabulary[2]", "quote the value"),
    ("version: 1", "version: 2", 1, "version", "1 was expected"),
    ("[10, 100, 1000]", "[10, 1000, 100]", 12, "features[2].boundaries", "strictly increase"),
    ("input: country,", "input: nation,", 13, "features[3].input", "not declared"),
    ("tz: UTC", "tz: Mars/Olympus", 14, "features[4].tz", "unknown time zone"),
    ("op: pseudonymize, input: email, key: tenant, output: hex", "op: passthrough, input: email",
     10, "features[0].op", "identifier"),
    ("name: amount_band", "name: amount_z", 12, "features[2].name", "used twice"),
])
def test_problems_name_line_and_field(old, new, line, field, fragment):
    assert old in GOOD
    problems = _problems(GOOD.replace(old, new, 1))
    assert any(p[0] == line and p[1] == field and fragment in p[2] for p in problems), problems


def test_all_problems_are_reported_at_once_and_in_the_message():
    text = GOOD.replace("std: 25.0", "std: -1").replace("type: float64", "type: decimal")
    with pytest.raises(FeatureSpecError) as caught:
        FeatureSpec.from_yaml(text, source="spec.yaml")
    message = str(caught.value)
    assert "spec.yaml" in message and "2 problems" in message
    assert "line 5: input.columns[1].type" in message
    assert "line 11: features[1].std" in message


def test_yaml_hazards_are_refused_with_lines():
    assert _problems(GOOD + "features: []\n")[0][:2] == (15, "features")
    anchors = GOOD.replace("- {name: amount_z", "- &a {name: amount_z")
    assert "anchors" in _problems(anchors)[0][2]
    assert _problems("version: 1\n  bad: [\n")[0][0] is not None
    assert "quote dates" in _problems(GOOD.replace("mean: 100.0", "mean: 2024-01-01"))[0][2]
    assert "empty" in _problems("")[0][2]


def test_size_limit_is_checked_before_parsing():
    with pytest.raises(FeatureSpecError, match="over the limit"):
        FeatureSpec.from_yaml("#" * (1 << 20) + "\n" + GOOD)


def test_from_dict_names_fields_without_lines():
    document = FeatureSpec.from_yaml(GOOD).to_json_document()
    broken = copy.deepcopy(document)
    broken["features"][2]["boundaries"] = "not a list"
    with pytest.raises(FeatureSpecError) as caught:
        FeatureSpec.from_dict(broken)
    (problem,) = caught.value.problems
    assert problem.field == "features[2].boundaries" and problem.line is None


def test_semantic_type_mismatches():
    for old, new, fragment in (
            ("op: standardize, input: amount", "op: standardize, input: country", "numeric"),
            ("parts: [year, month, dow, hour], tz: UTC", "parts: [year]", None),
            ("{name: amount, type: float64, nullable: false}",
             "{name: amount, type: float64, nullable: false, max_length: 3}", "string column")):
        text = GOOD.replace(old, new)
        if fragment is None:
            compile_spec(FeatureSpec.from_yaml(text))
        else:
            assert any(fragment in p[2] for p in _problems(text))
