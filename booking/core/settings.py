"""Configuration, read once from the environment into one frozen object."""

from __future__ import annotations

import os
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path


class ConfigError(Exception):
    """Invalid configuration; the message is one sentence meant for the person starting us."""


@dataclass(frozen=True, slots=True)
class Settings:
    database_url: str | None
    redis_url: str | None
    secret: str
    redis_cluster: bool = False  # REDIS_URL names a node of a Redis Cluster
    host: str = "127.0.0.1"
    port: int = 8000
    workers: int = 1
    data_dir: Path = Path(".booking")
    pending_timeout_s: float = 30.0
    reconcile_interval_s: float = 5.0
    db_pool_size: int = 8
    rate_per_resident: tuple[int, float] = (30, 10.0)
    rate_per_address: tuple[int, float] = (3000, 10.0)
    payment_secret: str = ""  # signs payment callbacks (HMAC-SHA256)
    webhook_url: str | None = None  # where outbox notifications go; None: logged
    login_codes: str = "outbox"  # how sign-in codes leave: "outbox" (an SMS gateway) or "log"
    demo: bool = False  # a demo term: pages offer a simulated payment
    sse_max_streams: int = 5000  # live-seat streams per process; past it, 503 and polling
    record_key: str = ""  # signs learning records (Ed25519); "": derived from `secret`

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if env is None else env
        data_dir = Path(env.get("BOOKING_DATA_DIR", ".booking"))
        database_url = _url(env, "DATABASE_URL", ("postgres://", "postgresql://"))
        redis_url = _url(env, "REDIS_URL", ("redis://", "rediss://", "unix://"))
        secret = env.get("BOOKING_SECRET") or _stored_secret(data_dir)
        if len(secret) < 32:
            raise ConfigError("BOOKING_SECRET must be at least 32 characters long.")
        payment_secret = (env.get("BOOKING_PAYMENT_SECRET")
                          or _stored_secret(data_dir, "payment-secret"))
        if len(payment_secret) < 32:
            raise ConfigError("BOOKING_PAYMENT_SECRET must be at least 32 characters long.")
        redis_cluster = _choice(env, "BOOKING_REDIS_CLUSTER", ("0", "1")) == "1"
        if redis_cluster and not (redis_url or "").startswith(("redis://", "rediss://")):
            raise ConfigError("BOOKING_REDIS_CLUSTER=1 needs REDIS_URL to name a cluster node "
                              "as redis://host:port, not a unix socket.")
        return cls(
            database_url=database_url,
            redis_url=redis_url,
            secret=secret,
            redis_cluster=redis_cluster,
            host=env.get("BOOKING_HOST", "127.0.0.1"),
            port=_int(env, "BOOKING_PORT", 8000, 1, 65535),
            workers=_int(env, "BOOKING_WORKERS", os.cpu_count() or 1, 1, 256),
            data_dir=data_dir,
            pending_timeout_s=_int(env, "BOOKING_PENDING_TIMEOUT", 30, 5, 3600),
            reconcile_interval_s=_int(env, "BOOKING_RECONCILE_INTERVAL", 5, 1, 3600),
            db_pool_size=_int(env, "BOOKING_DB_POOL_SIZE", 8, 2, 200),
            rate_per_resident=_rate(env, "BOOKING_RATE_RESIDENT", (30, 10.0)),
            rate_per_address=_rate(env, "BOOKING_RATE_ADDRESS", (3000, 10.0)),
            payment_secret=payment_secret,
            webhook_url=_url(env, "BOOKING_WEBHOOK_URL", ("http://", "https://")),
            login_codes=_choice(env, "BOOKING_LOGIN_CODES", ("outbox", "log")),
            demo=_choice(env, "BOOKING_DEMO", ("0", "1")) == "1",
            sse_max_streams=_int(env, "BOOKING_SSE_MAX_STREAMS", 5000, 1, 1_000_000),
            record_key=env.get("BOOKING_RECORD_KEY", "").strip(),
        )

    def with_urls(self, database_url: str, redis_url: str) -> Settings:
        return replace(self, database_url=database_url, redis_url=redis_url)


def _url(env: Mapping[str, str], name: str, schemes: tuple[str, ...]) -> str | None:
    value = env.get(name, "").strip()
    if not value:
        return None
    if not value.startswith(schemes):
        raise ConfigError(f"{name} must start with {' or '.join(schemes)}, got {value[:40]!r}.")
    return value


def _int(env: Mapping[str, str], name: str, default: int, low: int, high: int) -> int:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        value = low - 1
    if not low <= value <= high:
        raise ConfigError(f"{name} must be a whole number from {low} to {high}, got {raw!r}.")
    return value


def _choice(env: Mapping[str, str], name: str, choices: tuple[str, ...]) -> str:
    """One of `choices`; the first when unset."""
    raw = env.get(name, "").strip()
    if not raw:
        return choices[0]
    if raw not in choices:
        raise ConfigError(f"{name} must be one of {', '.join(choices)}, got {raw!r}.")
    return raw


def _rate(env: Mapping[str, str], name: str, default: tuple[int, float]) -> tuple[int, float]:
    """`<requests>/<seconds>`, e.g. `30/10`; `0` turns the limit off."""
    raw = env.get(name, "").strip()
    if not raw:
        return default
    if raw == "0":
        return (0, 1.0)
    count, _, seconds = raw.partition("/")
    try:
        limit = (int(count), float(seconds))
    except ValueError:
        limit = (0, 0.0)
    if not (1 <= limit[0] <= 10**9 and 0.1 <= limit[1] <= 86400):
        raise ConfigError(f"{name} must look like 30/10 (requests per seconds) or 0, got {raw!r}.")
    return limit


def _stored_secret(data_dir: Path, name: str = "secret") -> str:
    """Without BOOKING_SECRET (or BOOKING_PAYMENT_SECRET), keep a random one in the data folder
    so tokens and signatures survive restarts."""
    path = data_dir / name
    try:
        if path.exists():
            return path.read_text().strip()
        data_dir.mkdir(parents=True, exist_ok=True)
        value = secrets.token_urlsafe(32)
        path.write_text(value + "\n")
        path.chmod(0o600)
        return value
    except OSError as exc:
        raise ConfigError(
            f"{'BOOKING_SECRET' if name == 'secret' else 'BOOKING_PAYMENT_SECRET'} is unset and "
            f"no secret could be kept in {data_dir}: {exc.strerror}."
        ) from exc
