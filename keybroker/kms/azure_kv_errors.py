"""Azure Key Vault failures as sealbeam's typed KMS errors, and the one way vault calls are made.

`translate_azure_error` maps azure-core / SDK exceptions to the ``keybroker.kms.base`` errors:
401 -> KmsPermissionError; 403 -> KeyDisabledError when the vault says the key is disabled or
expired, KmsPermissionError otherwise; 404 -> KeyNotFoundError; 408/429/5xx and network faults ->
KmsTransientError; a 400 from an unwrap -> the detail-free KmsUnwrapError; a TLS verification
failure -> KmsError (not retried). `call_vault` runs one vault call with that translation and
retries the transient errors with `keybroker.kms.retry` backoff. It also defines the Azure
backend's own error types (`KeyDisabledError`, `KeyReleaseDeniedError`, `KmsInputError`).

This module parses no key URIs (``keybroker.kms.azure_kv_names`` does), builds no requests and
never sees key bytes; messages carry the service's error code and a clipped, printable message.
"""

from __future__ import annotations

import ssl
from collections.abc import Callable
from typing import TypeVar

from azure.core.exceptions import (
    AzureError,
    ClientAuthenticationError,
    HttpResponseError,
    ServiceRequestError,
    ServiceResponseError,
)

from keybroker.kms.base import (
    KeyNotFoundError,
    KmsError,
    KmsPermissionError,
    KmsTransientError,
    KmsUnwrapError,
)
from keybroker.kms.retry import Backoff, call_with_retry

__all__ = [
    "KeyDisabledError",
    "KeyReleaseDeniedError",
    "KmsInputError",
    "call_vault",
    "translate_azure_error",
]


class KeyDisabledError(KmsPermissionError):
    """The key exists but the vault refuses to use it: disabled, expired or not yet valid."""


class KeyReleaseDeniedError(KmsPermissionError):
    """The vault refused Secure Key Release: the target token did not satisfy the release policy
    (or the caller lacks keys/release)."""


class KmsInputError(KmsError):
    """A key URI, DEK, AAD or wrapped-key blob handed to this backend is malformed."""


_T = TypeVar("_T")


def call_vault(
    call: Callable[[], _T],
    describe: str,
    backoff: Backoff,
    sleep: Callable[[float], None],
    *,
    unwrapping: bool = False,
) -> _T:
    """Run one vault call, errors translated to typed KMS errors, transient ones retried."""

    def translated() -> _T:
        try:
            return call()
        except (AzureError, ValueError) as error:
            raise translate_azure_error(error, describe, unwrapping=unwrapping) from error

    return call_with_retry(translated, backoff=backoff, description=describe, sleep=sleep)


def translate_azure_error(
    error: BaseException, describe: str, *, unwrapping: bool = False
) -> KmsError:
    """Map an azure-core / SDK exception to the broker's typed KMS errors (one place).

    ``unwrapping``: a 400 from an unwrap means the ciphertext did not decrypt under the key, which
    callers must not tell apart from a wrong AAD (KmsUnwrapError, no detail).
    """
    if isinstance(error, KmsError):
        return error
    if isinstance(error, HttpResponseError) and error.status_code is not None:
        status = error.status_code
        code, message, inner_code = _service_error_details(error)
        detail = f"{describe}: HTTP {status} {code}: {message}"
        if status == 401:
            return KmsPermissionError(detail)
        if status == 403:
            return (
                KeyDisabledError(detail)
                if _says_disabled(message, inner_code)
                else (KmsPermissionError(detail))
            )
        if status == 404:
            return KeyNotFoundError(detail)
        if status in (408, 429) or status >= 500:
            return KmsTransientError(detail)
        if status == 400 and unwrapping:
            return KmsUnwrapError()
        return KmsError(detail)
    if isinstance(error, ClientAuthenticationError):
        return KmsPermissionError(
            f"{describe}: credential could not authenticate: {_clip(str(error))}"
        )
    if isinstance(error, (ServiceRequestError, ServiceResponseError)):
        if _caused_by_tls_failure(error):
            return KmsError(
                f"{describe}: TLS verification of the vault failed: {_clip(str(error))}"
            )
        return KmsTransientError(f"{describe}: vault unreachable: {_clip(str(error))}")
    return KmsError(f"{describe}: {type(error).__name__}: {_clip(str(error))}")


def _service_error_details(error: HttpResponseError) -> tuple[str, str, str]:
    odata = error.error
    if odata is None:
        return "-", _clip(error.reason or "no error body"), ""
    inner = odata.innererror if isinstance(odata.innererror, dict) else {}
    return (
        _clip(str(odata.code or "-")),
        _clip(str(odata.message or "")),
        _clip(str(inner.get("code", ""))),
    )


def _says_disabled(message: str, inner_code: str) -> bool:
    lowered = message.lower()
    return (
        inner_code in ("KeyDisabled", "KeyExpired") or "disabled" in lowered or "expired" in lowered
    )


def _caused_by_tls_failure(error: BaseException) -> bool:
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, ssl.SSLError) or "SSLError" in type(current).__name__:
            return True
        inner = getattr(current, "inner_exception", None)
        current = (
            inner
            if isinstance(inner, BaseException)
            else (current.__cause__ or current.__context__)
        )
    return False


def _clip(text: str, limit: int = 300) -> str:
    printable = "".join(ch if ch.isprintable() else "?" for ch in text)
    return printable if len(printable) <= limit else printable[:limit] + "..."
