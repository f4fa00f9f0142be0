"""``Authorization: Bearer <key>`` for the REST API (DRF authentication class)."""

from __future__ import annotations

from typing import Any

from rest_framework import authentication, exceptions

from ..models import ApiKey
from .keys import find_key


class ApiKeyUser:
    """``request.user`` of a request made with an API key (``request.auth`` is the key)."""

    is_authenticated = True
    is_anonymous = False
    is_staff = False
    is_superuser = False

    def __init__(self, key: ApiKey) -> None:
        self.key = key
        self.pk = None
        self.username = f"api-key:{key.prefix}"

    def has_perm(self, perm: str, obj: Any = None) -> bool:  # Django permissions are for staff sessions
        return False

    def has_perms(self, perms: Any, obj: Any = None) -> bool:
        return False

    def __str__(self) -> str:
        return self.username


class ApiKeyAuthentication(authentication.BaseAuthentication):
    keyword = "Bearer"

    def authenticate(self, request: Any) -> tuple[ApiKeyUser, ApiKey] | None:
        header = authentication.get_authorization_header(request).split()
        if not header or header[0].lower() != self.keyword.lower().encode():
            return None
        if len(header) != 2:
            raise exceptions.AuthenticationFailed("the Authorization header must be 'Bearer <key>'")
        try:
            raw = header[1].decode()
        except UnicodeError:
            raise exceptions.AuthenticationFailed("the API key has characters a key never has") from None
        key = find_key(raw)
        if key is None:
            raise exceptions.AuthenticationFailed("unknown or revoked API key")
        return ApiKeyUser(key), key

    def authenticate_header(self, request: Any) -> str:
        # Makes DRF answer 401 (not 403) to a request without credentials.
        return 'Bearer realm="workflows"'
