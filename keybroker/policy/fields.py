"""Field readers for the policy grammar: each reads one value and names the field it rejects.

What it does: small, bounded readers — booleans, string lists (with an item cap), hex
allow-lists of a fixed size, choices from a closed set, unsigned integers — that raise
`PolicyFormatError` naming the field ("rules[0].host_data[1]: expected 32 bytes of hex").
What it does not: know which fields a rule has or what they mean (see `rule`).
"""

from __future__ import annotations

import re
from collections.abc import Collection, Mapping

from keybroker.policy.errors import PolicyFormatError

__all__ = [
    "MAX_LIST_ITEMS",
    "MAX_STRING_LENGTH",
    "boolean",
    "choices",
    "hex_list",
    "hex_value_list",
    "optional_unsigned",
    "refuse_unknown_fields",
    "string_list",
]

MAX_LIST_ITEMS = 1024
MAX_STRING_LENGTH = 512
_HEX = re.compile(r"^(?:[0-9a-fA-F]{2})+$")


def refuse_unknown_fields(where: str, document: Mapping, known: Collection[str]) -> None:
    """A typo must not silently widen or narrow a rule: unknown keys are errors."""
    unknown = sorted(str(key) for key in document if key not in known)
    if unknown:
        raise PolicyFormatError(f"{where}: unknown field(s) {', '.join(unknown)}")


def boolean(document: Mapping, key: str, field: str, *, default: bool = False) -> bool:
    value = document.get(key, default)
    if not isinstance(value, bool):
        raise PolicyFormatError(f"{field}: expected true or false, got {value!r}")
    return value


def string_list(document: Mapping, key: str, field: str, *, required: bool) -> tuple[str, ...]:
    """A list of non-empty strings of at most `MAX_STRING_LENGTH` characters."""
    if key not in document:
        if required:
            raise PolicyFormatError(f"{field}: required")
        return ()
    value = document[key]
    if not isinstance(value, list):
        raise PolicyFormatError(f"{field}: expected a list")
    if len(value) > MAX_LIST_ITEMS:
        raise PolicyFormatError(f"{field}: more than {MAX_LIST_ITEMS} items")
    for index, item in enumerate(value):
        if not isinstance(item, str) or not 1 <= len(item) <= MAX_STRING_LENGTH:
            raise PolicyFormatError(f"{field}[{index}]: expected a non-empty string")
    if required and not value:
        raise PolicyFormatError(f"{field}: must not be empty")
    return tuple(value)


def hex_list(document: Mapping, key: str, field: str, *, size: int) -> tuple[str, ...]:
    """An allow-list of ``size``-byte values in hex (any case), returned lowercase.

    Absent means "not checked"; present but empty is refused, since it would deny everything
    by accident rather than by intent.
    """
    if key not in document:
        return ()
    values = string_list(document, key, field, required=True)
    return tuple(_hex_value(f"{field}[{index}]", value, size) for index, value in
                 enumerate(values))


def hex_value_list(value: object, field: str, *, size: int) -> tuple[str, ...]:
    """Like `hex_list`, for a value already taken out of its document."""
    return hex_list({"values": value}, "values", field, size=size)


def _hex_value(field: str, value: str, size: int) -> str:
    if len(value) != 2 * size or not _HEX.match(value):
        raise PolicyFormatError(f"{field}: expected {size} bytes of hex ({2 * size} digits)")
    return value.lower()


def choices(document: Mapping, key: str, field: str, allowed: Collection[str], *,
            default: tuple[str, ...] = ()) -> tuple[str, ...]:
    """A list whose items come from the closed set ``allowed``; ``default`` when absent."""
    if key not in document:
        return default
    values = string_list(document, key, field, required=False)
    for index, value in enumerate(values):
        if value not in allowed:
            raise PolicyFormatError(
                f"{field}[{index}]: unknown value {value!r} (known: {', '.join(sorted(allowed))})")
    return values


def optional_unsigned(document: Mapping, key: str, field: str, *, maximum: int) -> int | None:
    if key not in document or document[key] is None:
        return None
    value = document[key]
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= maximum:
        raise PolicyFormatError(f"{field}: expected an integer 0..{maximum}")
    return value
