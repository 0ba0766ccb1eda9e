"""The residency map: for each data region, where its outputs may live and who may process it.

What it does: ``ResidencyMap.load(path)`` reads a YAML map (version 1), validates it against
``schema.json`` and then semantically, and reports every problem at once, each with its line
and field (``line 7: regions.eu.sink: ...``). Per region the map names the cloud locations
its sinks may be in (``EU``, ``EUROPE-WEST4``, ``westeurope`` ...), the KEK its outputs are
sealed under, the output sink and the dead-letter sink (``file://``, ``gs://``, ``azfs://``,
``abfs://``), the worker locations that may process it, and whether a customer-managed key
is required at rest, and whether a KEK without a location (a local keyring, a PKCS#11 module:
``local_kek``) is accepted; ``azure_key_vaults`` says where the management API finds the
vaults of ``azure-kv://`` KEKs; ``maa_location_claim`` names the MAA token claim that carries
an Azure worker's location (checked as the broker checks a rule's; ``sealbeam residency policy``
prints it into the rule). Sinks of different regions may not share a bucket, account or
directory, and no sink may lie inside another. ``unrouted_dead_letter_sink`` takes dead
letters whose region cannot be read or has no sink in the map (still sealed).

``ResidencyMap.from_output_root(root, regions)`` derives the embedded default's map from
``--output_root``: ``<root>/<region>`` per region, dead letters in ``<root>/dead-letter/``,
location and worker location ``local``, no KEK check. It is marked ``derived``: its regions
share one root, so it pins nothing beyond a folder name; preflight says so.

What it does not: read where a sink really is (``pipelines.preflight``) or write anything.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema

from keybroker.policy.errors import PolicyFormatError
from keybroker.policy.location import checked_maa_location_claim
from pipelines.errors import PipelineError

from .locations import LOCAL
from .sinks import SinkUrl, SinkUrlError
from .yaml_lines import FieldPath, YamlProblem, format_path, load_with_lines

__all__ = ["MAX_MAP_BYTES", "AzureAccount", "MapProblem", "RegionResidency", "ResidencyMap",
           "ResidencyMapError"]

MAX_MAP_BYTES = 256 * 1024
MAX_REPORTED = 50
_NAME_MESSAGES = {"regions": "not a region name (lowercase letters, digits, '-')",
                  "azure_accounts": "not a storage account name (3-24 lowercase letters, "
                                    "digits)",
                  "azure_key_vaults": "not a key vault name (3-24 letters, digits, '-')"}


@dataclass(frozen=True)
class MapProblem:
    """One thing wrong with a map: field path, message, line (when read from YAML)."""

    path: FieldPath
    message: str
    line: int | None = None

    def __str__(self) -> str:
        where = f"line {self.line}: " if self.line is not None else ""
        return f"{where}{format_path(self.path)}: {self.message}"


class ResidencyMapError(PipelineError):
    """The map is not valid: every problem found, each naming its field and line."""

    def __init__(self, problems: Sequence[MapProblem], *, source: str | None = None) -> None:
        self.problems = tuple(problems)
        prefix = f"{source}: " if source else ""
        if len(self.problems) == 1:
            text = f"{prefix}invalid residency map: {self.problems[0]}"
        else:
            listed = "; ".join(str(p) for p in self.problems)
            text = f"{prefix}invalid residency map ({len(self.problems)} problems): {listed}"
        super().__init__(text)


@dataclass(frozen=True)
class AzureAccount:
    """Where the management API finds a storage account."""

    subscription_id: str
    resource_group: str


@dataclass(frozen=True)
class RegionResidency:
    """One data region's pinning."""

    region: str
    locations: tuple[str, ...]
    kek: str | None
    sink: SinkUrl
    dead_letter_sink: SinkUrl
    worker_locations: tuple[str, ...]
    require_cmk: bool = False
    local_kek: bool = False     # a local keyring / PKCS#11 KEK (no location) is accepted

    def to_json(self) -> dict[str, object]:
        return {"region": self.region, "locations": list(self.locations), "kek": self.kek,
                "sink": self.sink.url, "dead_letter_sink": self.dead_letter_sink.url,
                "worker_locations": list(self.worker_locations),
                "require_cmk": self.require_cmk, "local_kek": self.local_kek}


@dataclass(frozen=True)
class ResidencyMap:
    """A validated map (see the module docstring)."""

    regions: Mapping[str, RegionResidency]
    unrouted_dead_letter_sink: SinkUrl
    azure_accounts: Mapping[str, AzureAccount] = field(default_factory=dict)
    derived: bool = False
    azure_key_vaults: Mapping[str, AzureAccount] = field(default_factory=dict)
    source: str | None = None
    maa_location_claim: str | None = None

    @classmethod
    def load(cls, path: str | Path) -> ResidencyMap:
        path = Path(path)
        try:
            raw = path.read_bytes()[: MAX_MAP_BYTES + 1]
        except OSError as exc:
            raise ResidencyMapError([MapProblem((), f"cannot read: {exc.strerror}")],
                                    source=str(path)) from None
        if len(raw) > MAX_MAP_BYTES:
            raise ResidencyMapError([MapProblem((), f"over the limit of {MAX_MAP_BYTES} bytes")],
                                    source=str(path))
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ResidencyMapError([MapProblem((), f"not UTF-8 (byte {exc.start})")],
                                    source=str(path)) from None
        return cls.from_yaml(text, source=str(path))

    @classmethod
    def from_yaml(cls, text: str, *, source: str | None = None) -> ResidencyMap:
        try:
            document, lines = load_with_lines(text)
        except YamlProblem as exc:
            raise ResidencyMapError([MapProblem(exc.path, exc.message, exc.line)],
                                    source=source) from None
        return cls.from_document(document, lines=lines, source=source)

    @classmethod
    def from_document(cls, document: Any, *, lines: Mapping[FieldPath, int] | None = None,
                      source: str | None = None) -> ResidencyMap:
        lines = lines or {}
        problems = _schema_problems(document, lines)
        if problems:
            raise ResidencyMapError(problems, source=source)
        problems = []
        regions: dict[str, RegionResidency] = {}
        for name, raw in document["regions"].items():
            region = _region(name, raw, lines, problems)
            if region is not None:
                regions[name] = region
        unrouted = _sink(document["unrouted_dead_letter_sink"], ("unrouted_dead_letter_sink",),
                         lines, problems)
        accounts = {name: AzureAccount(raw["subscription_id"], raw["resource_group"])
                    for name, raw in document.get("azure_accounts", {}).items()}
        if not problems and unrouted is not None:
            problems.extend(_shared_roots(list(regions.values()), unrouted, lines))
            problems.extend(_unknown_accounts(list(regions.values()), unrouted, accounts, lines))
        vaults = {name.lower(): AzureAccount(raw["subscription_id"], raw["resource_group"])
                  for name, raw in document.get("azure_key_vaults", {}).items()}
        claim = _maa_location_claim(document, lines, problems)
        if problems:
            raise ResidencyMapError(problems[:MAX_REPORTED], source=source)
        assert unrouted is not None
        return cls(regions, unrouted, accounts, source=source, azure_key_vaults=vaults,
                   maa_location_claim=claim)

    @classmethod
    def from_output_root(cls, output_root: str, regions: Iterable[str]) -> ResidencyMap:
        """The embedded default: ``<root>/<region>`` sinks on this machine (see above)."""
        root_url = _as_url(output_root)
        try:
            root = SinkUrl.parse(root_url)
        except SinkUrlError as exc:
            raise PipelineError(f"--output_root: {exc}") from None
        derived = {}
        for region in sorted(regions):
            sink = SinkUrl.parse(f"{root_url.rstrip('/')}/{region}")
            location = LOCAL if root.kind == "file" else ""
            derived[region] = RegionResidency(
                region=region, locations=(location,) if location else (), kek=None,
                sink=sink, dead_letter_sink=root, worker_locations=(LOCAL,))
        return cls(derived, root, derived=True, source="--output_root")

    def sinks(self) -> dict[str, str]:
        """Region -> the Beam path its outputs are written under."""
        return {name: r.sink.beam_path for name, r in self.regions.items()}

    def dead_letter_roots(self) -> dict[str, str]:
        """Region -> the Beam path its dead letters are written under."""
        return {name: r.dead_letter_sink.beam_path for name, r in self.regions.items()}

    def keks(self) -> dict[str, str]:
        """Region -> the KEK its outputs must be sealed under (regions that name one)."""
        return {name: r.kek for name, r in self.regions.items() if r.kek}

    def to_json(self) -> dict[str, object]:
        return {"derived": self.derived,
                "regions": {name: r.to_json() for name, r in sorted(self.regions.items())},
                "unrouted_dead_letter_sink": self.unrouted_dead_letter_sink.url}


def _as_url(output_root: str) -> str:
    if "://" in output_root:
        return output_root
    return "file://" + str(Path(output_root).resolve())


@cache
def _validator() -> jsonschema.Draft202012Validator:
    text = resources.files(__package__).joinpath("schema.json").read_text(encoding="utf-8")
    return jsonschema.Draft202012Validator(json.loads(text))


def _line(lines: Mapping[FieldPath, int], path: FieldPath) -> int | None:
    for end in range(len(path), -1, -1):
        if path[:end] in lines:
            return lines[path[:end]]
    return None


def _schema_problems(document: Any, lines: Mapping[FieldPath, int]) -> list[MapProblem]:
    problems = []
    for error in _validator().iter_errors(document):
        for leaf in _leaves(error):
            path = tuple(leaf.absolute_path)
            if leaf.validator == "additionalProperties" and isinstance(leaf.instance, dict):
                known = leaf.schema.get("properties", {})
                for key in sorted(k for k in leaf.instance if k not in known):
                    problems.append(MapProblem((*path, key), "unknown field",
                                               _line(lines, (*path, key))))
                continue
            if "propertyNames" in leaf.absolute_schema_path:
                path = (*path, str(leaf.instance))
                problems.append(MapProblem(path, _NAME_MESSAGES.get(path[0], "bad name"),
                                           _line(lines, path)))
                continue
            problems.append(MapProblem(path, _describe(leaf), _line(lines, path)))
    problems.sort(key=lambda p: (p.line or 0, format_path(p.path)))
    return problems[:MAX_REPORTED]


def _leaves(error: jsonschema.ValidationError) -> list[jsonschema.ValidationError]:
    if not error.context:
        return [error]
    best = jsonschema.exceptions.best_match(error.context)
    return [best] if best is not None else [error]


def _describe(error: jsonschema.ValidationError) -> str:
    if error.validator == "required":
        return error.message.replace("is a required property", "is required")
    path = list(error.absolute_path)
    if error.validator == "pattern" and path and "sink" in str(path[-1]):
        return "expected a file://, gs://, azfs:// or abfs:// URL"
    if error.validator == "const":
        return f"expected {error.validator_value!r}"
    return error.message


def _sink(url: str, path: FieldPath, lines: Mapping[FieldPath, int],
          problems: list[MapProblem]) -> SinkUrl | None:
    try:
        return SinkUrl.parse(url)
    except SinkUrlError as exc:
        problems.append(MapProblem(path, str(exc), _line(lines, path)))
        return None


def _maa_location_claim(document: Mapping[str, Any], lines: Mapping[FieldPath, int],
                        problems: list[MapProblem]) -> str | None:
    """The map's ``maa_location_claim``, checked as the broker checks a rule's."""
    if "maa_location_claim" not in document:
        return None
    path: FieldPath = ("maa_location_claim",)
    try:
        return checked_maa_location_claim(document["maa_location_claim"], format_path(path))
    except PolicyFormatError as exc:
        message = str(exc).split(": ", 1)[-1]
        problems.append(MapProblem(path, message, _line(lines, path)))
        return None


def _region(name: str, raw: Mapping[str, Any], lines: Mapping[FieldPath, int],
            problems: list[MapProblem]) -> RegionResidency | None:
    base = ("regions", name)
    sink = _sink(raw["sink"], (*base, "sink"), lines, problems)
    dead = _sink(raw["dead_letter_sink"], (*base, "dead_letter_sink"), lines, problems)
    if sink is None or dead is None:
        return None
    return RegionResidency(
        region=name, locations=tuple(raw["locations"]), kek=raw["kek"], sink=sink,
        dead_letter_sink=dead, worker_locations=tuple(raw["worker_locations"]),
        require_cmk=bool(raw.get("require_cmk", False)),
        local_kek=bool(raw.get("local_kek", False)))


def _shared_roots(regions: list[RegionResidency], unrouted: SinkUrl,
                  lines: Mapping[FieldPath, int]) -> list[MapProblem]:
    """Sinks of different regions share no bucket/account/directory; no root holds another."""
    named: list[tuple[FieldPath, str, SinkUrl]] = []
    for region in regions:
        named.append((("regions", region.region, "sink"), region.region, region.sink))
        named.append((("regions", region.region, "dead_letter_sink"), region.region,
                      region.dead_letter_sink))
    named.append((("unrouted_dead_letter_sink",), "", unrouted))
    problems = []
    for index, (path, region, sink) in enumerate(named):
        for other_path, other_region, other in named[:index]:
            if sink.overlaps(other):
                problems.append(MapProblem(path, f"{sink.url} overlaps {format_path(other_path)} "
                                           f"({other.url}): no shared root", _line(lines, path)))
            elif region and other_region and region != other_region and sink.same_store(other):
                problems.append(MapProblem(
                    path, f"{sink.store_label} is also the store of region {other_region!r} "
                    f"({format_path(other_path)}): one store per region", _line(lines, path)))
    return problems


def _unknown_accounts(regions: list[RegionResidency], unrouted: SinkUrl,
                      accounts: Mapping[str, AzureAccount],
                      lines: Mapping[FieldPath, int]) -> list[MapProblem]:
    """Every Azure sink's account must be in ``azure_accounts`` (preflight needs it)."""
    sinks: list[tuple[FieldPath, SinkUrl]] = [(("unrouted_dead_letter_sink",), unrouted)]
    for region in regions:
        sinks.append((("regions", region.region, "sink"), region.sink))
        sinks.append((("regions", region.region, "dead_letter_sink"), region.dead_letter_sink))
    return [MapProblem(path, f"storage account {sink.store!r} is not listed in azure_accounts "
                       "(subscription_id, resource_group)", _line(lines, path))
            for path, sink in sinks if sink.kind == "azure" and sink.store not in accounts]
