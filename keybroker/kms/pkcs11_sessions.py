"""PKCS#11 token sessions: one logged-in session per token, opened lazily and reused.

``TokenSessions`` finds a token by label, logs in with the user PIN on first use, keeps the
session under a lock (SoftHSM is initialised without OS locking) and runs operations in it;
a session the token invalidated is dropped and the call retried with backoff, and PKCS#11
failures become the typed KMS errors. The PIN is held by ``Pin``, which never shows it. This
module does not load modules from the environment, name keys or perform cryptography
(``keybroker.kms.pkcs11`` does).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

from pkcs11 import exceptions as p11

from keybroker.kms.base import KeyNotFoundError, KmsError, KmsPermissionError, KmsTransientError
from keybroker.kms.retry import Backoff, call_with_retry

if TYPE_CHECKING:
    import random

__all__ = [
    "MAX_PIN_BYTES",
    "Pin",
    "Pkcs11ConfigurationError",
    "TokenNotFoundError",
    "TokenSessions",
]

MAX_PIN_BYTES = 256

_PIN_ERRORS = (
    p11.PinIncorrect,
    p11.PinInvalid,
    p11.PinLenRange,
    p11.PinLocked,
    p11.PinExpired,
    p11.UserPinNotInitialized,
)
# The token dropped our session (HSM restart, module re-initialised): reopen and retry.
_STALE_SESSION_ERRORS = (
    p11.SessionHandleInvalid,
    p11.SessionClosed,
    p11.DeviceRemoved,
    p11.TokenNotPresent,
    p11.UserNotLoggedIn,
)
_RESOURCE_ERRORS = (p11.DeviceMemory, p11.HostMemory, p11.SessionCount)

T = TypeVar("T")


class TokenNotFoundError(KeyNotFoundError):
    """No token with the KEK URI's label is present in the PKCS#11 module."""


class Pkcs11ConfigurationError(KmsError):
    """The PKCS#11 module path or PIN is missing or unusable."""


class Pin:
    """The user PIN; never shown by repr/str."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        if not value or len(value.encode("utf-8")) > MAX_PIN_BYTES:
            raise Pkcs11ConfigurationError(f"PIN: expected 1..{MAX_PIN_BYTES} bytes")
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "<PIN redacted>"

    __str__ = __repr__


class TokenSessions:
    """The logged-in session per token of one loaded PKCS#11 module. Thread-safe."""

    def __init__(
        self,
        lib: Any,
        module_path: str,
        pin: Pin,
        *,
        backoff: Backoff,
        sleep: Callable[[float], None],
        rng: random.Random | None,
    ) -> None:
        self._lib = lib
        self._module_path = module_path
        self._pin = pin
        self._lock = threading.RLock()
        self._sessions: dict[str, Any] = {}
        self._backoff = backoff
        self._sleep = sleep
        self._rng = rng

    @property
    def token_labels(self) -> list[str]:
        """The labels of the tokens with an open session, sorted."""
        return sorted(self._sessions)

    def run(self, token_label: str, operation: Callable[[Any], T], what: str) -> T:
        """Run ``operation(session)`` under the lock, retrying once the session is reopened."""

        def attempt() -> T:
            with self._lock:
                try:
                    return operation(self._session(token_label, what))
                except _STALE_SESSION_ERRORS as error:
                    self._sessions.pop(token_label, None)
                    raise KmsTransientError(
                        f"{what}: token session lost ({type(error).__name__})"
                    ) from None
                except _RESOURCE_ERRORS as error:
                    raise KmsTransientError(
                        f"{what}: token busy ({type(error).__name__})"
                    ) from None
                except _PIN_ERRORS as error:
                    raise KmsPermissionError(f"{what}: {type(error).__name__}") from None
                except p11.PKCS11Error as error:
                    raise KmsError(f"{what}: PKCS#11 {type(error).__name__}") from None

        return call_with_retry(
            attempt, backoff=self._backoff, description=what, sleep=self._sleep, rng=self._rng
        )

    def admin_session(self, token_label: str) -> Any:
        """A short read/write session; the login comes from the cached session."""
        return self._token(token_label).open(rw=True)

    def close(self) -> None:
        """Close the cached sessions (logging the application out of their tokens)."""
        with self._lock:
            sessions, self._sessions = self._sessions, {}
            for session in sessions.values():
                try:
                    session.close()
                except p11.PKCS11Error:
                    continue  # best effort: the token may already have dropped it

    def _token(self, token_label: str) -> Any:
        try:
            return self._lib.get_token(token_label=token_label)
        except p11.NoSuchToken:
            raise TokenNotFoundError(
                f"no PKCS#11 token labeled {token_label!r} in {self._module_path}"
            ) from None
        except p11.MultipleTokensReturned:
            raise KmsError(f"several PKCS#11 tokens are labeled {token_label!r}") from None

    def _session(self, token_label: str, what: str) -> Any:
        """The cached logged-in session for the token, opened on first use. Caller holds lock."""
        session = self._sessions.get(token_label)
        if session is not None:
            return session
        token = self._token(token_label)
        try:
            session = token.open(user_pin=self._pin.reveal())
        except p11.UserAlreadyLoggedIn:
            session = token.open()  # login state is per application: an earlier session stays
        except _PIN_ERRORS as error:
            raise KmsPermissionError(
                f"{what}: login to token {token_label!r} refused ({type(error).__name__})"
            ) from None
        except (p11.TokenNotPresent, p11.DeviceRemoved, *_RESOURCE_ERRORS) as error:
            raise KmsTransientError(
                f"{what}: token {token_label!r}: {type(error).__name__}"
            ) from None
        self._sessions[token_label] = session
        return session
