"""axe-core's `axe.min.js`, fetched once from its npm package into a cache outside the repo.

Pinned to one version and checked against the registry's sha512 of the tarball, so a run never
depends on what the registry serves today. The cache is `$XDG_CACHE_HOME/booking-tests` (by
default `~/.cache/booking-tests`); delete it to fetch again.
"""

from __future__ import annotations

import base64
import hashlib
import io
import os
import tarfile
from pathlib import Path

import httpx

VERSION = "4.14.1"
TARBALL = f"https://registry.npmjs.org/axe-core/-/axe-core-{VERSION}.tgz"
# The npm registry's `dist.integrity` of that tarball.
INTEGRITY = ("sha512-FHfa+lmNjQZfJz1q8wKqIDwC6DExcHt/pkjNQb09a3NPjCKg2rhu5qb2S4r76ASyFNNtuFooJ"
             "pZe37OgudVGtQ==")
MEMBER = "package/axe.min.js"


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "booking-tests" / f"axe-core-{VERSION}"


def axe_script() -> Path:
    """The path of `axe.min.js`, downloading and checking the tarball the first time."""
    target = cache_dir() / "axe.min.js"
    if target.exists():
        return target
    tarball = httpx.get(TARBALL, timeout=60, follow_redirects=True).raise_for_status().content
    digest = "sha512-" + base64.b64encode(hashlib.sha512(tarball).digest()).decode()
    if digest != INTEGRITY:
        raise RuntimeError(f"{TARBALL} is not the tarball we pinned: {digest} != {INTEGRITY}")
    with tarfile.open(fileobj=io.BytesIO(tarball), mode="r:gz") as archive:
        member = archive.extractfile(MEMBER)
        if member is None:
            raise RuntimeError(f"{TARBALL} holds no {MEMBER}")
        script = member.read()
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f"axe.min.js.{os.getpid()}.part")
    partial.write_bytes(script)
    partial.replace(target)  # whole or absent, even when two runs fetch at once
    return target
