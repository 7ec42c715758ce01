"""The pages' part of the app: routes, templates, and the middleware only pages need."""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from litestar import Router
from litestar.config.compression import CompressionConfig
from litestar.config.csrf import CSRFConfig
from litestar.datastructures import CacheControlHeader
from litestar.middleware import DefineMiddleware
from litestar.middleware.compression import CompressionMiddleware
from litestar.middleware.csrf import CSRFMiddleware
from litestar.plugins.jinja import JinjaTemplateEngine
from litestar.static_files import create_static_files_router
from litestar.template.config import TemplateConfig

from booking.core.settings import Settings

HERE = Path(__file__).parent
TEMPLATES = HERE / "templates"
STATIC = HERE / "static"


@dataclass(frozen=True, slots=True)
class Site:
    router: Router
    templates: TemplateConfig


def csrf_config(settings: Settings) -> CSRFConfig:
    """Double-submit CSRF tokens on every page form (hidden `_csrf_token`); the key is derived
    from BOOKING_SECRET so every worker and host agrees."""
    key = hmac.new(settings.secret.encode(), b"csrf", hashlib.sha256).hexdigest()
    return CSRFConfig(secret=key, cookie_httponly=True, cookie_samesite="lax",
                      exclude=["/static/", r"/courses/\d+/live", r"/courses/\d+/seats"])


def compression() -> CompressionConfig:
    """gzip for pages and static files; live streams are excluded (a compressor would hold
    their events back)."""
    return CompressionConfig(backend="gzip", minimum_size=256, gzip_compress_level=6,
                             exclude=[r"/courses/\d+/live", r"^/live$"])


def page_handlers() -> list[Any]:
    """Every page route, gathered from the modules of this folder."""
    from booking.web.pages import HANDLERS

    return HANDLERS


def site(settings: Settings) -> Site:
    """The pages' router (with its CSRF and compression middleware) and the templates."""
    static = create_static_files_router(
        path="/static", directories=[STATIC], name="static", include_in_schema=False,
        cache_control=CacheControlHeader(max_age=86400, public=True))
    from booking.web.errors import EXCEPTION_HANDLERS

    router = Router(
        path="/", route_handlers=[*page_handlers(), static], include_in_schema=False,
        exception_handlers=EXCEPTION_HANDLERS,
        middleware=[DefineMiddleware(CompressionMiddleware, config=compression()),
                    DefineMiddleware(CSRFMiddleware, config=csrf_config(settings))])
    templates = TemplateConfig(directory=TEMPLATES, engine=JinjaTemplateEngine,
                               engine_callback=_strict_jinja)
    return Site(router=router, templates=templates)


def _strict_jinja(engine: JinjaTemplateEngine) -> None:
    engine.engine.autoescape = True
    engine.engine.trim_blocks = True
    engine.engine.lstrip_blocks = True
