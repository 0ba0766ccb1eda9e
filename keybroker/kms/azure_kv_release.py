"""Secure Key Release, the vault side: ask Key Vault to release an exportable key to a TEE.

`release_key_to_tee` calls ``KeyClient.release_key`` with the worker's MAA token as the target.
The vault, not this module, checks the token against the key's release policy; it answers with a
signed JWS in which the key is wrapped to the runtime key named in the token, which the worker
opens inside the TEE with `enclave_workers.skr`. This module never sees the released key, does not
verify MAA tokens or the JWS, and sets no release policy (`keybroker.kms.skr_policy` builds those).
"""

from __future__ import annotations

import time
from collections.abc import Callable

from azure.core.exceptions import HttpResponseError
from azure.keyvault.keys import KeyClient

from keybroker.kms.azure_kv_errors import (
    KeyReleaseDeniedError,
    KmsInputError,
    call_vault,
    translate_azure_error,
)
from keybroker.kms.azure_kv_names import KEY_NAME_PATTERN, KEY_VERSION_PATTERN
from keybroker.kms.base import KmsError, KmsPermissionError
from keybroker.kms.retry import Backoff

__all__ = ["MAX_RELEASE_TOKEN_CHARS", "release_key_to_tee"]

MAX_RELEASE_TOKEN_CHARS = 256 * 1024


def release_key_to_tee(
    key_client: KeyClient,
    name: str,
    target_attestation_token: str,
    *,
    version: str | None = None,
    algorithm: str = "RSA_AES_KEY_WRAP_256",
    nonce: str | None = None,
    backoff: Backoff | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> str:
    """Ask the vault to release key ``name`` to the TEE that the MAA token describes.

    Returns the vault's signed JWS (compact form); the key inside is wrapped to the runtime key
    in the token, so this process cannot read it. The vault, not this function, checks the token
    against the key's release policy. ``algorithm`` is the export ``enc``: RSA_AES_KEY_WRAP_256
    (default), RSA_AES_KEY_WRAP_384 or CKM_RSA_AES_KEY_WRAP.
    """
    if not isinstance(name, str) or not KEY_NAME_PATTERN.match(name):
        raise KmsInputError(f"key name {name!r} must be 1-127 letters, digits or '-'")
    if version is not None and (
        not isinstance(version, str) or not KEY_VERSION_PATTERN.match(version)
    ):
        raise KmsInputError(f"key version {version!r} must be 1-64 letters or digits")
    if not isinstance(target_attestation_token, str) or not 0 < len(target_attestation_token) <= (
        MAX_RELEASE_TOKEN_CHARS
    ):
        raise KmsInputError("target attestation token must be a non-empty string of bounded size")
    if algorithm not in ("RSA_AES_KEY_WRAP_256", "RSA_AES_KEY_WRAP_384", "CKM_RSA_AES_KEY_WRAP"):
        raise KmsInputError(f"export algorithm {algorithm!r} is not supported")
    describe = f"azure-kv release of key {name}" + (f" version {version}" if version else "")

    def call() -> str:
        try:
            result = key_client.release_key(
                name, target_attestation_token, version=version, algorithm=algorithm, nonce=nonce
            )
        except HttpResponseError as error:
            translated = translate_azure_error(error, describe)
            if type(translated) is KmsPermissionError and error.status_code == 403:
                raise KeyReleaseDeniedError(str(translated)) from error
            raise translated from error
        return result.value

    token = call_vault(call, describe, backoff or Backoff(), sleep)
    if not isinstance(token, str) or not 0 < len(token) <= MAX_RELEASE_TOKEN_CHARS:
        raise KmsError(f"{describe}: vault returned no release token of bounded size")
    if token.count(".") != 2:
        raise KmsError(f"{describe}: vault release token is not a compact JWS")
    return token
