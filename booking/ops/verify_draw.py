"""`booking verify-draw`: re-check a published draw from its record and its two files.

Either three local files (`DRAW.json ENTRIES.jsonl RESULTS.jsonl`) or a running service
(`--url URL --release ID`, which serves the same three). Prints one `verified ...` line (exit
0), or `not verified: ` and the first difference (exit 1); input it cannot read, an HTTP error
or a release not drawn yet is one sentence on stderr (exit 2). Standard library only, like the
draw it re-runs (booking.releases.draw).
"""

from __future__ import annotations

import argparse
import json
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from booking.releases.draw import DrawFileError, DrawMismatch, verify


class Unreadable(Exception):
    """Input that cannot be read: the sentence to print."""


def run(args: argparse.Namespace) -> int:
    try:
        record, entries, results = _fetched(args) if args.url else _local(args)
        line = verify(record, entries, results)
    except (Unreadable, DrawFileError) as exc:
        print(f"booking verify-draw: {exc}", file=sys.stderr)
        return 2
    except DrawMismatch as exc:
        print(f"not verified: {exc}")
        return 1
    print(line)
    return 0


def _local(args: argparse.Namespace) -> tuple[Any, bytes, bytes]:
    if args.release is not None or len(args.files) != 3:
        raise Unreadable("give either the three files DRAW.json ENTRIES.jsonl RESULTS.jsonl "
                         "or --url URL --release ID")
    draw_path, entries_path, results_path = (Path(name) for name in args.files)
    return _record(_read(draw_path), str(draw_path)), _read(entries_path), _read(results_path)


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise Unreadable(f"cannot read {path}: {exc.strerror or exc}") from None


def _record(data: bytes, where: str) -> Any:
    try:
        return json.loads(data)
    except (ValueError, RecursionError):
        raise Unreadable(f"{where} is not a JSON draw record") from None


def _fetched(args: argparse.Namespace) -> tuple[Any, bytes, bytes]:
    if args.files or args.release is None:
        raise Unreadable("with --url give --release ID and no files")
    base = args.url.rstrip("/")
    draw_url = f"{base}/v1/releases/{args.release}/draw"
    record = _record(_get(draw_url, args.release), draw_url)
    urls = [record.get(name) if isinstance(record, dict) else None
            for name in ("entries_url", "results_url")]
    if not all(isinstance(url, str) and url for url in urls):
        raise Unreadable(f"{draw_url} names no entries_url and results_url")
    entries_url, results_url = (_absolute(base, url) for url in urls)
    return record, _get(entries_url, args.release), _get(results_url, args.release)


def _absolute(base: str, url: str) -> str:
    """An absolute http(s) URL as it is; anything else is a path under the service's URL."""
    if url.startswith(("http://", "https://")):
        return url
    return f"{base}/{url.lstrip('/')}"


def _get(url: str, release: str) -> bytes:
    if not url.startswith(("http://", "https://")):
        raise Unreadable(f"{url} is not an http(s) URL")
    try:
        with urllib.request.urlopen(url, timeout=60) as answer:
            return answer.read()
    except urllib.error.HTTPError as exc:
        body = _problem(exc)
        if exc.code == 409 and body.get("code") == "not_drawn":
            raise Unreadable(f"release {release} has not been drawn yet") from None
        detail = body.get("detail") or body.get("code") or exc.reason
        raise Unreadable(f"GET {url} answered {exc.code}: {detail}") from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", None) or exc
        raise Unreadable(f"cannot reach {url}: {reason}") from None


def _problem(exc: urllib.error.HTTPError) -> dict[str, Any]:
    """The JSON body of an error answer, or {} when it has none."""
    try:
        body = json.loads(exc.read())
    except (ValueError, OSError):
        return {}
    return body if isinstance(body, dict) else {}
