"""Bearer tokens and roles of the platform's APIs (HTTP/WebSocket now, the gRPC gateway later).

* **Tokens** are ``mst_`` + 43 URL-safe characters (256 random bits) made by :func:`new_token`; only
  their SHA-256 digests are stored (a hash that fast is safe for tokens of that entropy: no
  dictionary to try), in a JSON file (``api.auth_file``, mode 0600)::

      {"version": 1, "tokens": [{"name": "alice", "sha256": "<hex>", "roles": ["submit", "read"],
                                 "created_ns": 0}]}

  :meth:`TokenStore.authenticate` hashes the presented token and compares it with *every* stored
  digest with :func:`hmac.compare_digest` (no early exit), so timing tells nothing about which
  digest, or how much of one, matched.
* **Roles**: ``submit`` (submit jobs, cancel one's own), ``read`` (read jobs, results, workers,
  metrics, the WebSocket feed; one's own jobs only), ``admin`` (everything: see and cancel every
  job; implies the others).
* **Rate limit**: :class:`RateLimiter`, a token bucket per identity (``rate`` per second, ``burst``).

Nothing here knows HTTP; ``jobs.web_security`` and the gateway map these to their protocols.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import re
import secrets
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from mystocks_gpu.exceptions import ConfigError

ROLES = ("submit", "read", "admin")
TOKEN_PREFIX = "mst_"
_NAME = re.compile(r"[A-Za-z0-9._@\-]{1,64}")
_HEX64 = re.compile(r"[0-9a-f]{64}")


def new_token() -> str:
    """A fresh bearer token (256 random bits)."""
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def token_digest(token: str) -> str:
    """Hex SHA-256 of a token: what is stored at rest."""
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()


@dataclass(frozen=True)
class Identity:
    """Who a request comes from: a token's name and roles (``admin`` implies every role)."""

    name: str
    roles: frozenset[str]

    def has(self, role: str) -> bool:
        """True when this identity holds ``role`` (or ``admin``)."""
        return role in self.roles or "admin" in self.roles

    @property
    def admin(self) -> bool:
        return "admin" in self.roles


#: the identity of requests when no token database is configured (a loopback-only development set-up)
ANONYMOUS = Identity("anonymous", frozenset({"admin"}))


@dataclass(frozen=True)
class TokenEntry:
    """One stored token: its name, SHA-256 digest and roles."""

    name: str
    sha256: str
    roles: frozenset[str]
    created_ns: int = 0


def _check_roles(roles: Iterable[str]) -> frozenset[str]:
    out = frozenset(roles)
    bad = sorted(out - set(ROLES))
    if bad or not out:
        raise ConfigError(f"token roles must be a non-empty subset of {', '.join(ROLES)}; got {sorted(out)}")
    return out


@dataclass
class TokenStore:
    """The token database (see the module docstring)."""

    entries: list[TokenEntry] = field(default_factory=list)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> TokenStore:
        """Read and validate a token file; :class:`ConfigError` naming what is wrong."""
        p = Path(path)
        try:
            data = json.loads(p.read_text())
        except FileNotFoundError:
            raise ConfigError(f"api.auth_file {p} does not exist (create it with: mystocks-gpu auth add NAME "
                              "--roles submit,read --file PATH)") from None
        except (OSError, ValueError) as exc:
            raise ConfigError(f"api.auth_file {p} is not a readable JSON token file: {exc}") from None
        if not isinstance(data, dict) or not isinstance(data.get("tokens"), list):
            raise ConfigError(f"api.auth_file {p}: expected {{\"version\": 1, \"tokens\": [...]}}")
        entries = []
        for i, t in enumerate(data["tokens"]):
            if not isinstance(t, dict) or not _NAME.fullmatch(str(t.get("name", ""))) \
                    or not _HEX64.fullmatch(str(t.get("sha256", ""))) or not isinstance(t.get("roles"), list):
                raise ConfigError(f"api.auth_file {p}: token #{i} needs a name, a sha256 hex digest and roles")
            entries.append(TokenEntry(t["name"], t["sha256"], _check_roles(t["roles"]), int(t.get("created_ns", 0))))
        names = [e.name for e in entries]
        if len(set(names)) != len(names):
            raise ConfigError(f"api.auth_file {p}: token names must be unique")
        return cls(entries)

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the file (0600): digests and roles only, never a token."""
        data = {"version": 1, "tokens": [{"name": e.name, "sha256": e.sha256, "roles": sorted(e.roles),
                                          "created_ns": e.created_ns} for e in self.entries]}
        p = Path(path)
        p.parent.mkdir(parents=True, exist_ok=True)
        tmp = p.with_name(p.name + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=1)
        os.replace(tmp, p)

    def add(self, name: str, roles: Iterable[str], now_ns: int | None = None) -> str:
        """Add (or replace) the token of ``name``; returns the new token (shown once, never stored)."""
        if not _NAME.fullmatch(name):
            raise ConfigError(f"token name must be 1-64 characters of A-Z a-z 0-9 . _ @ -, got {name!r}")
        token = new_token()
        entry = TokenEntry(name, token_digest(token), _check_roles(roles), now_ns if now_ns is not None else time.time_ns())
        self.entries = [e for e in self.entries if e.name != name] + [entry]
        return token

    def remove(self, name: str) -> bool:
        """Revoke the token of ``name``; True when there was one."""
        before = len(self.entries)
        self.entries = [e for e in self.entries if e.name != name]
        return len(self.entries) != before

    def authenticate(self, token: str | None) -> Identity | None:
        """The identity of a presented token, or None. Constant time in the stored digests."""
        if not token:
            return None
        digest = token_digest(token).encode()
        found: TokenEntry | None = None
        for e in self.entries:  # every entry compared: no early exit
            if hmac.compare_digest(digest, e.sha256.encode()):
                found = e
        return Identity(found.name, found.roles) if found is not None else None


def parse_bearer(header: str | None) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header, or None."""
    if not header:
        return None
    scheme, _, value = header.strip().partition(" ")
    if scheme.lower() != "bearer" or not value.strip():
        return None
    return value.strip()


class RateLimiter:
    """Token bucket per key: ``burst`` requests at once, refilled at ``rate`` per second (thread-safe)."""

    def __init__(self, rate: float, burst: int, monotonic: Callable[[], float] = time.monotonic,
                 max_keys: int = 100_000) -> None:
        if not rate > 0 or burst < 1:
            raise ValueError("rate must be > 0 and burst >= 1")
        self.rate, self.burst, self.monotonic, self.max_keys = rate, burst, monotonic, max_keys
        self._buckets: dict[str, tuple[float, float]] = {}
        self._lock = threading.Lock()

    def take(self, key: str) -> float:
        """Spend one request of ``key``: 0.0 when allowed, else the seconds until one is available."""
        now = self.monotonic()
        with self._lock:
            level, last = self._buckets.get(key, (float(self.burst), now))
            level = min(float(self.burst), level + (now - last) * self.rate)
            if level >= 1.0:
                self._buckets[key] = (level - 1.0, now)
                wait = 0.0
            else:
                self._buckets[key] = (level, now)
                wait = (1.0 - level) / self.rate
            if len(self._buckets) > self.max_keys:  # bounded memory: forget the fullest buckets' keys
                self._buckets.pop(next(iter(self._buckets)))
            return wait
