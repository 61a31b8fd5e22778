"""The store: one folder that owns every path and key. Nothing is half-written.

Outputs are keyed by the digests of their inputs and written atomically (temp file,
then rename). Metadata holds keys, never paths, so a store can be moved or shared.
Every weights or tokens file has its size and SHA-256 recorded beside it (`<file>.sha256`)
when written, and is checked against them before it is reused: a file that does not match
is reported, removed and rebuilt.

    seeds/<source key>/              the seed as an HF folder (config, safetensors, tokenizer)
    streams/<key>.safetensors        a partition's training tokens
    units/<digest>/                  a unit's tokens and its JSON
    models/<key>/                    a unit model: model.safetensors, then meta.json (written last)
    truth/<key>/                     a fidelity ground truth, same layout
    mixtures/<key>/model.safetensors a merged mixture (the champion's, for the registry)
    evalsets/<digest>.json           an evaluation set's token windows
    scores/<key>/score.json          one model's score on one evaluation set
    pools/<pool>/eval_sets.json      the evaluation sets pinned at a pool's first run
    pools/<pool>/calibration.json    the union-budget calibration fitted by fidelity
    pools/<pool>/optimize.json       the pool's latest mixture-weight search (its design warm-starts the next)
    pools/<pool>/fidelity.json       the pool's latest fidelity report
    rankings/<pool>/<stamp>.json, latest.json
"""

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

from dataassess.errors import UserError

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


def intact(path: Path) -> bool:
    """Does the file exist as it was written? A file that does not match its recorded size and SHA-256 is
    reported in one line and removed, with its record, so that its producer rebuilds it. A file written before
    digests were recorded gets its record now."""
    path = Path(path)
    if not path.exists():
        return False
    record = digest_record(path)
    if not record.exists():
        record_digest(path)
        return True
    size, sha = record.read_text().split()
    actual = path.stat().st_size
    if actual != int(size) or sha256_file(path) != sha:
        what = f"{actual} bytes, {size} when written" if actual != int(size) else "its SHA-256 changed"
        log.warning("store: %s does not match the digest recorded when it was written (%s): rebuilding it", path, what)
        path.unlink()
        record.unlink()
        return False
    return True


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


class Store:
    """Every path under one root, derived from keys."""

    def __init__(self, root: str | Path):
        self.root = Path(root)

    def __repr__(self) -> str:
        return f"Store({str(self.root)!r})"

    def check_writable(self) -> None:
        """Create the root if needed and prove this user can write it, before any work starts."""
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            with tempfile.NamedTemporaryFile(dir=self.root, prefix=".write-check-"):
                pass
        except OSError as e:
            raise UserError(
                f"cannot write the store {self.root}: {e.strerror}; run as a user who can write it, or pass --store DIR"
            ) from None

    def __eq__(self, other) -> bool:
        return isinstance(other, Store) and self.root.resolve() == other.root.resolve()

    def __hash__(self) -> int:
        return hash(str(self.root.resolve()))

    # inputs
    def seed_dir(self, source_key: str) -> Path:
        return self.root / "seeds" / source_key

    def stream(self, key: str) -> Path:
        return self.root / "streams" / f"{key}.safetensors"

    def unit_dir(self, digest: str) -> Path:
        return self.root / "units" / digest[:24]

    def unit_tokens(self, digest: str) -> Path:
        return self.unit_dir(digest) / "tokens.safetensors"

    def hf_cache(self) -> Path:
        return self.root / "hf-datasets"

    # trained models: weights first, metadata last (its presence means "done")
    def model_dir(self, key: str, kind: str = "models") -> Path:
        return self.root / kind / key

    def weights(self, key: str, kind: str = "models") -> Path:
        return self.model_dir(key, kind) / "model.safetensors"

    def meta(self, key: str, kind: str = "models") -> Path:
        return self.model_dir(key, kind) / "meta.json"

    def finished(self, key: str, kind: str = "models") -> dict | None:
        """A finished model's metadata, or None (never trained, killed mid-way, weights gone or corrupt)."""
        meta = self.meta(key, kind)
        if not meta.exists():
            return None
        if not intact(self.weights(key, kind)):
            meta.unlink()  # the model is retrained, and its new metadata written after its weights
            return None
        return read_json(meta)

    def mixture_weights(self, key: str) -> Path:
        return self.root / "mixtures" / key / "model.safetensors"

    # evaluation
    def eval_set(self, digest: str) -> Path:
        return self.root / "evalsets" / f"{digest}.json"

    def score(self, model_key: str, eval_digest: str, score_config: str) -> Path:
        return self.root / "scores" / short_key([model_key, eval_digest, score_config]) / "score.json"

    def pinned_eval_sets(self, pool: str) -> Path:
        return self.root / "pools" / pool / "eval_sets.json"

    def calibration(self, pool: str) -> Path:
        return self.root / "pools" / pool / "calibration.json"

    def optimization(self, pool: str) -> Path:
        return self.root / "pools" / pool / "optimize.json"

    # outputs
    def rankings(self, pool: str | None = None) -> Path:
        return self.root / "rankings" / pool if pool else self.root / "rankings"

    def fidelity(self, pool: str) -> Path:
        return self.root / "pools" / pool / "fidelity.json"

    # services beside the data
    def lock(self) -> Path:
        return self.root / ".intake.lock"

    def prefect_home(self) -> Path:
        return self.root / "prefect"

    def mlflow_db(self) -> Path:
        return self.root / "mlflow.db"

    def mlflow_db_lock(self) -> Path:
        return self.root / ".mlflow.db.lock"

    def mlflow_artifacts(self) -> Path:
        return self.root / "mlartifacts"

    def prefect_api_file(self) -> Path:
        """Where a running `dataassess serve` records its Prefect API, for add-partition."""
        return self.root / "prefect-api-url"
