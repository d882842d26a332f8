"""Login for the review page: the shared password's hash, signed session cookies, CSRF tokens.

The password hash (``BONESCAN_REVIEW_PASSWORD_HASH``) is one line
``scrypt$<n>$<r>$<p>$<salt>$<hash>``: :func:`hashlib.scrypt` with cost ``n`` (a power of two),
block size ``r`` and parallelism ``p``; salt (16 bytes) and hash (32 bytes) in unpadded
URL-safe base64. ``bonescan review-server hash-password`` makes one.

A session is a cookie ``<payload>.<mac>``: the payload is URL-safe base64 JSON (user name,
a random session id, issue time), the mac HMAC-SHA256 over it with a secret drawn at random
when the server starts (a restart logs everyone out). The CSRF token of a form is
HMAC-SHA256 over the session id with the same secret, so it is valid for that session only.
Every comparison of secrets is :func:`hmac.compare_digest`.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

SCHEME = "scrypt"
# OWASP password storage cheat sheet: scrypt N=2^17, r=8, p=1 (128 MiB); 2^15 keeps a login
# fast on a 2-core host with the review server beside the worker, still far above MD5/SHA.
DEFAULT_N = 2**15
DEFAULT_R = 8
DEFAULT_P = 1
SALT_BYTES = 16
HASH_BYTES = 32
MAX_N = 2**20  # 1 GiB with r=8: refuse a hash that would exhaust memory at each login
SESSION_MAX_AGE_S = 12 * 3600  # one working day
MAX_USER_LENGTH = 64


class PasswordHashError(ValueError):
    """A ``BONESCAN_REVIEW_PASSWORD_HASH`` that is not ``scrypt$n$r$p$salt$hash``."""


def _b64encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _b64decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _scrypt(password: str, salt: bytes, n: int, r: int, p: int) -> bytes:
    # hashlib refuses more than maxmem; scrypt needs about 128·r·(n + p) bytes.
    maxmem = 128 * r * (n + p) + (16 << 20)
    return hashlib.scrypt(
        password.encode("utf-8"), salt=salt, n=n, r=r, p=p, maxmem=maxmem, dklen=HASH_BYTES
    )


@dataclass(frozen=True)
class PasswordHash:
    """A parsed ``scrypt$n$r$p$salt$hash`` line."""

    n: int
    r: int
    p: int
    salt: bytes
    digest: bytes

    @classmethod
    def parse(cls, text: str) -> PasswordHash:
        """Read a hash line; :class:`PasswordHashError` says what is wrong with it."""
        parts = text.strip().split("$")
        if len(parts) != 6 or parts[0] != SCHEME:
            raise PasswordHashError(
                "expected scrypt$<n>$<r>$<p>$<salt>$<hash> "
                "(make one with `bonescan review-server hash-password`)"
            )
        try:
            n, r, p = (int(part) for part in parts[1:4])
            salt, digest = _b64decode(parts[4]), _b64decode(parts[5])
        except (ValueError, binascii.Error):
            raise PasswordHashError("n, r and p must be integers, salt and hash base64") from None
        if n < 2 or n > MAX_N or n & (n - 1) or not 1 <= r <= 32 or not 1 <= p <= 16:
            raise PasswordHashError(
                f"n must be a power of two up to {MAX_N}, r 1–32 and p 1–16 (got {n}, {r}, {p})"
            )
        if len(salt) < 8 or len(digest) != HASH_BYTES:
            raise PasswordHashError(f"salt must be 8+ bytes and hash {HASH_BYTES} bytes")
        return cls(n=n, r=r, p=p, salt=salt, digest=digest)

    def verify(self, password: str) -> bool:
        """True when ``password`` is the one this hash was made from (constant-time compare)."""
        candidate = _scrypt(password, self.salt, self.n, self.r, self.p)
        return hmac.compare_digest(candidate, self.digest)

    def __str__(self) -> str:
        salt, digest = _b64encode(self.salt), _b64encode(self.digest)
        return "$".join([SCHEME, str(self.n), str(self.r), str(self.p), salt, digest])


def hash_password(
    password: str, *, n: int = DEFAULT_N, r: int = DEFAULT_R, p: int = DEFAULT_P
) -> str:
    """A ``scrypt$n$r$p$salt$hash`` line for ``password`` with a fresh random salt."""
    if not password:
        raise ValueError("the password must not be empty")
    salt = secrets.token_bytes(SALT_BYTES)
    return str(PasswordHash(n, r, p, salt, _scrypt(password, salt, n, r, p)))


def clean_user_name(text: str) -> str | None:
    """The reviewer name typed at login, stripped; None when empty, too long or unprintable."""
    name = " ".join(text.split())
    if not name or len(name) > MAX_USER_LENGTH or not name.isprintable():
        return None
    return name


@dataclass(frozen=True)
class Session:
    """A logged-in reviewer: the name stored with reviews and the session's random id."""

    user: str
    session_id: str
    issued_at: int


class SessionSigner:
    """Issues and checks session cookies and their CSRF tokens with one secret."""

    def __init__(
        self,
        secret: bytes | None = None,
        *,
        max_age_s: int = SESSION_MAX_AGE_S,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._secret = secret or secrets.token_bytes(32)
        self._max_age_s = max_age_s
        self._clock = clock
        self._ended: set[str] = set()  # logged-out session ids (this process's lifetime)
        self._lock = threading.Lock()

    def _mac(self, purpose: bytes, data: bytes) -> str:
        return _b64encode(hmac.new(self._secret, purpose + b"\0" + data, hashlib.sha256).digest())

    def issue(self, user: str) -> tuple[str, Session]:
        """A new session for ``user`` and its cookie value."""
        session = Session(user, secrets.token_urlsafe(18), int(self._clock()))
        payload = _b64encode(
            json.dumps(
                {"u": session.user, "s": session.session_id, "t": session.issued_at},
                separators=(",", ":"),
            ).encode("utf-8")
        )
        return f"{payload}.{self._mac(b'session', payload.encode('ascii'))}", session

    def read(self, cookie: str | None) -> Session | None:
        """The session a cookie value carries; None when absent, forged, expired or ended."""
        if not cookie or "." not in cookie:
            return None
        payload, _, mac = cookie.partition(".")
        expected = self._mac(b"session", payload.encode("utf-8", "replace"))
        if not hmac.compare_digest(mac.encode("utf-8", "replace"), expected.encode("ascii")):
            return None
        try:
            data = json.loads(_b64decode(payload))
            session = Session(str(data["u"]), str(data["s"]), int(data["t"]))
        except (ValueError, KeyError, TypeError, binascii.Error):
            return None
        age = self._clock() - session.issued_at
        if age < -60 or age > self._max_age_s:
            return None
        with self._lock:
            if session.session_id in self._ended:
                return None
        return session

    def end(self, session: Session) -> None:
        """Log ``session`` out: its cookie is refused from now on, even if replayed."""
        with self._lock:
            self._ended.add(session.session_id)

    def csrf_token(self, session: Session) -> str:
        """The token that forms of ``session`` carry."""
        return self._mac(b"csrf", session.session_id.encode("utf-8"))

    def csrf_ok(self, session: Session, token: str | None) -> bool:
        """True when ``token`` is ``session``'s CSRF token."""
        if token is None:
            return False
        expected = self.csrf_token(session).encode("ascii")
        return hmac.compare_digest(token.encode("utf-8", "replace"), expected)
