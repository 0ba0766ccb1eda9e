"""k-anonymity: rows in quasi-identifier groups smaller than k are suppressed and counted."""

from __future__ import annotations

from collections import Counter

import pyarrow as pa
from hypothesis import given, settings
from hypothesis import strategies as st

from enclave_workers.features import compile_spec

from .support import spec_for

COLUMNS = [{"name": "country", "type": "string"}, {"name": "age", "type": "int64"},
           {"name": "amount", "type": "float64"}]
FEATURES = [{"name": "country", "op": "one_hot", "input": "country", "vocabulary": ["DE", "FR"]},
            {"name": "age_band", "op": "generalize", "input": "age", "step": 10},
            {"name": "amount", "op": "passthrough", "input": "amount"}]


def _compiled(k: int):
    return compile_spec(spec_for(COLUMNS, FEATURES, k_anonymity={
        "k": k, "quasi_identifiers": ["country", "age_band"]}))


@settings(max_examples=50, deadline=None)
@given(rows=st.lists(st.tuples(st.none() | st.sampled_from(["DE", "FR", "US", "GB"]),
                               st.none() | st.integers(0, 40)), max_size=60),
       k=st.integers(2, 5))
def test_suppression_matches_group_counts(rows, k):
    table = pa.table({"country": [r[0] for r in rows], "age": [r[1] for r in rows],
                      "amount": [float(i) for i in range(len(rows))]},
                     schema=pa.schema([("country", pa.string()), ("age", pa.int64()),
                                       ("amount", pa.float64())]))
    result = _compiled(k).apply(table, {})

    def group(row):
        country, age = row
        known = country if country in ("DE", "FR") else ("oov" if country else None)
        return known, None if age is None else age // 10 * 10

    sizes = Counter(group(r) for r in rows)
    kept = [i for i, r in enumerate(rows) if sizes[group(r)] >= k]
    assert result.suppressed_rows == len(rows) - len(kept)
    assert result.source_rows.to_pylist() == kept
    assert result.table["amount"].to_pylist() == [float(i) for i in kept]


def test_quasi_identifier_can_name_one_output_column():
    spec = spec_for(COLUMNS, FEATURES, k_anonymity={"k": 2, "quasi_identifiers":
                                                    ["country__DE"]})
    compiled = compile_spec(spec)
    assert compiled.quasi_identifier_columns == ("country__DE",)
    table = pa.table({"country": ["DE", "FR", "FR"], "age": [1, 2, 3],
                      "amount": [1.0, 2.0, 3.0]})
    result = compiled.apply(table, {})
    assert result.suppressed_rows == 1 and result.source_rows.to_pylist() == [1, 2]
