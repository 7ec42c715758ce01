"""The residents' pages: server-rendered HTML in Chinese and English, plain forms that work
without JavaScript, one small script that only enhances.

Pages call the same domain services as the `/v1` handlers (`Bookings`, `Courses`,
`Waitlist`, ...); no page has SQL or Redis keys of its own. Everything a page needs from its
request (language, text size, sign-in) is in `render.py`; `site.py` gives the app its routes,
templates and the middleware that only pages need (CSRF, compression), so the `/v1` hot path
pays for neither.
"""
