"""Files written whole or not at all, and the digests that key and verify them."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

log = logging.getLogger(__name__)


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def digest_record(path: Path) -> Path:
    return path.with_name(path.name + ".sha256")


def record_digest(path: Path) -> str:
    """Record a just-written file's size and SHA-256 beside it; returns the SHA-256."""
    sha = sha256_file(path)
    with atomic_path(digest_record(path)) as tmp:
        tmp.write_text(f"{path.stat().st_size} {sha}\n")
    return sha


def recorded_digest(path: Path) -> str | None:
    record = digest_record(path)
    return record.read_text().split()[1] if record.exists() else None


def intact(path: Path, expected_sha256: str | None = None) -> bool:
    """Does the file exist as it was written? It is checked against the size and SHA-256 recorded beside it;
    a file whose record is missing is checked against `expected_sha256` (kept in its metadata) and is
    unverified without one. A file that fails is reported in one line and removed, with its record, so that
    its producer rebuilds it."""
    path = Path(path)
    if not path.exists():
        return False
    record = digest_record(path)
    if record.exists():
        size, sha = record.read_text().split()
        actual = path.stat().st_size
        if actual == int(size) and sha256_file(path) == sha:
            return True
        what = f"{actual} bytes, {size} when written" if actual != int(size) else "its SHA-256 changed"
    elif expected_sha256 and sha256_file(path) == expected_sha256:
        record_digest(path)
        return True
    else:
        what = "its digest record is missing" + (
            " and its SHA-256 differs from its metadata's" if expected_sha256 else ""
        )
    log.warning("store: %s does not match the digest recorded when it was written (%s): rebuilding it", path, what)
    path.unlink()
    record.unlink(missing_ok=True)
    return False


def digest_json(obj) -> str:
    """The one content digest of JSON-able data: sorted keys, compact separators."""
    return sha256_bytes(json.dumps(obj, sort_keys=True, separators=(",", ":")).encode())


def short_key(obj) -> str:
    """A store key: the first 24 hex digits of the digest."""
    return digest_json(obj)[:24]


@contextmanager
def atomic_path(dest: Path) -> Iterator[Path]:
    """Yield a temp path beside `dest`; on success it is renamed over `dest`, on error removed."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, dest)
    finally:
        tmp_path.unlink(missing_ok=True)


@contextmanager
def atomic_dir(dest: Path) -> Iterator[Path]:
    """Yield a temp folder; on success it replaces `dest` whole."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent))
    try:
        yield tmp
        if dest.exists():
            shutil.rmtree(dest)
        os.replace(tmp, dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def write_json(path: Path, obj) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True))


def read_json(path: Path):
    return json.loads(Path(path).read_text())
