"""A release's page without JavaScript (issue 13, "On the resident pages"): its mode, times and
courses; the ranked-wish form whose entry is the API's own (`GET /v1/releases/{id}/entry`),
replaced and withdrawn on the page; refusals in words; each wish's outcome after a draw, as
the API has it; and course pages that lead to the release instead of grabbing while its draw
is pending. Entries close on purpose (the release's close moved to now in Postgres), as in
tests/test_lottery.py."""

from __future__ import annotations

import html
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
from conftest import (
    OPERATOR,
    SECRET,
    make_venue,
    resident,
    unique,
    wait_for,
)
from nojs import forms_of, page_client

from booking.core.auth import mint
from booking.web.i18n import Words

BEACON = "4711 0815 sealed in the notice board's envelope"
CLOSE_NOW = "UPDATE releases SET closes_at = clock_timestamp() WHERE id = $1"
MODE_WORDS = {"fcfs": ("先到先得", "First come, first served"),
              "window": ("开抢窗口（随机顺序）", "Opening window (random order)"),
              "lottery": ("抽签", "Lottery")}


# --- set-up through the API -------------------------------------------------------------------

def iso(moment: datetime) -> str:
    return moment.isoformat()


async def courses_of(http: httpx.AsyncClient, n: int, capacity: int = 5) -> list[dict[str, Any]]:
    """n free courses at one venue, starting in a week."""
    venue_id = await make_venue(http)
    now = datetime.now(UTC)
    made = []
    for _ in range(n):
        body = {"title": unique("wish-course"), "category": "music", "teacher": "Ms Li",
                "starts_at": iso(now + timedelta(days=7)),
                "ends_at": iso(now + timedelta(days=7, hours=2)), "capacity": capacity,
                "sales_open_at": iso(now - timedelta(seconds=1)), "venue_id": venue_id}
        answer = await http.post("/v1/courses", json=body, headers=OPERATOR)
        assert answer.status_code == 201, answer.text
        made.append(answer.json())
    return made


async def release(http: httpx.AsyncClient, mode: str, courses: list[dict[str, Any]],
                  **fields: Any) -> dict[str, Any]:
    """A release of `courses`, open since a minute ago (a lottery for an hour)."""
    now = datetime.now(UTC)
    body: dict[str, Any] = {"title": unique("release"), "mode": mode,
                            "course_ids": [c["id"] for c in courses], "term": unique("term"),
                            "opens_at": iso(now - timedelta(minutes=1))}
    if mode == "lottery":
        body |= {"closes_at": iso(now + timedelta(hours=1)), "beacon": BEACON}
    if mode == "window":
        body |= {"beacon": BEACON, "window_s": 3600}
    body |= fields
    answer = await http.post("/v1/releases", json=body, headers=OPERATOR)
    assert answer.status_code == 201, answer.text
    return answer.json()


async def api_entry(http: httpx.AsyncClient, release_id: int, who: str) -> httpx.Response:
    return await http.get(f"/v1/releases/{release_id}/entry", headers=resident(who))


async def draw(http: httpx.AsyncClient, db: Any, release_id: int) -> dict[str, Any]:
    """Close the entries now and draw, as an operator."""
    await db.execute(CLOSE_NOW, release_id)
    answer = await http.post(f"/v1/releases/{release_id}/draw", headers=OPERATOR)
    assert answer.status_code == 201, answer.text
    return answer.json()


# --- a browser without JavaScript -------------------------------------------------------------

@asynccontextmanager
async def browser(server: str, who: str | None,
                  tier: str | None = None) -> AsyncIterator[httpx.AsyncClient]:
    """Signed in as resident `who` (None: signed out), of priority group `tier`."""
    token = mint(SECRET, "resident", who, tier=tier) if who else None
    async with page_client(server, token) as client:
        yield client


async def send(client: httpx.AsyncClient, path: str, form_id: str,
               **fields: str | list[str]) -> httpx.Response:
    """Load `path` and send its form `form_id` with its hidden fields and `fields` (a list for
    a field sent once per value, as the wish selects are)."""
    shown = await client.get(path)
    assert shown.status_code == 200, shown.text
    form = forms_of(shown.text)[form_id]
    assert form["method"] == "post"
    return await client.post(form["action"], data={**form["fields"], **fields})


async def post_with_token(client: httpx.AsyncClient, path: str, action: str,
                          **fields: str | list[str]) -> httpx.Response:
    """POST to `action` with the CSRF token of a form on `path` (the sign-out form, say): as a
    form of an older page would, or one the page does not offer."""
    shown = await client.get(path)
    token = next(form["fields"]["_csrf_token"] for form in forms_of(shown.text).values()
                 if "_csrf_token" in form["fields"])
    return await client.post(action, data={"_csrf_token": token, **fields})


def selects(page: str) -> list[str | None]:
    """The wish selects of `form#entry` in rank order: the course id each has selected."""
    form = re.search(r'<form [^>]*id="entry".*?</form>', page, re.S)
    assert form, "no form#entry"
    found = []
    for select in re.findall(r'<select [^>]*name="wish".*?</select>', form.group(0), re.S):
        chosen = re.search(r'<option value="(\d+)"[^>]* selected', select)
        found.append(chosen.group(1) if chosen else None)
    return found


def receipt(page: str) -> str | None:
    found = re.search(r'data-entry-id="([0-9a-z]+)"', page)
    return found.group(1) if found else None


def outcomes(page: str) -> list[tuple[int, str]]:
    return [(int(course_id), outcome) for course_id, outcome in re.findall(
        r'<li data-course-id="(\d+)" data-outcome="(won|waitlist|none)"', page)]


def refusal(page: str) -> tuple[str, str]:
    found = re.search(r'data-refusal="([a-z_]+)">([^<]+)<', page)
    assert found, page
    return found.group(1), html.unescape(found.group(2))


# --- each mode --------------------------------------------------------------------------------

async def test_each_mode_shows_its_mode_times_and_courses_in_chinese_and_english(server, http):
    courses = await courses_of(http, 2)
    modes = {"fcfs": await release(http, "fcfs", courses[:1], term_cap=2),
             "window": await release(http, "window", (await courses_of(http, 2)),
                                     max_wishes=2),
             "lottery": await release(http, "lottery", courses[1:], max_wishes=3)}
    for mode, made in modes.items():
        path = f"/releases/{made['id']}"
        async with browser(server, None) as signed_out, browser(server, unique("r")) as mine:
            zh = await signed_out.get(path)
            en = await signed_out.get(path + "?lang=en")
            assert zh.status_code == en.status_code == 200, zh.text
            assert MODE_WORDS[mode][0] in zh.text and MODE_WORDS[mode][1] in en.text
            assert made["title"] in zh.text and made["title"] in en.text
            assert 'lang="zh-CN"' in zh.text and '<html lang="en"' in en.text
            opens = datetime.fromisoformat(made["opens_at"])
            assert Words("zh").when(opens) in zh.text and Words("en").when(opens) in en.text
            for course_id in made["course_ids"]:
                assert f'href="/courses/{course_id}"' in zh.text
            signed_in = await mine.get(path)
        if mode == "fcfs":
            assert "开抢时间" in zh.text and "本学期每人最多 2 门课" in zh.text
            assert "entry" not in forms_of(signed_in.text) and "登录后填写志愿" not in zh.text
            continue
        closes = datetime.fromisoformat(made["closes_at"])
        assert Words("zh").when(closes) in zh.text and "正在报名" in zh.text
        assert "Entries open until" in en.text
        sign_in = re.search(r'href="(/login\?[^"]+)"[^>]*>登录后填写志愿', zh.text)
        assert sign_in and parse_qs(urlsplit(html.unescape(sign_in.group(1))).query)["next"] \
            == [path]
        assert "entry" not in forms_of(zh.text)
        ranks = min(made["max_wishes"], len(made["course_ids"]))
        assert selects(signed_in.text) == [None] * ranks
        assert re.search(r'<select id="wish-1" name="wish" required>', signed_in.text)


async def test_an_unknown_release_is_a_404_page(server):
    async with browser(server, None) as client:
        answer = await client.get("/releases/999999999")
    assert answer.status_code == 404 and "找不到这个页面" in answer.text


# --- entering, replacing, withdrawing ---------------------------------------------------------

async def test_wishes_entered_on_the_page_are_the_apis_entry_replaced_and_withdrawn(server,
                                                                                     http):
    courses = await courses_of(http, 3)
    first, second, third = (str(c["id"]) for c in courses)
    made = await release(http, "lottery", courses, max_wishes=3)
    path, who = f"/releases/{made['id']}", unique("entrant")
    async with browser(server, who) as client:
        answer = await send(client, path, "entry", wish=[second, first, ""])
        assert answer.status_code == 303
        assert answer.headers["location"] == f"{path}?done=saved"
        saved = await client.get(answer.headers["location"])
        entry = (await api_entry(http, made["id"], who)).json()
        assert entry["wishes"] == [int(second), int(first)]
        assert receipt(saved.text) == entry["entry_id"]
        assert "志愿已保存" in saved.text
        assert selects(saved.text) == [second, first, None]  # the form shows the entry
        assert "withdraw" in forms_of(saved.text)

        replaced = await send(client, path, "entry", wish=["", third, ""])  # rank 1 left empty
        assert replaced.status_code == 303
        again = (await api_entry(http, made["id"], who)).json()
        assert again["wishes"] == [int(third)] and again["entry_id"] == entry["entry_id"]
        shown = await client.get(path)
        assert receipt(shown.text) == entry["entry_id"]
        assert selects(shown.text) == [third, None, None]

        withdrawn = await send(client, path, "withdraw")
        assert withdrawn.status_code == 303
        assert withdrawn.headers["location"] == f"{path}?done=withdrawn"
        assert (await api_entry(http, made["id"], who)).status_code == 404
        gone = await client.get(withdrawn.headers["location"])
        assert receipt(gone.text) is None and "已撤回报名" in gone.text
        assert selects(gone.text) == [None, None, None] and "withdraw" not in forms_of(gone.text)

        tapped_twice = await post_with_token(client, path, f"{path}/withdraw")
        assert tapped_twice.status_code == 303  # gone already: the page shows the facts


async def test_signed_out_the_forms_lead_to_sign_in_and_back(server, http):
    courses = await courses_of(http, 1)
    made = await release(http, "lottery", courses)
    path = f"/releases/{made['id']}"
    async with browser(server, None) as client:
        for action in (f"{path}/entry", f"{path}/withdraw"):
            answer = await post_with_token(client, "/login", action,
                                           wish=str(courses[0]["id"]))
            assert answer.status_code == 303
            target = urlsplit(answer.headers["location"])
            assert target.path == "/login" and parse_qs(target.query)["next"] == [path]


async def test_refusals_are_said_in_words_and_leave_the_entry_as_it_was(server, http, db):
    courses = await courses_of(http, 4)
    made = await release(http, "lottery", courses[:3], max_wishes=2)
    path, who = f"/releases/{made['id']}", unique("careful")
    ids = [str(c["id"]) for c in courses]
    async with browser(server, who) as client:
        assert (await send(client, path, "entry", wish=[ids[0]])).status_code == 303
        entry = (await api_entry(http, made["id"], who)).json()

        duplicate = await send(client, path, "entry", wish=[ids[1], ids[1]])
        assert duplicate.status_code == 422
        assert refusal(duplicate.text) == (
            "duplicate_wish", "同一门课只能填一次。请换一门课，或把重复的志愿留空。")
        assert selects(duplicate.text) == [ids[1], ids[1]]  # what was sent, to fix
        assert receipt(duplicate.text) == entry["entry_id"]

        too_many = await post_with_token(client, path, f"{path}/entry", wish=ids[:3])
        assert too_many.status_code == 422
        assert refusal(too_many.text) == ("too_many_wishes", "最多只能填 2 个志愿。")

        other = await send(client, path, "entry", wish=[ids[3]])  # not of this release
        assert other.status_code == 422 and refusal(other.text)[0] == "unknown_course"
        typed = await post_with_token(client, path, f"{path}/entry", wish=["1; drop"])
        assert typed.status_code == 422 and refusal(typed.text)[0] == "unknown_course"
        async with browser(server, who) as in_english:
            english = await send(in_english, path + "?lang=en", "entry", wish=[ids[1], ids[1]])
        assert refusal(english.text) == (
            "duplicate_wish", "Each course can be chosen once. Choose another course, or leave "
            "the repeated wish empty.")
        assert (await api_entry(http, made["id"], who)).json() == entry  # as it was

        await db.execute(CLOSE_NOW, made["id"])
        closed = await post_with_token(client, path, f"{path}/entry", wish=[ids[1]])
        assert closed.status_code == 409 and refusal(closed.text)[0] == "entry_closed"
        assert "填写志愿已于" in refusal(closed.text)[1]
        assert "entry" not in forms_of(closed.text)
        late = await post_with_token(client, path, f"{path}/withdraw")
        assert late.status_code == 409 and refusal(late.text)[0] == "entry_closed"
    kept = (await api_entry(http, made["id"], who)).json()
    assert (kept["entry_id"], kept["wishes"]) == (entry["entry_id"], entry["wishes"])

    first_come = await release(http, "fcfs", courses[3:])
    async with browser(server, who) as client:
        fcfs_path = f"/releases/{first_come['id']}"
        answer = await post_with_token(client, fcfs_path, f"{fcfs_path}/entry", wish=[ids[3]])
    assert answer.status_code == 409
    assert refusal(answer.text) == ("no_draw", "这次是先到先得，不用填写志愿，请到课程页面抢座。")


async def test_before_the_opening_each_resident_is_told_their_own_opening(server, http):
    courses = await courses_of(http, 2)
    now = datetime.now(UTC).replace(microsecond=0)
    opens, senior_opens = now + timedelta(hours=3), now + timedelta(hours=2)
    made = await release(http, "lottery", courses, opens_at=iso(opens),
                         closes_at=iso(now + timedelta(hours=5)),
                         tiers=[{"name": "senior", "opens_at": iso(senior_opens)}])
    path, wish = f"/releases/{made['id']}", str(courses[0]["id"])
    for tier, own in ((None, opens), ("senior", senior_opens)):
        who = unique("eager")
        async with browser(server, who, tier) as client:
            shown = await client.get(path)
            assert "entry" not in forms_of(shown.text)
            assert f"{Words('zh').when(own)} 起可以填写志愿。" in shown.text
            answer = await post_with_token(client, path, f"{path}/entry", wish=[wish])
            assert answer.status_code == 409
            assert refusal(answer.text) == (
                "not_open", f"还没到填写志愿的时间。您可以在 {Words('zh').when(own)} 起填写。")
        assert (await api_entry(http, made["id"], who)).status_code == 404


# --- after the draw ---------------------------------------------------------------------------

async def test_after_the_draw_each_wish_shows_the_apis_outcome_and_the_files(server, http, db):
    courses = await courses_of(http, 3, capacity=1)
    a, b, c = (course["id"] for course in courses)
    made = await release(http, "lottery", courses, term_cap=1, max_wishes=2)
    path = f"/releases/{made['id']}"
    wishes = {unique("drawn"): [a, b], unique("drawn"): [a, b], unique("drawn"): [a]}
    for who, wished in wishes.items():
        async with browser(server, who) as client:
            sent = await send(client, path, "entry", wish=[str(w) for w in wished])
            assert sent.status_code == 303

    async with browser(server, next(iter(wishes))) as client:
        await db.execute(CLOSE_NOW, made["id"])
        pending = await client.get(path)
        assert 'data-draw="pending"' in pending.text and "抽签结果即将公布" in pending.text
        assert "entry" not in forms_of(pending.text) and "withdraw" not in forms_of(pending.text)
        assert receipt(pending.text) is not None and outcomes(pending.text) == []
    record = (await http.post(f"/v1/releases/{made['id']}/draw", headers=OPERATOR)).json()

    seen = set()
    for who in wishes:
        entry = (await api_entry(http, made["id"], who)).json()
        async with browser(server, who) as client:
            shown = await client.get(path)
            english = await client.get(path + "?lang=en")
        assert receipt(shown.text) == entry["entry_id"]
        expected = [(r["course_id"], r["outcome"]) for r in entry["results"]]
        assert outcomes(shown.text) == outcomes(english.text) == expected
        for result in entry["results"]:
            words = {"won": "已中签", "none": "未中签",
                     "waitlist": f"候补第 {result.get('position')} 位"}[result["outcome"]]
            assert words in shown.text
        seen |= {outcome for _, outcome in expected}
        assert f'href="{record["entries_url"]}"' in shown.text
        assert f'href="{record["results_url"]}"' in shown.text
        assert f'href="/v1/releases/{made["id"]}/draw"' in shown.text
        assert f"booking verify-draw --url {server} --release {made['id']}" in shown.text
    assert seen == {"won", "waitlist", "none"}  # term_cap 1 over two one-seat courses

    async with browser(server, unique("late")) as client:
        shown = await client.get(path)
        assert "您没有参加这次抽签" in shown.text and "entry" not in forms_of(shown.text)

        async def grabbable() -> bool:  # nobody wished for c: first-come now
            return "grab" in forms_of((await client.get(f"/courses/{c}")).text)
        await wait_for(grabbable)


# --- course pages of a release ----------------------------------------------------------------

async def test_a_course_waiting_for_its_draw_leads_to_the_release_instead_of_grabbing(
        server, http, db):
    courses = await courses_of(http, 1)
    course_id = courses[0]["id"]
    made = await release(http, "lottery", courses)
    path = f"/releases/{made['id']}"
    async with browser(server, unique("keen")) as client:
        page = (await client.get(f"/courses/{course_id}")).text
        assert "grab" not in forms_of(page) and "waitlist" not in forms_of(page)
        assert re.search(rf'<a class="button primary" href="{path}"[^>]*>报名中：去填写志愿</a>',
                         page)
        assert f'href="{path}" translate="no">{made["title"]}</a>' in page
        assert "data-countdown" not in page  # the opening is a placeholder until the draw

        stale = await post_with_token(client, f"/courses/{course_id}",
                                      f"/courses/{course_id}/grab")  # an older page's button
        assert stale.status_code == 303 and stale.headers["location"] == path

        await db.execute(CLOSE_NOW, made["id"])

        async def waiting() -> bool:
            shown = (await client.get(f"/courses/{course_id}")).text
            return re.search(rf'href="{path}"[^>]*>等待抽签</a>', shown) is not None
        await wait_for(waiting)

        answer = await http.post(f"/v1/releases/{made['id']}/draw", headers=OPERATOR)
        assert answer.status_code == 201, answer.text

        async def grabbable() -> bool:
            return "grab" in forms_of((await client.get(f"/courses/{course_id}")).text)
        await wait_for(grabbable)


async def test_a_first_come_release_course_links_to_its_release_and_grabs(server, http):
    courses = await courses_of(http, 1)
    made = await release(http, "fcfs", courses)
    async with browser(server, unique("quick")) as client:
        page = (await client.get(f"/courses/{courses[0]['id']}")).text
    assert "grab" in forms_of(page) and "先到先得" in page
    assert f'href="/releases/{made["id"]}"' in page
