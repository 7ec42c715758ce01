"""What every page needs from its request: the visitor's language, text size and sign-in, and
the one way to answer with a page or send the browser on (303)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode

from litestar import Request
from litestar.datastructures import Cookie
from litestar.response import Redirect, Template

from booking.core.auth import Principal, TokenVerifier
from booking.core.errors import ApiError
from booking.web.i18n import LANGS, Words, negotiate

TOKEN_COOKIE = "booking_token"  # the same HS256 JWT the API takes as Bearer
LANG_COOKIE = "lang"
SIZE_COOKIE = "size"
SIZES = ("standard", "large", "xlarge")  # root font size 20 / 24 / 30 CSS px
YEAR_S = 365 * 86400


@dataclass(slots=True)
class Visitor:
    """Who is looking at a page, and in what language and text size."""

    words: Words
    size: str
    user: Principal | None
    remember: list[Cookie] = field(default_factory=list)  # ?lang= / ?size= to keep

    @property
    def resident_id(self) -> str | None:
        return self.user.sub if self.user and self.user.role == "resident" else None

    @property
    def venue_id(self) -> int | None:
        """The venue a signed-in staff member works for (a `venue` token's venue_id)."""
        return self.user.venue_id if self.user and self.user.role == "venue" else None


def visitor(request: Request) -> Visitor:
    """The visitor of this request, read once and kept on the request."""
    known = request.scope.get("visitor")
    if known is not None:
        return known
    remember: list[Cookie] = []
    lang = _chosen(request, "lang", LANG_COOKIE, LANGS, remember) \
        or negotiate(request.headers.get("accept-language"))
    size = _chosen(request, "size", SIZE_COOKIE, SIZES, remember) or "standard"
    found = Visitor(Words(lang), size, signed_in(request), remember)
    request.scope["visitor"] = found  # type: ignore[typeddict-unknown-key]
    return found


def _chosen(request: Request, param: str, cookie: str, allowed: tuple[str, ...],
            remember: list[Cookie]) -> str | None:
    """A choice made by `?param=` (then kept in `cookie`, added to `remember`) or earlier in
    the cookie; None when neither holds an allowed value."""
    asked = request.query_params.get(param)
    if asked in allowed:
        remember.append(_kept(cookie, asked))
        return asked
    kept = request.cookies.get(cookie)
    return kept if kept in allowed else None


def signed_in(request: Request) -> Principal | None:
    """The principal of the sign-in cookie, or None (no cookie, or one no longer valid)."""
    token = request.cookies.get(TOKEN_COOKIE)
    if not token:
        return None
    verifier: TokenVerifier = request.app.state.verifier
    try:
        return verifier.principal(f"Bearer {token}")
    except ApiError:
        return None


def _kept(name: str, value: str) -> Cookie:
    return Cookie(key=name, value=value, max_age=YEAR_S, path="/", samesite="lax",
                  httponly=True)


def page(request: Request, template: str, *, status_code: int = 200,
         **context: Any) -> Template:
    """A page in the visitor's language and size; `context` goes to the template."""
    seen = visitor(request)
    words = seen.words
    return Template(
        template_name=template,
        status_code=status_code,
        context={"_": words.gettext, "ngettext": words.ngettext, "words": words,
                 "visitor": seen, "here": lambda **changes: here(request, **changes),
                 **context},
        cookies=seen.remember,
        headers={"Cache-Control": "no-store", "Vary": "Cookie, Accept-Language"},
    )


def here(request: Request, **changes: str | None) -> str:
    """This page's address with some query parameters changed (None drops one)."""
    query = {key: value for key, value in request.query_params.items() if key not in changes}
    query.update({key: value for key, value in changes.items() if value is not None})
    return request.url.path + (f"?{urlencode(query)}" if query else "")


def see_other(path: str, request: Request | None = None) -> Redirect:
    """A 303 to a local path: what a form's POST answers, so a reload never posts again."""
    cookies = visitor(request).remember if request is not None else []
    return Redirect(path=path, status_code=303, cookies=cookies)


def local_path(value: str | None, default: str = "/me/bookings") -> str:
    """`value` if it is a path of this site (never another host), else `default`."""
    if not value or not value.startswith("/") or value.startswith("//") or "\\" in value:
        return default
    return value


def staff_sign_in_first(request: Request, back_to: str | None = None) -> Redirect:
    """Send a visitor who is not signed in as venue staff to the staff sign-in, then back."""
    return see_other("/venue/login?" + urlencode({"next": back_to or request.url.path}),
                     request)


def sign_in_first(request: Request, back_to: str | None = None) -> Redirect:
    """Send a signed-out visitor to sign in, then back to `back_to` (this page by default)."""
    return see_other("/login?" + urlencode({"next": back_to or request.url.path}), request)
