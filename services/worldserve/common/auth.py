"""API keys -> tenants.

Every RPC carries ``authorization: Bearer <key>`` metadata. Keys are stored hashed (sha256 hex),
never in plain text, in a JSON file (``WORLDSERVE_API_KEYS_FILE``)::

    {"keys": [{"tenant": "acme", "sha256": "<hex>", "quotas": {"steps_per_s": 50}}, ...]}

(``quotas``, optional: the tenant's overrides of the cluster's default quotas, see
worldserve.common.quotas; a tenant with several keys has one set of quotas, merged in file order) or in ``WORLDSERVE_API_KEYS`` as ``tenant:sha256hex,tenant2:sha256hex``. ``worldserve up`` makes a
local development key, stores its hash in the file and prints the key once.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import secrets
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from worldserve.common.errors import Metadata, Unauthenticated

TENANT_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")
KEY_PREFIX = "ws_"


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def new_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(24)


@dataclass(frozen=True)
class KeyRing:
    """Maps sha256(key) -> tenant; and tenant -> its quota overrides."""

    by_hash: Mapping[str, str]
    quotas: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)

    @classmethod
    def from_entries(
        cls, entries: Iterable[tuple[str, str]], quotas: Mapping[str, Mapping[str, Any]] | None = None
    ) -> KeyRing:
        from worldserve.common.quotas import Quotas

        for tenant, q in (quotas or {}).items():
            try:
                Quotas.parse(q)
            except (TypeError, ValueError) as e:
                raise ValueError(f"tenant {tenant!r}: {e}") from None
        out: dict[str, str] = {}
        for tenant, digest in entries:
            if not TENANT_RE.match(tenant):
                raise ValueError(f"invalid tenant name {tenant!r}: lowercase letters, digits, '_' or '-', at most 63")
            if not re.fullmatch(r"[0-9a-f]{64}", digest):
                raise ValueError(f"invalid key hash for tenant {tenant!r}: expected 64 hex digits")
            out[digest] = tenant
        return cls(out, dict(quotas or {}))

    @classmethod
    def load(cls, path: str | os.PathLike[str] | None = None, env: Mapping[str, str] | None = None) -> KeyRing:
        env = os.environ if env is None else env
        entries: list[tuple[str, str]] = []
        quotas: dict[str, dict[str, Any]] = {}
        path = path or env.get("WORLDSERVE_API_KEYS_FILE")
        if path:
            data = json.loads(Path(path).read_text())
            entries += [(e["tenant"], e["sha256"]) for e in data.get("keys", [])]
            for e in data.get("keys", []):
                if e.get("quotas"):
                    quotas.setdefault(e["tenant"], {}).update(e["quotas"])
        for item in filter(None, (s.strip() for s in env.get("WORLDSERVE_API_KEYS", "").split(","))):
            tenant, _, digest = item.partition(":")
            entries.append((tenant, digest))
        return cls.from_entries(entries, quotas)

    def tenant_for(self, key: str | None) -> str:
        if not key:
            raise Unauthenticated("missing API key: send metadata 'authorization: Bearer <key>'")
        tenant = self.by_hash.get(hash_key(key))  # lookup by digest: timing reveals nothing of the key
        if tenant is None:
            raise Unauthenticated("unknown API key")
        return tenant

    def authenticate(self, metadata: Metadata) -> str:
        """The tenant of the ``authorization`` metadata entry."""
        for k, v in metadata:
            if k.lower() == "authorization":
                scheme, _, token = str(v).partition(" ")
                if scheme.lower() != "bearer" or not token.strip():
                    raise Unauthenticated("malformed authorization metadata: expected 'Bearer <key>'")
                return self.tenant_for(token.strip())
        return self.tenant_for(None)


def add_key(path: str | os.PathLike[str], tenant: str, key: str, quotas: Mapping[str, Any] | None = None) -> None:
    """Append a key's hash (and the tenant's quota overrides, if any) to a key file (created with
    mode 0600)."""
    p = Path(path)
    data = json.loads(p.read_text()) if p.exists() else {"keys": []}
    entry: dict[str, Any] = {"tenant": tenant, "sha256": hash_key(key)}
    if quotas:
        entry["quotas"] = dict(quotas)
    KeyRing.from_entries([(tenant, entry["sha256"])], {tenant: quotas or {}})  # validates
    data["keys"].append(entry)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(json.dumps(data, indent=2))
    p.chmod(0o600)


def set_quotas(path: str | os.PathLike[str], tenant: str, quotas: Mapping[str, Any]) -> None:
    """Set quota overrides of a tenant that has a key in the key file (on its first entry;
    replicas pick the change up when they next reload the file)."""
    p = Path(path)
    data = json.loads(p.read_text()) if p.exists() else {"keys": []}
    entries = [e for e in data.get("keys", []) if e.get("tenant") == tenant]
    if not entries:
        raise ValueError(f"tenant {tenant!r} has no key in {p}")
    merged: dict[str, Any] = {}
    for e in entries:
        merged.update(e.pop("quotas", None) or {})
    merged.update(quotas)
    KeyRing.from_entries([], {tenant: merged})  # validates
    entries[0]["quotas"] = merged
    p.write_text(json.dumps(data, indent=2))
    p.chmod(0o600)
