"""Key management backends the broker unwraps and wraps data keys through.

``base`` holds the protocol and the typed errors, ``local`` the embedded keyring backend,
``named_keys`` the store of wrapped named keys (pseudonymization keys), and ``registry``
picks a backend for a KEK URI. Cloud backends (gcp-kms, azure-kv, pkcs11) plug into the
registry. Nothing here talks HTTP or knows about attestation.
"""
