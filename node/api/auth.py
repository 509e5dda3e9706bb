"""Who is calling the HTTP API, and what they may do.

Credentials come from ``http.auth`` in the config: bearer tokens (``mode: token``) or user names with
passwords (``mode: basic``). Each has a role:

* viewer   — read the JSON API and the worklist page
* operator — viewer, plus re-run a study, retry a delivery, upload over STOW-RS
* sender   — STOW-RS only (a PACS pushing studies): the HTTP counterpart of the DICOM allow-list

In token mode a browser cannot add an Authorization header to a page load, so ``POST /login`` trades
a token for a signed session cookie (HttpOnly, SameSite=Strict; Secure over HTTPS). The config holds
hashes only (node/api/secret_hash.py): a token's SHA-256 digest, compared in constant time with every
configured digest; a password's argon2id hash, verified for the named user. Secrets are never logged;
a refused request is logged with its path and the client address only.
"""

from __future__ import annotations

import base64
import binascii
import enum
import hashlib
import hmac
import ipaddress
import secrets
import threading
import time
from dataclasses import dataclass

import structlog
from fastapi import HTTPException, Request

from node.api.secret_hash import dummy_password_hash, token_digest, verify_password
from node.config import HttpConfig

log = structlog.get_logger(__name__)

SESSION_COOKIE = "ainode_session"
SESSION_LIFETIME_S = 12 * 3600
# State-changing actions must carry this header: a cross-site form cannot set it (it forces a CORS
# preflight, which the node never grants), so cached Basic credentials or the session cookie cannot
# be used against it from another site.
ACTION_HEADER = "X-AINode-Action"


class Permission(enum.Enum):
    READ = "read"
    ACT = "act"
    STOW = "stow"


ROLE_PERMISSIONS: dict[str, frozenset[Permission]] = {
    "viewer": frozenset({Permission.READ}),
    "operator": frozenset({Permission.READ, Permission.ACT, Permission.STOW}),
    "sender": frozenset({Permission.STOW}),
}


@dataclass(frozen=True)
class Principal:
    name: str
    role: str
    ae_title: str  # calling AE recorded for what this principal stores over STOW-RS

    def may(self, permission: Permission) -> bool:
        return permission in ROLE_PERMISSIONS[self.role]


@dataclass(frozen=True)
class _Credential:
    principal: Principal
    secret_hash: str  # sha256:HEX (token mode) or $argon2id$... (basic mode)

    @property
    def token_digest(self) -> bytes:
        return bytes.fromhex(self.secret_hash.removeprefix("sha256:"))


def is_loopback(host: str | None) -> bool:
    if not host:
        return False
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


# Basic auth sends the password with every request (the worklist polls, the page loads its scripts): an argon2
# verification (64 MiB; 0.27 s measured on a busy 2-core machine) each time would make every page load slow
# (a worklist load is five requests) and let a few clients exhaust memory. A verified (user, password) is
# remembered for a while under an HMAC of both with a per-process key, so no password is kept in memory and a
# changed password misses the cache.
VERIFIED_CACHE_S = 300.0
VERIFIED_CACHE_ENTRIES = 1024


class Authenticator:
    def __init__(self, config: HttpConfig) -> None:
        self.mode = config.auth.mode
        self.open_health_on_loopback = config.auth.open_health_on_loopback
        self._credentials: list[_Credential] = []
        for c in config.auth.credentials:  # unique names, one hash form per mode: checked by the config
            principal = Principal(c.name, c.role, c.ae_title or config.stow_calling_ae)
            self._credentials.append(_Credential(principal, c.secret_hash.get_secret_value()))
        # Per process: sessions end when the node restarts, which is acceptable for a worklist.
        self._session_key = secrets.token_bytes(32)
        self._verified: dict[bytes, tuple[float, Principal]] = {}
        self._verified_lock = threading.Lock()

    # --- checking a request ----------------------------------------------------------------------
    def authenticate(self, request: Request) -> Principal | None:
        header = request.headers.get("authorization", "")
        scheme, _, value = header.partition(" ")
        if header:
            if self.mode == "token" and scheme.lower() == "bearer":
                return self._by_token(value.strip())
            if self.mode == "basic" and scheme.lower() == "basic":
                return self._by_basic(value.strip())
            return None
        cookie = request.cookies.get(SESSION_COOKIE)
        return self.verify_session(cookie) if cookie else None

    def _by_token(self, token: str) -> Principal | None:
        digest = bytes.fromhex(token_digest(token).removeprefix("sha256:"))
        found: Principal | None = None
        # Every credential is compared (constant time, no early exit) so timing tells nothing.
        for cred in self._credentials:
            if hmac.compare_digest(cred.token_digest, digest):
                found = cred.principal
        return found

    def _by_basic(self, value: str) -> Principal | None:
        try:
            decoded = base64.b64decode(value, validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            return None
        user, sep, password = decoded.partition(":")
        if not sep:
            return None
        return self._by_password(user, password)

    def _by_password(self, name: str, password: str) -> Principal | None:
        key = hmac.new(self._session_key, f"{name}\0{password}".encode(), hashlib.sha256).digest()
        now = time.monotonic()
        with self._verified_lock:
            cached = self._verified.get(key)
        if cached is not None and cached[0] > now:
            return cached[1]
        cred = next(
            (c for c in self._credentials if hmac.compare_digest(c.principal.name.encode(), name.encode())), None
        )
        # An unknown name costs one verification too, so timing does not tell which names exist.
        ok = verify_password(cred.secret_hash if cred else dummy_password_hash(), password)
        if not ok or cred is None:
            return None
        with self._verified_lock:
            if len(self._verified) >= VERIFIED_CACHE_ENTRIES:
                self._verified = {k: v for k, v in self._verified.items() if v[0] > now}
                if len(self._verified) >= VERIFIED_CACHE_ENTRIES:
                    self._verified.clear()
            self._verified[key] = (now + VERIFIED_CACHE_S, cred.principal)
        return cred.principal

    def login(self, token_or_password: str, name: str | None = None) -> Principal | None:
        """The login form: a token (token mode) or a user name and password (basic mode)."""
        if self.mode == "basic":
            return self._by_password(name or "", token_or_password)
        return self._by_token(token_or_password)

    # --- session cookie (signed, stateless) -----------------------------------------------------------
    def _sign(self, name: str, expires: int) -> str:
        cred = next((c for c in self._credentials if c.principal.name == name), None)
        # The credential's secret is part of the signed message: rotating a secret ends its sessions.
        secret = cred.secret_hash.encode() if cred else b""
        mac = hmac.new(self._session_key, f"{name}|{expires}|".encode() + secret, hashlib.sha256)
        return mac.hexdigest()

    def session_cookie(self, principal: Principal) -> str:
        expires = int(time.time()) + SESSION_LIFETIME_S
        return f"{principal.name}|{expires}|{self._sign(principal.name, expires)}"

    def verify_session(self, cookie: str) -> Principal | None:
        parts = cookie.split("|")
        if len(parts) != 3 or not parts[1].isdigit():
            return None
        name, expires, mac = parts[0], int(parts[1]), parts[2]
        if expires < time.time() or not hmac.compare_digest(self._sign(name, expires), mac):
            return None
        cred = next((c for c in self._credentials if c.principal.name == name), None)
        return cred.principal if cred else None

    # --- refusing ----------------------------------------------------------------------------------
    def challenge_headers(self) -> dict[str, str]:
        if self.mode == "basic":
            return {"WWW-Authenticate": 'Basic realm="ainode", charset="UTF-8"'}
        return {"WWW-Authenticate": 'Bearer realm="ainode"'}

    def require(self, request: Request, permission: Permission) -> Principal:
        principal = self.authenticate(request)
        client = request.client.host if request.client else None
        if principal is None:
            log.warning("http_unauthenticated", path=request.url.path, client=client)
            raise HTTPException(401, "credentials required", headers=self.challenge_headers())
        if not principal.may(permission):
            log.warning(
                "http_forbidden", path=request.url.path, client=client, user=principal.name, role=principal.role
            )
            raise HTTPException(403, f"role {principal.role!r} may not {permission.value}")
        if permission is Permission.ACT and request.headers.get(ACTION_HEADER) != "1":
            raise HTTPException(403, f"actions must carry the header {ACTION_HEADER}: 1")
        return principal

    def require_health(self, request: Request) -> None:
        """Health and metrics: open to loopback when configured, else any reader."""
        client = request.client.host if request.client else None
        if self.open_health_on_loopback and is_loopback(client):
            return
        self.require(request, Permission.READ)
