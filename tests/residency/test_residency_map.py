"""The residency map: validation with lines and fields, sink URLs, shared roots, the CLI."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pipelines.cli import main
from pipelines.residency import ResidencyMap, ResidencyMapError, SinkUrl, SinkUrlError
from pipelines.residency.locations import location_allowed, member_regions

GOOD = textwrap.dedent("""\
    version: 1
    regions:
      eu:
        locations: [EU, westeurope]
        kek: local://eu
        sink: gs://sb-eu-out/features
        dead_letter_sink: abfs://eu-dl@sbeu.dfs.core.windows.net/eu
        worker_locations: [europe-west4, westeurope]
        require_cmk: true
      us:
        locations: [US]
        kek: local://us
        sink: azfs://sbus/out/features
        dead_letter_sink: file:///var/sealbeam/us-dl
        worker_locations: [us-central1]
    unrouted_dead_letter_sink: gs://sb-quarantine/q
    azure_accounts:
      sbeu: {subscription_id: s1, resource_group: rg-eu}
      sbus: {subscription_id: s1, resource_group: rg-us}
    """)


def _problems(text: str) -> list[str]:
    with pytest.raises(ResidencyMapError) as raised:
        ResidencyMap.from_yaml(text)
    return [str(p) for p in raised.value.problems]


def test_good_map() -> None:
    residency = ResidencyMap.from_yaml(GOOD)
    assert residency.sinks() == {"eu": "gs://sb-eu-out/features",
                                 "us": "azfs://sbus/out/features"}
    assert residency.dead_letter_roots() == {"eu": "azfs://sbeu/eu-dl/eu",
                                             "us": "/var/sealbeam/us-dl"}
    assert residency.keks() == {"eu": "local://eu", "us": "local://us"}
    assert residency.regions["eu"].require_cmk and not residency.regions["us"].require_cmk
    assert not residency.derived


def test_every_schema_problem_with_its_line() -> None:
    text = (GOOD.replace("    require_cmk: true\n", "    require_cmk: yes please\n")
            .replace("    locations: [US]\n", "    locations: []\n    colour: red\n")
            .replace("sink: azfs://sbus/out/features", "sink: s3://bucket/x"))
    assert _problems(text) == [
        "line 9: regions.eu.require_cmk: 'yes please' is not of type 'boolean'",
        "line 11: regions.us.locations: [] should be non-empty",
        "line 12: regions.us.colour: unknown field",
        "line 14: regions.us.sink: expected a file://, gs://, azfs:// or abfs:// URL",
    ]


def test_missing_fields_and_bad_region_names() -> None:
    text = GOOD.replace("    kek: local://us\n", "").replace("  us:\n", "  US:\n")
    problems = _problems(text)
    assert "line 10: regions.US: not a region name (lowercase letters, digits, '-')" in problems
    assert any(p.startswith("line 10: regions.US: 'kek' is required") for p in problems)


@pytest.mark.parametrize(("change", "problem"), [
    (("sink: azfs://sbus/out/features", "sink: gs://sb-eu-out/us"),
     "line 13: regions.us.sink: gs://sb-eu-out is also the store of region 'eu' "
     "(regions.eu.sink): one store per region"),
    (("unrouted_dead_letter_sink: gs://sb-quarantine/q",
      "unrouted_dead_letter_sink: gs://sb-eu-out/features/q"),
     "line 16: unrouted_dead_letter_sink: gs://sb-eu-out/features/q overlaps regions.eu.sink "
     "(gs://sb-eu-out/features): no shared root"),
    (("dead_letter_sink: file:///var/sealbeam/us-dl", "dead_letter_sink: azfs://sbus/out"),
     "line 14: regions.us.dead_letter_sink: azfs://sbus/out overlaps regions.us.sink "
     "(azfs://sbus/out/features): no shared root"),
    (("  sbus: {subscription_id: s1, resource_group: rg-us}\n", ""),
     "line 13: regions.us.sink: storage account 'sbus' is not listed in azure_accounts "
     "(subscription_id, resource_group)"),
    (("sink: gs://sb-eu-out/features", "sink: gs://sb-eu-out/../features"),
     "line 6: regions.eu.sink: 'gs://sb-eu-out/../features': '.' and '..' are not allowed in "
     "a sink path"),
])
def test_semantic_problems(change: tuple[str, str], problem: str) -> None:
    assert problem in _problems(GOOD.replace(*change))


def test_yaml_problems_have_lines() -> None:
    assert _problems("version: 1\nregions: {eu: &a {}}\n") == [
        "line 2: (document): YAML anchors and aliases are not allowed"]
    assert _problems("version: 1\nversion: 1\n") == ["line 2: version: duplicate key 'version'"]
    assert _problems("version: [1\n")[0].startswith("line 2: (document): not valid YAML")


def test_derived_map_keeps_output_root_layout(tmp_path: Path) -> None:
    derived = ResidencyMap.from_output_root(str(tmp_path / "out"), ["us", "eu"])
    assert derived.derived
    assert derived.sinks() == {"eu": str(tmp_path / "out" / "eu"),
                               "us": str(tmp_path / "out" / "us")}
    assert set(derived.dead_letter_roots().values()) == {str(tmp_path / "out")}
    assert derived.keks() == {}


def test_sink_urls() -> None:
    abfs = SinkUrl.parse("abfs://data@acct1.dfs.core.windows.net/a/b")
    assert (abfs.kind, abfs.store, abfs.container, abfs.beam_path) == (
        "azure", "acct1", "data", "azfs://acct1/data/a/b")
    assert SinkUrl.parse("azfs://acct1/data/a/b").overlaps(abfs)
    assert not SinkUrl.parse("gs://bkt/a/bc").overlaps(SinkUrl.parse("gs://bkt/a/b"))
    assert SinkUrl.parse("gs://bkt/a").overlaps(SinkUrl.parse("gs://bkt/a/b"))
    for bad in ("gs://B/x", "azfs://acct1/ab", "file://relative", "s3://x/y", "nothing"):
        with pytest.raises(SinkUrlError):
            SinkUrl.parse(bad)


@given(st.lists(st.sampled_from(["a", "b", "c"]), min_size=0, max_size=3),
       st.lists(st.sampled_from(["a", "b", "c"]), min_size=0, max_size=3))
def test_overlap_is_prefix_relation(left: list[str], right: list[str]) -> None:
    one = SinkUrl.parse("gs://bkt/" + "/".join(left))
    two = SinkUrl.parse("gs://bkt/" + "/".join(right))
    prefix = left[:len(right)] == right or right[:len(left)] == left
    assert one.overlaps(two) == two.overlaps(one) == prefix


def test_location_expansion() -> None:
    assert member_regions("europe-west4-a") == {"europe-west4"}
    assert "europe-west6" in member_regions("EUR8")
    assert location_allowed("EUR4", ["EU"]) and not location_allowed("EUR8", ["EU"])
    assert location_allowed(["europe-west1", "europe-west4"], ["EU"])
    assert not location_allowed("US", ["EU", "westeurope"])
    assert not location_allowed("EU", ["europe-west4"])      # a multi-region is wider
    assert not location_allowed([], ["EU"])


def test_cli_check(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "map.yaml"
    path.write_text(GOOD)
    assert main(["residency", "check", str(path)]) == 0
    out = capsys.readouterr().out
    assert f"{path}: ok, 2 region(s)" in out and "eu: sink gs://sb-eu-out/features" in out
    assert main(["residency", "check", str(path), "--regions", "eu",
                 "--dataflow_region", "us-central1"]) == 2
    assert capsys.readouterr().err.strip() == (
        "sealbeam: error: preflight refused: workers (Dataflow --region us-central1) are in "
        "us-central1; region eu allows workers in europe-west4, westeurope")
    path.write_text(GOOD.replace("version: 1", "version: 2"))
    assert main(["residency", "check", str(path)]) == 2
    assert capsys.readouterr().err.strip() == (
        f"sealbeam: error: {path}: invalid residency map: line 1: version: expected 1")


def test_cli_help(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["residency", "check", "--help"])
    assert exited.value.code == 0
    assert "--preflight" in capsys.readouterr().out


@given(st.one_of(st.text(max_size=400),
                 st.text(alphabet="{}[]:,-\n #&*!|>'\"?%@`abcv019.~=", max_size=200),
                 st.sampled_from([GOOD]).map(lambda good: good[:len(good) // 2])))
def test_any_text_is_a_map_or_a_map_error(text: str) -> None:
    try:
        ResidencyMap.from_yaml(text)
    except ResidencyMapError as exc:
        assert exc.problems


def test_the_example_map_is_valid(repo_root: Path) -> None:
    residency = ResidencyMap.load(repo_root / "examples" / "residency" / "residency.yaml")
    assert set(residency.regions) == {"eu", "us"}
    assert residency.regions["us"].dead_letter_sink.beam_path == \
        "azfs://acmesealbeamus/dead/features"


def test_local_kek_and_key_vaults() -> None:
    text = (GOOD.replace("    require_cmk: true\n", "    require_cmk: true\n    local_kek: true\n")
            + "azure_key_vaults:\n  Acme-EU: {subscription_id: s1, resource_group: rg-eu}\n")
    residency = ResidencyMap.from_yaml(text)
    assert residency.regions["eu"].local_kek and not residency.regions["us"].local_kek
    assert residency.azure_key_vaults["acme-eu"].resource_group == "rg-eu"
    assert residency.regions["eu"].to_json()["local_kek"] is True
    bad = (GOOD.replace("    require_cmk: true\n", "    require_cmk: true\n    local_kek: 1\n")
           + "azure_key_vaults:\n  a_b: {subscription_id: s1, resource_group: rg}\n")
    assert _problems(bad) == [
        "line 10: regions.eu.local_kek: 1 is not of type 'boolean'",
        "line 22: azure_key_vaults.a_b: not a key vault name (3-24 letters, digits, '-')",
    ]


def test_maa_location_claim_is_kept_and_checked_as_the_broker_checks_it() -> None:
    assert ResidencyMap.from_yaml(GOOD).maa_location_claim is None
    claimed = ResidencyMap.from_yaml(GOOD + "maa_location_claim: sealbeam-vm-location\n")
    assert claimed.maa_location_claim == "sealbeam-vm-location"
    assert _problems(GOOD + "maa_location_claim: x-ms-azurevm-vmid\n") == [
        "line 20: maa_location_claim: 'x-ms-azurevm-vmid' is a claim MAA or JWT defines, not "
        "one your MAA policy issues"]
    assert _problems(GOOD + "maa_location_claim: a b\n") == [
        "line 20: maa_location_claim: expected a claim name (letters, digits, '.', '_', '-')"]
    assert _problems(GOOD + "maa_location_claim: 3\n") == [
        "line 20: maa_location_claim: 3 is not of type 'string'"]
