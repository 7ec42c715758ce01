"""Every page route, one module per part of the site."""

from __future__ import annotations

from typing import Any

from booking.web.course_page import HANDLERS as COURSE_PAGE
from booking.web.listing import HANDLERS as LISTING
from booking.web.live import HANDLERS as LIVE
from booking.web.mine import HANDLERS as MINE
from booking.web.signin import HANDLERS as SIGNIN

HANDLERS: list[Any] = [*LISTING, *COURSE_PAGE, *MINE, *SIGNIN, *LIVE]
