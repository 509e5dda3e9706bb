"""The HTTP API's secrets as the config holds them: hashes made by `ainode hash-secret`, checked here.

Two forms (why two: see the comment above ``HttpCredential`` in node/config):

* ``$argon2id$...`` — a password (auth.mode basic), argon2id through argon2-cffi with its default
  RFC 9106 parameters (64 MiB, 3 passes, 4 lanes), salted per hash;
* ``sha256:HEX`` — a bearer token (auth.mode token), its SHA-256 digest.
"""

from __future__ import annotations

import functools
import hashlib
import secrets

import argon2

MIN_PASSWORD_CHARS = 8
# A token is only as strong as it is random: 20 characters is the floor, generated ones are 43 (256 bits).
MIN_TOKEN_CHARS = 20

_hasher = argon2.PasswordHasher()


def hash_password(password: str) -> str:
    if len(password) < MIN_PASSWORD_CHARS:
        raise ValueError(f"a password must be at least {MIN_PASSWORD_CHARS} characters")
    return _hasher.hash(password)


def token_digest(token: str) -> str:
    return "sha256:" + hashlib.sha256(token.encode("utf-8")).hexdigest()


def hash_token(token: str) -> str:
    if len(token) < MIN_TOKEN_CHARS:
        raise ValueError(f"a token must be at least {MIN_TOKEN_CHARS} characters (--generate makes one)")
    return token_digest(token)


def generate_token() -> str:
    return secrets.token_urlsafe(32)


def verify_password(password_hash: str, password: str) -> bool:
    try:
        return _hasher.verify(password_hash, password)
    except (argon2.exceptions.VerificationError, argon2.exceptions.InvalidHashError):
        return False


@functools.cache
def dummy_password_hash() -> str:
    """Verified against when a user name is unknown: a refusal then takes as long whether or not the name exists."""
    return _hasher.hash(secrets.token_urlsafe(16))
