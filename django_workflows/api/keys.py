"""API keys: made once, stored as a SHA-256 hash, found by that hash."""

from __future__ import annotations

import hashlib
import hmac
import secrets
from datetime import timedelta

from django.utils import timezone

from .. import conf
from ..models import ApiKey

KEY_PREFIX = "wf_"
PREFIX_LENGTH = 11  # "wf_" and 8 characters: what the admin shows of a key
# last_used_at is written at most this often per key (not on every request).
LAST_USED_RESOLUTION = timedelta(minutes=1)
SCOPE_RANK = {ApiKey.Scope.SEND: 0, ApiKey.Scope.READ: 1, ApiKey.Scope.MANAGE: 2}


def _digest(raw: str) -> str:
    return hashlib.sha256(raw.encode()).hexdigest()


def create_key(name: str, scope: str) -> tuple[ApiKey, str]:
    """A new key: returns its row and the key itself, which is shown once and not stored."""
    if scope not in SCOPE_RANK:
        raise ValueError(f"scope must be one of {', '.join(SCOPE_RANK)}, got {scope!r}")
    raw = KEY_PREFIX + secrets.token_urlsafe(32)
    key = ApiKey.objects.using(conf.database()).create(
        name=name, scope=scope, prefix=raw[:PREFIX_LENGTH], key_hash=_digest(raw)
    )
    return key, raw


def find_key(raw: str) -> ApiKey | None:
    """The live key ``raw`` is, or None (unknown or revoked)."""
    if not raw.startswith(KEY_PREFIX) or len(raw) > 200:
        return None
    digest = _digest(raw)
    key = ApiKey.objects.using(conf.database()).filter(key_hash=digest).first()
    # The lookup is by hash (an index); the comparison of what was found is constant-time.
    if key is None or not hmac.compare_digest(key.key_hash, digest) or key.revoked_at is not None:
        return None
    now = timezone.now()
    if key.last_used_at is None or now - key.last_used_at >= LAST_USED_RESOLUTION:
        ApiKey.objects.using(conf.database()).filter(pk=key.pk).update(last_used_at=now)
        key.last_used_at = now
    return key


def allows(key: ApiKey, scope: str) -> bool:
    """Whether ``key``'s scope covers ``scope`` (send < read < manage)."""
    return SCOPE_RANK[key.scope] >= SCOPE_RANK[scope]
