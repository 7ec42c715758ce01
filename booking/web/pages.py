"""Every page route, one module per part of the site."""

from __future__ import annotations

from typing import Any

from booking.web.course_page import HANDLERS as COURSE_PAGE
from booking.web.desk import HANDLERS as DESK
from booking.web.listing import HANDLERS as LISTING
from booking.web.live import HANDLERS as LIVE
from booking.web.mine import HANDLERS as MINE
from booking.web.my_record import HANDLERS as MY_RECORD
from booking.web.release_page import HANDLERS as RELEASE_PAGE
from booking.web.signin import HANDLERS as SIGNIN
from booking.web.venue_checkin import HANDLERS as VENUE_CHECKIN
from booking.web.venue_import import HANDLERS as VENUE_IMPORT

HANDLERS: list[Any] = [*LISTING, *COURSE_PAGE, *MINE, *SIGNIN, *LIVE, *DESK, *VENUE_IMPORT,
                       *VENUE_CHECKIN, *MY_RECORD, *RELEASE_PAGE]
