"""Console sessions: a signed, expiring cookie that stands for an API key, and its CSRF token.

Logging in to ``/console`` presents a key once; the :class:`~gateway.services.auth.KeyRing`
checks it and the browser gets a cookie ``v1.<name>.<expires>.<nonce>.<mac>``. The MAC is
HMAC-SHA256 under the server's session secret over the key's name, the expiry, a random nonce
and the key's SHA-256 digest. The key itself is in neither the cookie nor any server store
(the server keeps only digests, as ever), so a copied cookie is worth a session, not a key: it
stops working at its expiry, and at once when the key is revoked, since every request looks
the name and digest up among the live keys.

Sessions are stateless: any replica holding the same secret accepts them. The secret is the
env variable ``console.session_secret_env`` names; without one, a random secret is created in
``data_dir`` on first start (shared by the workers of one host, not by replicas).

Cookie-authenticated requests that change something must also carry the session's CSRF token
(``X-CSRF-Token``, or the ``csrf`` field of a form), an HMAC of the session under the same
secret: a page on another site can make the browser send the cookie (SameSite=Strict already
stops that in current browsers), but it cannot read the token.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import hmac
import os
import secrets
import time
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy.ext.asyncio import AsyncEngine

from gateway.config import ApiKey, Settings
from gateway.db.keys import KeyStoreError, active_keys
from gateway.errors import AuthenticationFailed, ConfigError, PermissionDenied

SESSION_COOKIE = "sgw_console"
CSRF_HEADER = "x-csrf-token"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
SECRET_FILE = "console-session.key"  # noqa: S105  (a file name, not a secret)
_VERSION = "v1"
_MIN_SECRET_CHARS = 32


@dataclass(frozen=True)
class Session:
    key: ApiKey
    token: str
    expires_at: int


def check_scopes(key: ApiKey, scopes: Collection[str]) -> ApiKey:
    """The key, if it has one of ``scopes``; else 403 (the KeyRing's words)."""
    if key.scopes.isdisjoint(scopes):
        needed = " or ".join(f"'{scope}'" for scope in scopes)
        raise PermissionDenied(
            f"The API key '{key.name}' lacks the scope this endpoint needs: {needed}."
        )
    return key


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class Sessions:
    def __init__(self, secret: bytes, ttl_s: float, config_keys: tuple[ApiKey, ...] = ()) -> None:
        if len(secret) < _MIN_SECRET_CHARS:
            raise ConfigError(
                f"the console's session secret is {len(secret)} characters; use at least "
                f"{_MIN_SECRET_CHARS} random ones"
            )
        self._secret = secret
        self.ttl_s = ttl_s
        self._config_keys = config_keys

    def _mac(self, *parts: bytes) -> bytes:
        return hmac.new(self._secret, b"\x00".join(parts), hashlib.sha256).digest()

    def issue(self, key: ApiKey, now: float | None = None) -> Session:
        """A new session for a key the KeyRing has just authenticated."""
        expires = int((time.time() if now is None else now) + self.ttl_s)
        name = _b64(key.name.encode())
        nonce = secrets.token_urlsafe(16)
        mac = self._mac(
            b"session", name.encode(), str(expires).encode(), nonce.encode(), key.sha256
        )
        return Session(key, f"{_VERSION}.{name}.{expires}.{nonce}.{_b64(mac)}", expires)

    async def resolve(self, token: str, engine: AsyncEngine, now: float | None = None) -> Session:
        """The session a cookie holds; 401 when it is malformed, forged, expired or its key
        is no longer live."""
        parts = token.split(".")
        if len(parts) != 5 or parts[0] != _VERSION:
            raise AuthenticationFailed("The console session is not valid; log in again.")
        _, name_b64, expires_text, nonce, mac_b64 = parts
        try:
            name = _unb64(name_b64).decode()
            expires = int(expires_text)
            presented_mac = _unb64(mac_b64)
        except (binascii.Error, UnicodeDecodeError, ValueError):
            raise AuthenticationFailed("The console session is not valid; log in again.") from None
        if expires <= (time.time() if now is None else now):
            raise AuthenticationFailed("The console session has expired; log in again.")
        for key in await self._live_keys(name, engine):
            expected = self._mac(
                b"session", name_b64.encode(), expires_text.encode(), nonce.encode(), key.sha256
            )
            if hmac.compare_digest(expected, presented_mac):
                return Session(key, token, expires)
        raise AuthenticationFailed(
            "The console session is not valid (or its key was revoked); log in again."
        )

    async def _live_keys(self, name: str, engine: AsyncEngine) -> list[ApiKey]:
        found = [key for key in self._config_keys if key.name == name]
        try:
            found += [key for key in await active_keys(engine) if key.name == name]
        except KeyStoreError as exc:  # Postgres down: config keys still work, as in the ring
            if not found:
                raise AuthenticationFailed(
                    f"The console session cannot be checked now ({exc}); try again shortly."
                ) from exc
        return found

    def csrf_token(self, token: str) -> str:
        return _b64(self._mac(b"csrf", token.encode()))

    def check_csrf(self, token: str, presented: str | None) -> None:
        """403 unless ``presented`` is the session's CSRF token."""
        if not presented or not hmac.compare_digest(
            self.csrf_token(token).encode(), presented.encode()
        ):
            raise PermissionDenied(
                "This change comes with the console's session cookie but without its CSRF "
                f"token; send it in the {CSRF_HEADER} header (the console page does).",
                code="csrf_token_invalid",
            )


def session_secret(settings: Settings) -> bytes:
    """The configured secret, else the one kept in ``data_dir`` (made on first use)."""
    configured = settings.console_secret
    if configured is not None:
        return configured.get_secret_value().encode()
    return _secret_file(settings.data_dir / SECRET_FILE)


def _secret_file(path: Path) -> bytes:
    """Read ``path``, or create it (0600) with a random secret; workers racing agree on one."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        if not path.exists():
            draft = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
            descriptor = os.open(draft, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            try:
                with os.fdopen(descriptor, "w") as out:
                    out.write(secrets.token_hex(32) + "\n")
                with contextlib.suppress(FileExistsError):  # another worker was first
                    os.link(draft, path)
            finally:
                draft.unlink()
        return path.read_text(encoding="utf-8").strip().encode()
    except OSError as exc:
        raise ConfigError(
            f"cannot read or create the console's session secret {path}: {exc} (or set "
            "console.session_secret_env)"
        ) from exc
