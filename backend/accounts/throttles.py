"""Brute-force defences for the login, token and sign-up endpoints, kept in the cache.

Two layers:
- ``AuthRateThrottle``: every POST to these endpoints counts against the client address
  (``AUTH_RATE``, default 20 a minute), which slows down any scripted guessing.
- ``LoginFailureLockout``: only *failed* password checks count, per username
  (``LOGIN_FAILURE_RATE``, default 5 per 15 minutes); past that the account cannot log in,
  even with the right password, until the oldest failure leaves the window. Keyed on the
  username so that guessing from many addresses is stopped too.
Both answer 429 with a Retry-After header.
"""

from __future__ import annotations

from typing import Any

from rest_framework.request import Request
from rest_framework.throttling import SimpleRateThrottle

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_rate(rate: str | None) -> tuple[int | None, int | None]:
    """'5/15m' -> (5, 900); plain DRF forms such as '20/min' or '100/h' work too."""
    if rate is None:
        return None, None
    num, period = rate.split("/")
    digits = "".join(ch for ch in period if ch.isdigit())
    unit = period[len(digits):][:1]
    return int(num), int(digits or 1) * _UNITS[unit]


class AuthRateThrottle(SimpleRateThrottle):
    scope = "auth"

    def parse_rate(self, rate: str | None) -> tuple[int | None, int | None]:
        return parse_rate(rate)

    def allow_request(self, request: Request, view: Any) -> bool:
        if request.method in ("GET", "HEAD", "OPTIONS"):
            return True
        return super().allow_request(request, view)

    def get_cache_key(self, request: Request, view: Any) -> str:
        return self.cache_format % {"scope": self.scope, "ident": self.get_ident(request)}


class LoginFailureLockout(SimpleRateThrottle):
    """Refuses a username that failed too often; the view records failures explicitly."""

    scope = "login_failures"

    def parse_rate(self, rate: str | None) -> tuple[int | None, int | None]:
        return parse_rate(rate)

    def get_cache_key(self, request: Request, view: Any) -> str | None:
        username = request.data.get("username") if hasattr(request.data, "get") else None
        if not isinstance(username, str) or not username.strip():
            return None
        return self.cache_format % {"scope": self.scope, "ident": username.strip().lower()}

    def _history(self, request: Request) -> list[float] | None:
        self.key = self.get_cache_key(request, None)
        if self.key is None or self.rate is None:
            return None
        self.now = self.timer()
        history = [t for t in self.cache.get(self.key, []) if t > self.now - self.duration]
        self.history = history
        return history

    def allow_request(self, request: Request, view: Any) -> bool:
        if request.method in ("GET", "HEAD", "OPTIONS"):
            return True
        history = self._history(request)
        return history is None or len(history) < self.num_requests

    def record_failure(self, request: Request) -> None:
        history = self._history(request)
        if history is None:
            return
        history.insert(0, self.now)
        self.cache.set(self.key, history, self.duration)

    def reset(self, request: Request) -> None:
        if self._history(request) is not None:
            self.cache.delete(self.key)
