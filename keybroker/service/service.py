"""The broker's work: challenge, attest, release, generate and release-named, each audited.

Each operation reads top to bottom: check the session (or nonce) -> claims -> policy ->
KEK residency -> KMS (unwraps through the DEK cache, which single-flights concurrent
unwraps of one key) -> seal the key to the session's TEE key with HPKE. Every grant and
every denial, including malformed requests and bad evidence, is appended to the audit
ledger with its reason; a grant that cannot be recorded is not given (fail closed). Keys
and sessions of simulated TEEs are marked ``simulated`` in the response and the ledger.
Every grant's reply is signed by the broker's identity key (``keybroker.grants``: the
operation, the request, the reply, the session, the time), and ``attest`` also returns a
signed attestation result; ``Checkpointer`` signs ledger checkpoints.

This module knows nothing of HTTP: it raises typed errors that ``errors.error_status``
maps to statuses, and its methods are blocking (run them off the event loop), except
``release_on_loop``: a release whose DEK is cached needs no KMS and no wait but its ledger
commit, which it awaits (``ledger_writer.LedgerWriter``), so it runs on the event loop.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import logging
import os
import time
from collections.abc import Callable, Mapping, MutableMapping
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from pydantic import BaseModel

from envelope.keys import DataKey, KeyReference, WrappedKey, dek_wrap_aad
from envelope.transport import (
    TEE_PUBLIC_KEY_LENGTH,
    TeePublicKey,
    release_info,
    report_data_binding,
    seal_to_tee,
)
from keybroker.attestation.claims import Claims
from keybroker.attestation.verifier import Verifier
from keybroker.client import GENERATE_PURPOSE, NAMED_PURPOSE, RELEASE_PURPOSE
from keybroker.config import BrokerSettings, ConfigError
from keybroker.dek_cache import DekCache
from keybroker.destinations import DestinationError, destination_record
from keybroker.grants import (
    ATTESTATION_RESULT_PAYLOAD_TYPE,
    attestation_result_document,
    sign_grant,
)
from keybroker.identity import BrokerIdentity, IdentityError
from keybroker.kms.base import KeyManagementService, KeyNotFoundError, KmsError
from keybroker.kms.named_keys import NamedKeyStore, named_key_aad, validate_key_name
from keybroker.kms.registry import KmsRegistry
from keybroker.ledger import MAX_DETAILS_BYTES, AuditLedger
from keybroker.ledger_backends import open_ledger
from keybroker.ledger_denials import DenialAggregator, fit_details
from keybroker.policy import ReleasePolicy
from keybroker.service.checkpointer import Checkpointer
from keybroker.service.errors import (
    BadRequestError,
    PolicyDeniedError,
    UnsupportedTeeError,
    error_status,
)
from keybroker.service.ledger_writer import LedgerWriter, Observer
from keybroker.service.schemas import (
    MAX_BOUND_KEY_BYTES,
    MAX_ENDORSEMENT_BYTES,
    MAX_EVIDENCE_BYTES,
    MAX_NONCE_BYTES,
    MAX_WRAPPED_DEK_BYTES,
    AttestRequest,
    AttestResponse,
    ChallengeResponse,
    GenerateRequest,
    GenerateResponse,
    HealthResponse,
    OutputDestination,
    ReleaseNamedRequest,
    ReleaseNamedResponse,
    ReleaseRequest,
    ReleaseResponse,
)
from keybroker.service.sessions import (
    NONCES_FILE,
    ChallengeIssuer,
    ChallengeSecretError,
    NonceStoreError,
    Session,
    SessionTokens,
    SpentNonces,
    load_challenge_secret,
    load_session_key,
)
from keybroker.service.verifiers import build_verifiers

if TYPE_CHECKING:
    from keybroker.ledger_postgres import PostgresLedger
    from keybroker.service.spent_nonces_postgres import PostgresSpentNonces

__all__ = ["KeyBrokerService", "decode_base64"]

logger = logging.getLogger("keybroker.service")
_KEY_PROBE_PURPOSE = "sealbeam/tee-key-probe"
HPKE_KEY_LABEL = "hpke"   # the TEE key's name among the signed result's tee_public_keys

_SignedReply = TypeVar(
    "_SignedReply", AttestResponse, ReleaseResponse, GenerateResponse, ReleaseNamedResponse
)
_UNSIGNED = {"payloadType": "", "payload": "", "signatures": []}


def _load_identity(settings: BrokerSettings) -> BrokerIdentity:
    try:
        return BrokerIdentity.load(settings.identity_path)
    except IdentityError as error:
        raise ConfigError(
            f"{error} (create one with `sealbeam keys identity --state DIR`)"
        ) from None


def decode_base64(field: str, value: str, exact: int | None = None, maximum: int = 0) -> bytes:
    """Strict standard base64 with a byte bound; BadRequestError names the field."""
    try:
        decoded = base64.b64decode(value.encode("ascii"), validate=True)
    except (binascii.Error, ValueError, UnicodeEncodeError):
        raise BadRequestError(f"{field}: not valid base64") from None
    if exact is not None and len(decoded) != exact:
        raise BadRequestError(f"{field}: expected {exact} bytes, got {len(decoded)}")
    if maximum and len(decoded) > maximum:
        raise BadRequestError(f"{field}: {len(decoded)} bytes, over the limit of {maximum}")
    return decoded


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _decode_bound_keys(bound_keys: Mapping[str, str]) -> dict[str, bytes]:
    """The attest request's extra bound keys (label -> key bytes); ``hpke`` is reserved."""
    if HPKE_KEY_LABEL in bound_keys:
        raise BadRequestError(f"bound_keys: label {HPKE_KEY_LABEL!r} is the TEE key's own")
    return {label: decode_base64(f"bound_keys[{label}]", value, maximum=MAX_BOUND_KEY_BYTES)
            for label, value in bound_keys.items()}


def _fingerprint(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _claims_summary(claims: Claims) -> dict[str, object]:
    return {
        "tee": claims.tee,
        "measurement": claims.measurement,
        "debug": claims.debug,
        "simulated": claims.simulated,
        "product": claims.product,
        "signing_key": claims.signing_key,
        "report_version": claims.report_version,
        "tcb": dict(claims.tcb),
    }


class _NotCachedError(Exception):
    """A release on the event loop found its DEK not cached (the KMS would block the loop)."""


def _release_audit(request: ReleaseRequest) -> dict[str, object]:
    """The ledger's details of a release, before the session and the decision add theirs."""
    return {
        "kek": request.kek_uri,
        "kek_version": request.kek_version,
        "region": request.region,
        "producer_id": request.producer_id,
    }


def _session_audit(session: Session) -> dict[str, object]:
    return {
        "session": session.audit_id,
        "simulated": session.simulated,
        "tee": session.claims.tee,
        "measurement": session.claims.measurement,
    }


def _destination(destination: OutputDestination) -> dict[str, object]:
    """The ledger's record of where a generated key's outputs go (400 when malformed)."""
    try:
        return destination_record(destination.sink, destination.location, destination.verified)
    except DestinationError as error:
        raise BadRequestError(str(error)) from None


def _open_spent_nonces(
    settings: BrokerSettings, clock: Callable[[], float]
) -> SpentNonces | PostgresSpentNonces:
    """The spent-nonce set: in the PostgreSQL database of ``ledger_url`` when the ledger is
    shared (one set for every host), else ``<state>/nonces.sqlite`` (one set per host)."""
    if settings.ledger_url:
        from keybroker.service.spent_nonces_postgres import PostgresSpentNonces

        return PostgresSpentNonces(settings.ledger_url, settings.max_pending_nonces, clock)
    return SpentNonces(Path(settings.state_dir) / NONCES_FILE, settings.max_pending_nonces, clock)


class KeyBrokerService:
    """The relying party's operations. Thread-safe; one instance per running broker."""

    def __init__(
        self,
        *,
        settings: BrokerSettings,
        policy: ReleasePolicy,
        kms: KmsRegistry,
        verifiers: Mapping[str, Verifier],
        ledger: AuditLedger | PostgresLedger,
        named_keys: NamedKeyStore,
        clock: Callable[[], float] = time.time,
        dek_cache: DekCache | None = None,
        identity: BrokerIdentity | None = None,
    ) -> None:
        """``identity`` signs every grant; by default the key at ``settings.identity_path``."""
        self._settings = settings
        self._identity = identity if identity is not None else _load_identity(settings)
        self._clock = clock
        self._policy = policy
        self._kms = kms
        self._dek_cache = dek_cache if dek_cache is not None else DekCache(settings.dek_cache)
        self._verifiers = dict(verifiers)
        self._ledger = ledger
        self._decision_observers: list[Observer] = []
        self._writer = LedgerWriter(ledger, on_written=self._observe)
        self._named_keys = named_keys
        try:
            challenge_secret = load_challenge_secret(settings.state_dir)
            session_key = load_session_key(settings.state_dir)
            spent = _open_spent_nonces(settings, clock)
        except (ChallengeSecretError, NonceStoreError) as error:
            raise ConfigError(f"broker state refused: {error}") from None
        self._spent_nonces = spent
        self._nonces = ChallengeIssuer(challenge_secret, settings.nonce_ttl_seconds, spent, clock)
        limits = settings.limits
        self._anonymous_denials = DenialAggregator(
            self._record,
            interval_seconds=limits.denial_interval_seconds,
            in_full=limits.denials_in_full,
            max_sources=limits.denial_max_sources,
            details_cap=limits.anonymous_denial_bytes,
            clock=clock,
        )
        self._anonymous_denials.start()
        self._sessions = SessionTokens(
            session_key, settings.session_ttl_seconds, settings.max_sessions, clock
        )
        self._checkpointer = Checkpointer(
            ledger,
            self._identity,
            settings.checkpoint_file,
            settings.checkpoint_interval_seconds,
            clock,
        )
        self._checkpointer.start()

    @classmethod
    def from_settings(
        cls,
        settings: BrokerSettings,
        *,
        clock: Callable[[], float] = time.time,
        verifiers: Mapping[str, Verifier] | None = None,
        kms_backends: Mapping[str, KeyManagementService] | None = None,
    ) -> KeyBrokerService:
        """Load policy, keys and ledger named by ``settings``; record the start in the ledger.

        Refuses to start (ConfigError) when a region's KEK has no configured backend or, on
        Cloud KMS, lives in a location its region does not allow. ``kms_backends`` injects
        backend instances by scheme (tests bind them to fake servers).
        """
        identity = _load_identity(settings)  # before anything is opened: no key, no broker
        kms = KmsRegistry(settings, backends=kms_backends)
        try:
            kms.check_region_keks(settings.region_keks)
        except KmsError as error:
            raise ConfigError(f"broker settings refused: {error}") from None
        policy = ReleasePolicy.load(settings.policy_path)
        named_keys = (
            NamedKeyStore.open(settings.named_keys_path)
            if Path(settings.named_keys_path).exists()
            else NamedKeyStore(settings.named_keys_path)
        )
        built_verifiers = (
            dict(verifiers)
            if verifiers is not None
            else build_verifiers(settings, policy, clock=clock)
        )
        ledger = open_ledger(settings, clock=clock)
        service = cls(
            settings=settings,
            policy=policy,
            kms=kms,
            verifiers=built_verifiers,
            ledger=ledger,
            named_keys=named_keys,
            clock=clock,
            identity=identity,
        )
        ledger.append(
            "broker-start",
            "info",
            {
                "policy_sha256": _fingerprint(Path(settings.policy_path).read_bytes()),
                "allow_simulated": policy.allow_simulated,
                "rules": [rule.name for rule in policy.rules],
                "tees": sorted(built_verifiers),
                "regions": sorted(settings.region_keks),
                "region_keks": dict(sorted(settings.region_keks.items())),
                "dek_cache": settings.dek_cache.to_mapping(),
                "broker_key_id": identity.key_id,
                "pid": os.getpid(),
            },
        )
        return service

    @property
    def ledger(self) -> AuditLedger | PostgresLedger:
        return self._ledger

    @property
    def identity(self) -> BrokerIdentity:
        return self._identity

    @property
    def policy(self) -> ReleasePolicy:
        return self._policy

    @property
    def dek_cache(self) -> DekCache:
        return self._dek_cache

    def observe_decisions(self, observer: Observer) -> None:
        """Call ``observer(event, decision, details)`` for each entry recorded from now on,
        after it is written (the broker's decision metrics)."""
        self._decision_observers.append(observer)

    def close(self) -> None:
        self._dek_cache.clear()
        self._anonymous_denials.close()
        self._writer.close()
        self._kms.close()
        self._checkpointer.close()
        self._ledger.close()
        self._spent_nonces.close()

    def ledger_head(self) -> dict[str, object]:
        """The ledger head now, signed by the broker's identity key (a checkpoint)."""
        return self._checkpointer.current()

    def write_checkpoint(self, reason: str = "request") -> dict[str, object] | None:
        """Append a checkpoint to the checkpoints file now (None: the head did not move)."""
        return self._checkpointer.write(reason)

    # -- operations ------------------------------------------------------------------------

    def health(self) -> HealthResponse:
        entries, _head = self._ledger.head()
        return HealthResponse(status="ok", ledger_entries=entries)

    def challenge(self) -> ChallengeResponse:
        challenge = self._nonces.issue()
        return ChallengeResponse(nonce=_b64(challenge.nonce), expires_at=challenge.expires_at)

    def flush_denials(self) -> None:
        """Write the counted anonymous denials now (the flusher does so every interval)."""
        self._anonymous_denials.flush()

    def attest(self, request: AttestRequest, *, source: str = "unknown") -> AttestResponse:
        """Check the nonce, verify the evidence bound to (nonce, TEE key), spend the nonce,
        open a session. ``source`` is the caller's address, for the ledger."""
        audit: dict[str, object] = {"tee": request.tee}
        verified = False
        try:
            nonce = decode_base64("nonce", request.nonce, maximum=MAX_NONCE_BYTES)
            tee_public_key = decode_base64(
                "tee_public_key", request.tee_public_key, exact=TEE_PUBLIC_KEY_LENGTH
            )
            audit["tee_key_sha256"] = _fingerprint(tee_public_key)
            bound_keys = _decode_bound_keys(request.bound_keys)
            evidence = decode_base64("evidence", request.evidence, maximum=MAX_EVIDENCE_BYTES)
            endorsements = {
                name: decode_base64(f"endorsements[{name}]", value, maximum=MAX_ENDORSEMENT_BYTES)
                for name, value in request.endorsements.items()
            }
            self._nonces.check(nonce)
            seal_to_tee(TeePublicKey.from_bytes(tee_public_key), bytes(32),
                        release_info(_KEY_PROBE_PURPOSE, "probe"))
            verifier = self._verifiers.get(request.tee)
            if verifier is None:
                raise UnsupportedTeeError(
                    f"tee: no verifier for {request.tee!r} "
                    f"(configured: {', '.join(sorted(self._verifiers))})"
                )
            expected_report_data = report_data_binding(nonce, tee_public_key,
                                                       bound_keys=bound_keys)
            claims = verifier.evaluate(evidence, expected_report_data, endorsements=endorsements)
            verified = True
            audit["claims"] = _claims_summary(claims)
            audit["simulated"] = claims.simulated
            self._nonces.mark_used(nonce)
            decision = self._policy.evaluate_attestation(claims)
            if not decision.allowed:
                raise PolicyDeniedError(decision.reason)
            session = self._sessions.open(tee_public_key, claims)
        except Exception as error:
            self._record_denial("attest", audit, error, source=source, anonymous=not verified)
            raise
        try:
            self._record(
                "attest", "granted", {**audit, "rule": decision.rule, "session": session.audit_id}
            )
        except BaseException:
            self._sessions.discard(session.session_id)
            raise
        claims_json = claims.to_json()
        result = self._identity.sign(
            ATTESTATION_RESULT_PAYLOAD_TYPE,
            attestation_result_document(
                broker_key_id=self._identity.key_id,
                session=session.audit_id,
                tee_public_keys={**bound_keys, HPKE_KEY_LABEL: tee_public_key},
                claims=claims_json,
                policy_rule=decision.rule or "",
                simulated=claims.simulated,
                nonce=nonce,
                issued_at=self._clock(),
                expires_at=session.expires_at,
            ),
        )
        return self._signed(
            AttestResponse,
            "attest",
            request,
            session.audit_id,
            session_id=session.session_id,
            expires_at=float(session.expires_at),
            simulated=claims.simulated,
            claims=claims_json,
            attestation_result=result,
        )

    def release(self, request: ReleaseRequest, *, source: str = "unknown") -> ReleaseResponse:
        """Unwrap a DEK the policy lets this session have and seal it to the TEE key."""
        audit = _release_audit(request)
        try:
            granted = self._grant_release(request, audit, cached_only=False)
        except Exception as error:
            self._record_denial("release", audit, error, source=source,
                                anonymous="session" not in audit)
            raise
        self._record("release", "granted", audit)
        return granted

    async def release_on_loop(self, request: ReleaseRequest) -> ReleaseResponse | None:
        """``release`` on the event loop when nothing in it blocks: the DEK is cached and
        the release is granted; the grant is returned once its ledger entry is durable.

        None, with nothing recorded and nothing released, when it cannot be done so (the DEK
        is not cached, or the release is refused): ``release`` on a thread then decides it
        again and records the outcome, a denial included. The only side effect of such a
        first try is a DEK cache use, when sealing to the TEE key failed after it.
        """
        audit = _release_audit(request)
        try:
            granted = self._grant_release(request, audit, cached_only=True)
        except Exception:  # decided again, and recorded, on a thread
            return None
        await self._writer.append("release", "granted", audit)
        return granted

    def _grant_release(
        self,
        request: ReleaseRequest,
        audit: MutableMapping[str, object],
        *,
        cached_only: bool,
    ) -> ReleaseResponse:
        """The signed release reply; ``audit`` gathers the ledger's details as it goes.

        ``cached_only``: the DEK from the cache or not at all (``_NotCachedError``), never
        from the KMS.
        """
        session = self._sessions.get(request.session_id)
        audit.update(_session_audit(session))
        ciphertext = decode_base64(
            "wrapped_dek", request.wrapped_dek, maximum=MAX_WRAPPED_DEK_BYTES
        )
        wrapped = WrappedKey(KeyReference(request.kek_uri, request.kek_version), ciphertext)
        key_id = wrapped.key_id
        audit["key_id"] = key_id
        decision = self._policy.evaluate_release(
            session.claims, request.kek_uri, request.region, request.producer_id
        )
        if not decision.allowed:
            raise PolicyDeniedError(decision.reason)
        self._kms.check_residency(request.kek_uri, request.region)
        aad = dek_wrap_aad(request.region, request.producer_id)
        if cached_only:
            unwrapped = self._dek_cache.cached(wrapped, aad)
            if unwrapped is None:
                raise _NotCachedError(key_id)
        else:
            unwrapped = self._dek_cache.unwrap(wrapped, aad, self._kms.unwrap)
        audit["dek_source"] = unwrapped.source
        dek = DataKey(unwrapped.secret)
        sealed = seal_to_tee(
            session.tee_key, dek.secret_bytes(), release_info(RELEASE_PURPOSE, key_id)
        )
        reply = self._signed(
            ReleaseResponse,
            "release",
            request,
            session.audit_id,
            sealed_dek=_b64(sealed),
            key_id=key_id,
            simulated=session.simulated,
        )
        audit["rule"] = decision.rule
        return reply

    def generate(self, request: GenerateRequest, *, source: str = "unknown") -> GenerateResponse:
        """A fresh DEK for a region: wrapped under the region's KEK and sealed to the TEE."""
        audit: dict[str, object] = {"region": request.region, "producer_id": request.producer_id}
        if request.spec_fingerprint is not None:
            audit["spec_fingerprint"] = request.spec_fingerprint.lower()
        if request.purpose is not None:
            audit["purpose"] = request.purpose
        session: Session | None = None
        try:
            session = self._sessions.get(request.session_id)
            audit.update(_session_audit(session))
            if request.destination is not None:
                audit["destination"] = _destination(request.destination)
            kek_uri = self._settings.region_keks.get(request.region)
            if kek_uri is None:
                raise KeyNotFoundError(f"no KEK configured for region {request.region!r}")
            audit["kek"] = kek_uri
            decision = self._policy.evaluate_release(
                session.claims, kek_uri, request.region, request.producer_id
            )
            if not decision.allowed:
                raise PolicyDeniedError(decision.reason)
            self._kms.check_residency(kek_uri, request.region)
            dek = DataKey.generate()
            aad = dek_wrap_aad(request.region, request.producer_id)
            wrapped = self._kms.wrap(kek_uri, dek.secret_bytes(), aad)
            audit["kek_version"] = wrapped.kek.version
            key_id = wrapped.key_id
            audit["key_id"] = key_id
            sealed = seal_to_tee(
                session.tee_key, dek.secret_bytes(), release_info(GENERATE_PURPOSE, key_id)
            )
        except Exception as error:
            self._record_denial("generate", audit, error, source=source, anonymous=session is None)
            raise
        self._record("generate", "granted", {**audit, "rule": decision.rule})
        return self._signed(
            GenerateResponse,
            "generate",
            request,
            session.audit_id,
            sealed_dek=_b64(sealed),
            kek_uri=wrapped.kek.uri,
            kek_version=wrapped.kek.version,
            wrapped_dek=_b64(wrapped.ciphertext),
            key_id=key_id,
            simulated=session.simulated,
        )

    def release_named(
        self, request: ReleaseNamedRequest, *, source: str = "unknown"
    ) -> ReleaseNamedResponse:
        """A named key (e.g. ``pseudonym/acme``) the policy lets this session have."""
        audit: dict[str, object] = {"name": request.name}
        session: Session | None = None
        try:
            session = self._sessions.get(request.session_id)
            audit.update(_session_audit(session))
            name = validate_key_name(request.name)
            decision = self._policy.evaluate_named(session.claims, name)
            if not decision.allowed:
                raise PolicyDeniedError(decision.reason)
            wrapped = self._named_keys.wrapped_key(name)
            audit["kek"] = wrapped.kek.uri
            audit["kek_version"] = wrapped.kek.version
            unwrapped = self._dek_cache.unwrap(wrapped, named_key_aad(name), self._kms.unwrap)
            audit["dek_source"] = unwrapped.source
            secret = unwrapped.secret
            sealed = seal_to_tee(session.tee_key, secret, release_info(NAMED_PURPOSE, name))
        except Exception as error:
            self._record_denial(
                "release-named", audit, error, source=source, anonymous=session is None
            )
            raise
        self._record("release-named", "granted", {**audit, "rule": decision.rule})
        return self._signed(
            ReleaseNamedResponse,
            "release-named",
            request,
            session.audit_id,
            sealed_key=_b64(sealed),
            name=name,
            simulated=session.simulated,
        )

    # -- authentication ----------------------------------------------------------------------

    def _signed(
        self,
        model: type[_SignedReply],
        operation: str,
        request: BaseModel,
        session: str,
        **fields: object,
    ) -> _SignedReply:
        """The reply ``model(**fields)`` with the broker's grant over (request, reply).

        The reply is hashed in its JSON form (``model_dump(mode="json")``), which is what the
        client receives and re-encodes, so types the model coerces cannot make them differ.
        """
        draft = model(**fields, grant=_UNSIGNED).model_dump(mode="json", exclude={"grant"})
        grant = sign_grant(
            self._identity,
            operation,
            request.model_dump(mode="json", exclude_unset=True),
            draft,
            session,
            self._clock(),
        )
        return model(**fields, grant=grant)

    # -- audit -----------------------------------------------------------------------------

    def _record(self, event: str, decision: str, details: Mapping[str, object]) -> None:
        """Append a decision to the ledger (durable when this returns), then observe it."""
        self._ledger.append(event, decision, details)
        self._observe(event, decision, details)

    def _observe(self, event: str, decision: str, details: Mapping[str, object]) -> None:
        if decision in ("granted", "denied"):
            for observer in self._decision_observers:
                observer(event, decision, details)

    def _record_denial(
        self,
        event: str,
        audit: Mapping[str, object],
        error: Exception,
        *,
        source: str,
        anonymous: bool,
    ) -> None:
        """Write the denial; a ledger failure here is logged and the denial still stands.

        Details over the cap are cut, never dropped (``fit_details``). A denial of a caller
        with no verified evidence and no session (``anonymous``) goes through the aggregator,
        which writes a few per source and interval in full and counts the rest.
        """
        status = error_status(error)
        if status.error == "internal_error":
            reason = f"unexpected {type(error).__name__}"
            logger.error("internal error during %s: %s", event, type(error).__name__)
        else:
            reason = str(error) or status.error
        details = {**audit, "status": status.status, "error": status.error, "reason": reason}
        try:
            if anonymous:
                self._anonymous_denials.record(event, source, details)
            else:
                details["source"] = source
                self._record(event, "denied", fit_details(details, MAX_DETAILS_BYTES))
        except Exception as ledger_error:
            logger.error("could not record a %s denial in the ledger: %s", event, ledger_error)
