"""Admin authentication and request parsing. Pure: no Ray.

The token comes from a file named in the config or from ABSERVE_ADMIN_TOKEN;
it is compared in constant time (``hmac.compare_digest``) and never logged,
echoed or put in metrics. Credentials are accepted only in the
``Authorization: Bearer`` header: a token in the query string is refused,
because URLs end up in access logs and browser histories.

The HTML report is for a browser, which cannot send that header: it takes a
signed link instead (``report_link``), HMAC-SHA256 of an expiry time under the
admin token. A link grants only reading the report, only until it expires,
and does not reveal the token, so its place in a URL is acceptable.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import time
from collections.abc import Collection
from pathlib import Path

from serve.config import AdminConfig
from serve.errors import ConfigError, Forbidden, Unauthorized

__all__ = ["REPORT_LINK_PARAM", "TOKEN_ENV", "AdminAuth", "load_admin_token", "report_link"]

TOKEN_ENV = "ABSERVE_ADMIN_TOKEN"
_QUERY_CREDENTIALS = frozenset({"token", "access_token", "api_key", "apikey", "auth"})
_MIN_TOKEN_LENGTH = 16
REPORT_LINK_PARAM = "link"
_LINK_PURPOSE = b"abserve report link\x00"


def _link_signature(token: bytes, expires_at: int) -> str:
    return hmac.new(token, _LINK_PURPOSE + str(expires_at).encode(), hashlib.sha256).hexdigest()


def report_link(token: bytes, valid_s: float, now: float | None = None) -> str:
    """The ``link`` query value that opens /report until ``now + valid_s``."""
    expires_at = int((time.time() if now is None else now) + valid_s)
    return f"{expires_at}.{_link_signature(token, expires_at)}"


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

    def check_report(self, authorization: str | None, link: str | None,
                     now: float | None = None) -> None:
        """The HTML report: the bearer token (curl, tools) or a signed link (a browser)."""
        if self._token is None or not link:
            self.check(authorization)
            return
        expires, _, signature = link.partition(".")
        if not expires.isdigit() or not hmac.compare_digest(
            signature.encode(), _link_signature(self._token, int(expires)).encode()
        ):
            raise Unauthorized("this report link is not valid; run `abserve report --html` "
                               "for a new one")
        if int(expires) < (time.time() if now is None else now):
            raise Unauthorized("this report link has expired; run `abserve report --html` "
                               "for a new one")
