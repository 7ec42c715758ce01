"""(to be written) Signing in with a phone: one-time codes, residents, tokens."""

from __future__ import annotations

from typing import Any

import asyncpg

from booking.core.settings import Settings

HANDLERS: list[Any] = []


class SignIn:
    """The sign-in domain's service: what `/v1/auth/*` and the `/login` pages call."""

    def __init__(self, pool: asyncpg.Pool, settings: Settings) -> None:
        self.pool = pool
        self.settings = settings
