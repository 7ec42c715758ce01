"""Signing in on a page: `/login` asks for the phone, sends a code and asks for it; the right
code leaves the API's own token in an HttpOnly cookie. The same `SignIn` service answers
`POST /v1/auth/codes` and `/v1/auth/tokens`.

Venue staff sign in the same way at `/venue/login` (the same template, flagged `staff`): the
right code of a phone an operator linked to a venue leaves a `venue` token in the same cookie
(replacing a resident's sign-in) and goes on to `/venue`; a phone linked to no venue is told so
beside the phone field, and no cookie is set.

`POST /login` answers with the code form itself (the phone it needs stays in that form); asked
again within the minute (a reload), it shows the same form and sends nothing.
"""

from __future__ import annotations

from typing import Annotated, Any

import msgspec
from litestar import Request, get, post
from litestar.datastructures import Cookie
from litestar.di import NamedDependency
from litestar.enums import RequestEncodingType
from litestar.params import Body
from litestar.response import Redirect, Template

from booking.core.errors import ApiError
from booking.signin import CODE_LIFETIME_S, CODE_TRIES, SignIn, clean_phone
from booking.web.render import TOKEN_COOKIE, local_path, page, see_other, visitor

HOME = "/me/bookings"
VENUE_HOME = "/venue"


class PhoneForm(msgspec.Struct):
    phone: str = ""
    next: str = ""


class CodeForm(msgspec.Struct):
    phone: str = ""
    code: str = ""
    next: str = ""


Form = Body(media_type=RequestEncodingType.URL_ENCODED)


def _login_page(request: Request, step: str, *, next_path: str | None, phone: str = "",
                error: str | None = None, note: str | None = None, staff: bool = False,
                status_code: int = 200) -> Template:
    """The sign-in page at one of its steps: `phone`, `code` or `signed_in`; `staff` for the
    venue staff's sign-in at `/venue/login`."""
    home = VENUE_HOME if staff else HOME
    return page(request, "login.html", status_code=status_code, step=step, phone=phone,
                next=local_path(next_path, home), home=home, error=error, note=note,
                tries=CODE_TRIES, code_minutes=CODE_LIFETIME_S // 60, staff=staff,
                action="/venue/login" if staff else "/login")


@get("/login", name="login")
async def login(request: Request) -> Template:
    """The phone form, or a word that this visitor is signed in already."""
    next_path = request.query_params.get("next")
    step = "signed_in" if visitor(request).resident_id else "phone"
    return _login_page(request, step, next_path=next_path)


@get("/venue/login", name="venue_login")
async def venue_login(request: Request) -> Template:
    """The staff's phone form, or a word that this visitor is signed in as staff already."""
    next_path = request.query_params.get("next")
    step = "signed_in" if visitor(request).venue_id else "phone"
    return _login_page(request, step, next_path=next_path, staff=True)


@post("/login", name="send_code", status_code=200)
async def send_code(request: Request, data: Annotated[PhoneForm, Form],
                    signin: NamedDependency[SignIn]) -> Template:
    """Send a code to the phone typed, then ask for it."""
    return await _send_code(request, data, signin, staff=False)


@post("/venue/login", name="send_staff_code", status_code=200)
async def send_staff_code(request: Request, data: Annotated[PhoneForm, Form],
                          signin: NamedDependency[SignIn]) -> Template:
    """The staff's code: sent to any phone as for residents; the token decides (see
    `check_staff_code`)."""
    return await _send_code(request, data, signin, staff=True)


async def _send_code(request: Request, data: PhoneForm, signin: SignIn, *,
                     staff: bool) -> Template:
    _ = visitor(request).words.gettext
    phone = clean_phone(data.phone)
    try:
        sent = await signin.send_code(data.phone, _address(request))
    except ApiError as exc:
        if exc.code == "too_soon":  # the code sent a moment ago still works
            note = _("验证码刚刚已发送，请查看短信。%(n)s 秒后可以重新获取。") % {
                "n": exc.extra.get("retry_after_s", 60)}
            return _login_page(request, "code", next_path=data.next, phone=phone, note=note,
                               staff=staff)
        if exc.code == "invalid_phone":
            error = _("请输入 11 位手机号码，例如 13800000001。")
        elif exc.code == "rate_limited":
            error = _("获取验证码太频繁，请 %(n)s 分钟后再试。") % {
                "n": max(1, round(exc.extra.get("retry_after_s", 60) / 60))}
        else:
            raise
        return _login_page(request, "phone", next_path=data.next, phone=phone, error=error,
                           staff=staff, status_code=exc.status_code)
    note = _("验证码已发送到 %(phone)s，%(minutes)s 分钟内有效。") % {
        "phone": sent.phone, "minutes": sent.expires_in_s // 60}
    return _login_page(request, "code", next_path=data.next, phone=sent.phone, note=note,
                       staff=staff)


@post("/login/code", name="check_code", status_code=303)
async def check_code(request: Request, data: Annotated[CodeForm, Form],
                     signin: NamedDependency[SignIn]) -> Redirect | Template:
    """The right code: the token in a cookie, then on to `next`; else the form and why not."""
    return await _check_code(request, data, signin, staff=False)


@post("/venue/login/code", name="check_staff_code", status_code=303)
async def check_staff_code(request: Request, data: Annotated[CodeForm, Form],
                           signin: NamedDependency[SignIn]) -> Redirect | Template:
    """A linked staff phone's right code: the venue token in the cookie, then on to `next`
    (the desk by default); a phone linked to no venue is told so beside the phone field."""
    return await _check_code(request, data, signin, staff=True)


async def _check_code(request: Request, data: CodeForm, signin: SignIn, *,
                      staff: bool) -> Redirect | Template:
    try:
        signed = await signin.sign_in(data.phone, data.code, "venue" if staff else "resident")
    except ApiError as exc:
        error = _code_refusal(request, exc)
        step = "phone" if exc.code in ("invalid_phone", "not_staff") else "code"
        return _login_page(request, step, next_path=data.next, phone=clean_phone(data.phone),
                           error=error, staff=staff, status_code=exc.status_code)
    response = see_other(local_path(data.next, VENUE_HOME if staff else HOME), request)
    response.set_cookie(_token_cookie(request, signed.token, signed.expires_in_s))
    return response


@post("/logout", name="logout", status_code=303)
async def logout(request: Request) -> Redirect:
    """Forget the sign-in cookie, back to the course list."""
    response = see_other("/", request)
    response.set_cookie(_token_cookie(request, "", 0))
    return response


def _code_refusal(request: Request, exc: ApiError) -> str:
    """The sentence beside the code field for a refusal of the service."""
    _ = visitor(request).words.gettext
    if exc.code == "wrong_code":
        left = int(exc.extra.get("tries_left", 0))
        if left <= 0:
            return _("验证码不对，已没有尝试机会，请重新获取验证码。")
        return _("验证码不对，还可以再试 %(n)s 次。") % {"n": left}
    messages = {
        "code_expired": _("验证码已过期或已用过，请重新获取。"),
        "too_many_tries": _("错误次数太多，请重新获取验证码。"),
        "invalid_code": _("请输入短信里的 6 位数字。"),
        "invalid_phone": _("请输入 11 位手机号码，例如 13800000001。"),
        "not_staff": _("这个手机号没有登记为教学点工作人员，请联系管理员登记。"),
    }
    if exc.code not in messages:
        raise exc
    return messages[exc.code]


def _token_cookie(request: Request, token: str, max_age: int) -> Cookie:
    """The sign-in cookie (an empty one with max-age 0 clears it); Secure over HTTPS."""
    return Cookie(key=TOKEN_COOKIE, value=token, max_age=max_age, path="/", httponly=True,
                  samesite="lax", secure=request.url.scheme == "https")


def _address(request: Request) -> str:
    return request.client.host if request.client else "-"


HANDLERS: list[Any] = [login, send_code, check_code, logout, venue_login, send_staff_code,
                       check_staff_code]
