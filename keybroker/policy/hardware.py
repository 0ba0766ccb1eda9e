"""Policy checks on the confidential hardware itself: AMD SEV-SNP and Intel TDX facts.

What it does: `SnpRequirements` (SMT, migration agent, VMPL, HOST_DATA and ID key digest
allow-lists, excluded products, per-product TCB minimums) and `TdxRequirements` (acceptable
TCB statuses, RTMR / MRCONFIGID / MROWNER allow-lists), each parsed from a rule's fields
and returning every failed check as a reason that names it. `hardware_of` tells which
hardware a claim came from: the TEE itself for ``sev-snp`` / ``tdx``, ``platform["hw"]``
for Azure CVM, MAA and Confidential Space.

The checks apply where the evidence carries the facts: SEV-SNP checks to ``sev-snp`` and to
``azure-cvm`` / ``maa`` on SEV-SNP hardware; TDX register checks to ``tdx`` and to
``azure-cvm`` / ``maa`` on TDX; the TCB status to ``tdx`` and ``azure-cvm`` on TDX (where our
own TDX verifier computed it from Intel's collateral). Evidence that should carry a fact
and does not is denied. What it does not: parse the common rule fields or decide a release.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING

from keybroker.attestation.snp.product import PRODUCTS
from keybroker.attestation.tdx.tcb import TCB_STATUSES, TcbStatus
from keybroker.policy.errors import PolicyFormatError
from keybroker.policy.fields import (
    boolean,
    choices,
    hex_list,
    hex_value_list,
    optional_unsigned,
)

if TYPE_CHECKING:
    from keybroker.attestation.claims import Claims

__all__ = [
    "DEFAULT_MAX_VMPL",
    "DEFAULT_TCB_STATUSES",
    "SNP_FIELDS",
    "TDX_FIELDS",
    "SnpRequirements",
    "TdxRequirements",
    "hardware_of",
    "parse_min_tcb",
    "tcb_failures",
]

SNP_FIELDS = frozenset({"smt", "migration_agent", "max_vmpl", "host_data", "id_key_digest",
                        "exclude_products"})
TDX_FIELDS = frozenset({"tcb_status", "allow_unknown_tcb", "rtmrs", "mrconfigid", "mrowner"})
DEFAULT_TCB_STATUSES = (TcbStatus.UP_TO_DATE.value,)
RTMR_NAMES = ("rtmr0", "rtmr1", "rtmr2", "rtmr3")
SNP_REPORT_TEES = frozenset({"sev-snp", "azure-cvm", "maa"})
TDX_REPORT_TEES = frozenset({"tdx", "azure-cvm", "maa"})
TCB_STATUS_TEES = frozenset({"tdx", "azure-cvm"})
MAX_VMPL = 3
DEFAULT_MAX_VMPL = 0
_MAX_TCB_VALUE = 0xFFFFFFFF
_TCB_COMPONENT = re.compile(r"^[a-z][a-z0-9_]{0,31}$")
_HOST_DATA_SIZE = 32
_ID_KEY_DIGEST_SIZE = 48
_TDX_REGISTER_SIZE = 48
# MAA names the SEV-SNP guest-policy facts differently from our own SEV-SNP claims.
_MAA_SNP_NAMES = {"smt": "smt_allowed", "migration_agent": "migration_allowed"}


def hardware_of(claims: Claims) -> str | None:
    """The confidential hardware behind the claims ("sev-snp", "tdx", "sev"), if known."""
    if claims.tee in ("sev-snp", "tdx"):
        return claims.tee
    hardware = claims.platform.get("hw")
    return hardware if isinstance(hardware, str) else None


def _snp_fact(claims: Claims, name: str) -> object:
    key = _MAA_SNP_NAMES.get(name, name) if claims.tee == "maa" else name
    return claims.platform.get(key)


def _missing(what: str, rule: str) -> str:
    return f"{what} missing from evidence, required by rule {rule}"


def parse_min_tcb(field_name: str, raw: object) -> tuple[Mapping[str, int],
                                                         Mapping[str, Mapping[str, int]] | None]:
    """``min_tcb`` in either form: flat ``{component: min}`` or ``{Milan: {...}, Genoa: ...}``.

    Returns (flat minimums, per-product minimums or None). Mixing the forms is an error.
    """
    if not isinstance(raw, Mapping):
        raise PolicyFormatError(f"{field_name}: expected a mapping of component -> minimum")
    products = [key for key in raw if key in PRODUCTS]
    if not products:
        return _component_minimums(field_name, raw), None
    if len(products) != len(raw):
        raise PolicyFormatError(
            f"{field_name}: mixes products ({', '.join(map(str, products))}) and components; "
            "use one form")
    by_product = {product: MappingProxyType(_component_minimums(f"{field_name}.{product}", value))
                  for product, value in raw.items()}
    return {}, MappingProxyType(by_product)


def _component_minimums(field_name: str, raw: object) -> dict[str, int]:
    if not isinstance(raw, Mapping):
        raise PolicyFormatError(f"{field_name}: expected a mapping of component -> minimum")
    minimums: dict[str, int] = {}
    for component, minimum in raw.items():
        if not isinstance(component, str) or not _TCB_COMPONENT.match(component):
            raise PolicyFormatError(f"{field_name}: bad component name {component!r}")
        if isinstance(minimum, bool) or not isinstance(minimum, int) \
                or not 0 <= minimum <= _MAX_TCB_VALUE:
            raise PolicyFormatError(f"{field_name}.{component}: expected an integer 0..4294967295")
        minimums[component] = minimum
    return minimums


def tcb_failures(tcb: Mapping[str, int], minimums: Mapping[str, int], rule: str) -> list[str]:
    """Each TCB component below its minimum, or missing."""
    failures = []
    for component, minimum in sorted(minimums.items()):
        value = tcb.get(component)
        if not isinstance(value, int):
            failures.append(f"tcb component {component!r} missing from evidence, "
                            f"required by rule {rule}")
        elif value < minimum:
            failures.append(f"tcb {component} {value} below minimum {minimum} of rule {rule}")
    return failures


@dataclass(frozen=True)
class SnpRequirements:
    """What a rule demands of SEV-SNP hardware; the defaults are the safe choices.

    ``smt`` true allows platforms with SMT enabled (most clouds). ``migration_agent``:
    None (the default) denies guests whose policy lets a migration agent export their
    memory; an explicit false also denies evidence that does not say; true allows an agent.
    ``max_vmpl``: None (the default) means 0, so only the guest's most privileged level
    (VMPL 0) gets keys unless the rule names a higher one (a report requested from VMPL 1-3
    comes from software below the guest's firmware, e.g. a paravisor's guest); like
    ``migration_agent``, only an explicit value also denies evidence that does not say.
    """

    smt: bool = True
    migration_agent: bool | None = None
    max_vmpl: int | None = None
    host_data: tuple[str, ...] = ()
    id_key_digest: tuple[str, ...] = ()
    exclude_products: tuple[str, ...] = ()
    min_tcb_by_product: Mapping[str, Mapping[str, int]] | None = None

    @classmethod
    def parse(cls, where: str, raw: Mapping,
              min_tcb_by_product: Mapping[str, Mapping[str, int]] | None) -> SnpRequirements:
        return cls(
            smt=boolean(raw, "smt", f"{where}.smt", default=True),
            migration_agent=(boolean(raw, "migration_agent", f"{where}.migration_agent")
                             if "migration_agent" in raw else None),
            max_vmpl=optional_unsigned(raw, "max_vmpl", f"{where}.max_vmpl", maximum=MAX_VMPL),
            host_data=hex_list(raw, "host_data", f"{where}.host_data", size=_HOST_DATA_SIZE),
            id_key_digest=hex_list(raw, "id_key_digest", f"{where}.id_key_digest",
                                   size=_ID_KEY_DIGEST_SIZE),
            exclude_products=choices(raw, "exclude_products", f"{where}.exclude_products",
                                     PRODUCTS),
            min_tcb_by_product=min_tcb_by_product,
        )

    def failures(self, claims: Claims, rule: str) -> list[str]:
        if claims.tee not in SNP_REPORT_TEES or hardware_of(claims) != "sev-snp":
            return []
        failures: list[str] = []
        if not self.smt:
            smt = _snp_fact(claims, "smt")
            if not isinstance(smt, bool):
                failures.append(_missing("smt", rule))
            elif smt:
                failures.append(f"smt enabled, not allowed by rule {rule}")
        if not self.migration_agent:
            agent = _snp_fact(claims, "migration_agent")
            if not isinstance(agent, bool):
                if self.migration_agent is False:
                    failures.append(_missing("migration_agent", rule))
            elif agent:
                failures.append(f"migration agent allowed by the guest policy, "
                                f"not allowed by rule {rule}")
        failures.extend(self._vmpl_failures(claims, rule))
        for name, allowed in (("host_data", self.host_data),
                              ("id_key_digest", self.id_key_digest)):
            failures.extend(_allow_list_failures(claims, name, allowed, rule))
        failures.extend(self._product_failures(claims, rule))
        return failures

    def _vmpl_failures(self, claims: Claims, rule: str) -> list[str]:
        limit = DEFAULT_MAX_VMPL if self.max_vmpl is None else self.max_vmpl
        vmpl = claims.platform.get("vmpl")
        if isinstance(vmpl, bool) or not isinstance(vmpl, int):
            return [] if self.max_vmpl is None else [_missing("vmpl", rule)]
        if vmpl > limit:
            setting = "max_vmpl" if self.max_vmpl is not None else "the default max_vmpl"
            return [f"vmpl {vmpl} above {setting} {limit} of rule {rule}"]
        return []

    def _product_failures(self, claims: Claims, rule: str) -> list[str]:
        if not self.exclude_products and self.min_tcb_by_product is None:
            return []
        product = claims.product
        if product is None:
            return [_missing("product", rule)]
        if product in self.exclude_products:
            return [f"product {product!r} excluded by rule {rule}"]
        if self.min_tcb_by_product is None:
            return []
        minimums = self.min_tcb_by_product.get(product)
        if minimums is None:
            return [f"no min_tcb for product {product!r} in rule {rule}"]
        return tcb_failures(claims.tcb, minimums, rule)


@dataclass(frozen=True)
class TdxRequirements:
    """What a rule demands of Intel TDX: an acceptable TCB status and register allow-lists.

    Without ``tcb_status`` only ``UpToDate`` is acceptable; a missing status (the verifier had
    no collateral) is denied unless ``allow_unknown_tcb``.
    """

    tcb_status: tuple[str, ...] = DEFAULT_TCB_STATUSES
    allow_unknown_tcb: bool = False
    rtmrs: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    mrconfigid: tuple[str, ...] = ()
    mrowner: tuple[str, ...] = ()

    @classmethod
    def parse(cls, where: str, raw: Mapping) -> TdxRequirements:
        statuses = choices(raw, "tcb_status", f"{where}.tcb_status", TCB_STATUSES,
                           default=DEFAULT_TCB_STATUSES)
        if TcbStatus.REVOKED.value in statuses:
            raise PolicyFormatError(f"{where}.tcb_status: Revoked is never acceptable")
        return cls(
            tcb_status=statuses,
            allow_unknown_tcb=boolean(raw, "allow_unknown_tcb", f"{where}.allow_unknown_tcb"),
            rtmrs=_parse_rtmrs(f"{where}.rtmrs", raw.get("rtmrs", {})),
            mrconfigid=hex_list(raw, "mrconfigid", f"{where}.mrconfigid",
                                size=_TDX_REGISTER_SIZE),
            mrowner=hex_list(raw, "mrowner", f"{where}.mrowner", size=_TDX_REGISTER_SIZE),
        )

    def failures(self, claims: Claims, rule: str) -> list[str]:
        if hardware_of(claims) != "tdx":
            return []
        failures: list[str] = []
        if claims.tee in TCB_STATUS_TEES:
            failures.extend(self._status_failures(claims, rule))
        if claims.tee in TDX_REPORT_TEES:
            for name, allowed in sorted(self.rtmrs.items()):
                failures.extend(_allow_list_failures(claims, name, allowed, rule))
            for name, allowed in (("mrconfigid", self.mrconfigid), ("mrowner", self.mrowner)):
                failures.extend(_allow_list_failures(claims, name, allowed, rule))
        return failures

    def _status_failures(self, claims: Claims, rule: str) -> list[str]:
        status = claims.tcb_status
        if status is None:
            if self.allow_unknown_tcb:
                return []
            return [f"tcb_status unknown (no TDX collateral), not allowed by rule {rule} "
                    "(allow_unknown_tcb: false)"]
        if status not in self.tcb_status:
            return [f"tcb_status {status!r} not allowed by rule {rule} "
                    f"(allowed: {', '.join(self.tcb_status)})"]
        return []


def _parse_rtmrs(where: str, raw: object) -> Mapping[str, tuple[str, ...]]:
    if not isinstance(raw, Mapping):
        raise PolicyFormatError(f"{where}: expected a mapping of rtmr0..rtmr3 -> allowed values")
    parsed = {}
    for name, values in raw.items():
        if name not in RTMR_NAMES:
            raise PolicyFormatError(f"{where}: unknown register {name!r} "
                                    f"(known: {', '.join(RTMR_NAMES)})")
        parsed[name] = hex_value_list(values, f"{where}.{name}", size=_TDX_REGISTER_SIZE)
    return MappingProxyType(parsed)


def _allow_list_failures(claims: Claims, name: str, allowed: tuple[str, ...],
                         rule: str) -> list[str]:
    if not allowed:
        return []
    value = claims.platform.get(name)
    if not isinstance(value, str):
        return [_missing(name, rule)]
    if value.lower() not in allowed:
        return [f"{name} not allowed by rule {rule}"]
    return []
