"""Admin authentication and request parsing. Pure: no Ray.

The token comes from a file named in the config or from ABSERVE_ADMIN_TOKEN;
it is compared in constant time (``hmac.compare_digest``) and never logged,
echoed or put in metrics. Credentials are accepted only in the
``Authorization: Bearer`` header: a token in the query string is refused,
because URLs end up in access logs and browser histories.
"""

from __future__ import annotations

import hmac
import os
from collections.abc import Collection
from pathlib import Path

from serve.config import AdminConfig
from serve.errors import ConfigError, Forbidden, Unauthorized

__all__ = ["TOKEN_ENV", "AdminAuth", "load_admin_token"]

TOKEN_ENV = "ABSERVE_ADMIN_TOKEN"
_QUERY_CREDENTIALS = frozenset({"token", "access_token", "api_key", "apikey", "auth"})
_MIN_TOKEN_LENGTH = 16


def load_admin_token(config: AdminConfig, environ: dict[str, str] | None = None) -> bytes | None:
    env = os.environ if environ is None else environ
    if config.token_file:
        try:
            token = Path(config.token_file).read_text().strip()
        except OSError as exc:
            raise ConfigError(f"admin.token_file: cannot read it ({exc.strerror})") from None
    else:
        token = env.get(TOKEN_ENV, "").strip()
    if not token:
        return None
    if len(token) < _MIN_TOKEN_LENGTH:
        raise ConfigError(
            f"the admin token is shorter than {_MIN_TOKEN_LENGTH} characters; use e.g. "
            "`python -c 'import secrets; print(secrets.token_urlsafe(32))'`"
        )
    return token.encode()


class AdminAuth:
    def __init__(self, token: bytes | None) -> None:
        self._token = token

    @property
    def enabled(self) -> bool:
        return self._token is not None

    def __repr__(self) -> str:  # never show the token
        return f"AdminAuth(enabled={self.enabled})"

    def check(self, authorization: str | None, query_keys: Collection[str] = ()) -> None:
        """Raise unless the request carries the right bearer token in its header."""
        if self._token is None:
            raise Forbidden(f"the admin API is disabled: set {TOKEN_ENV} or admin.token_file")
        if _QUERY_CREDENTIALS.intersection(k.lower() for k in query_keys):
            raise Unauthorized("credentials in the URL are refused; use Authorization: Bearer")
        if not authorization:
            raise Unauthorized("missing Authorization: Bearer <token> header")
        scheme, _, credentials = authorization.partition(" ")
        credentials = credentials.strip()
        if scheme.lower() != "bearer" or not credentials or " " in credentials:
            raise Unauthorized("malformed Authorization header; expected 'Bearer <token>'")
        if not hmac.compare_digest(credentials.encode(), self._token):
            raise Unauthorized("invalid admin token")
