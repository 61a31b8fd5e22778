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
    pools/<pool>/fidelity-<budget>.json  the pool's latest fidelity report at that budget
    rankings/<pool>/<stamp>.json, latest.json

The records under pools/ and rankings/ are read and written here only, as typed objects; reading one that is
damaged (changed outside dataassess) is an error that names it, and leaves it as it is.
"""

from __future__ import annotations

import logging
import re
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from .errors import UserError
from .files import (  # noqa: F401  (the store's file helpers, imported from here by the rest of the core)
    atomic_dir,
    atomic_path,
    digest_json,
    intact,
    read_json,
    record_digest,
    recorded_digest,
    sha256_bytes,
    sha256_file,
    short_key,
    write_json,
)
from .types import FidelityRecord, OptimizationRecord, Snapshot

if TYPE_CHECKING:
    from .calibration import Calibration

log = logging.getLogger(__name__)

POOL_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,99}")


def check_pool_name(pool: str) -> str:
    """A pool name is one plain path component: it names folders of the store and MLflow models."""
    if not POOL_NAME.fullmatch(pool) or ".." in pool:
        raise UserError(
            f"invalid pool name {pool!r}: use 1 to 100 ASCII letters, digits, '.', '_' and '-' "
            "(no '..', starting with a letter, digit or '_')"
        )
    return pool


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
        try:
            found = read_json(meta)
        except ValueError:  # not the JSON written there: the model is trained again
            log.warning("store: %s is not the metadata written there: training its model again", meta)
            meta.unlink()
            return None
        if not intact(self.weights(key, kind), found.get("weights_digest")):
            meta.unlink()  # the model is retrained, and its new metadata written after its weights
            return None
        return found

    def mixture_weights(self, key: str) -> Path:
        return self.root / "mixtures" / key / "model.safetensors"

    # evaluation
    def eval_set(self, digest: str) -> Path:
        return self.root / "evalsets" / f"{digest}.json"

    def score(self, model_key: str, eval_digest: str, score_config: str) -> Path:
        return self.root / "scores" / short_key([model_key, eval_digest, score_config]) / "score.json"

    # a pool's records
    def _pool_file(self, pool: str, name: str) -> Path:
        return self.root / "pools" / check_pool_name(pool) / name

    def demo_corpus(self, pool: str) -> Path:
        """Where the demo stages the partitions of its current wave."""
        return self.root / "demo-corpus" / check_pool_name(pool)

    def pinned_eval_sets(self, pool: str) -> dict[str, str] | None:
        """The evaluation sets pinned at the pool's first run (name -> digest), if any."""
        path = self._pool_file(pool, "eval_sets.json")
        return read_record(path, dict) if path.exists() else None

    def pin_eval_sets(self, pool: str, sets: dict[str, str]) -> None:
        write_json(self._pool_file(pool, "eval_sets.json"), sets)

    def calibration(self, pool: str) -> Calibration | None:
        from .calibration import Calibration  # numpy: not imported for commands that never read one

        path = self._pool_file(pool, "calibration.json")
        return read_record(path, Calibration.from_json) if path.exists() else None

    def save_calibration(self, pool: str, calibration: Calibration) -> None:
        write_json(self._pool_file(pool, "calibration.json"), calibration.to_json())

    def optimization(self, pool: str) -> OptimizationRecord | None:
        path = self._pool_file(pool, "optimize.json")
        return read_record(path, OptimizationRecord.from_json) if path.exists() else None

    def save_optimization(self, pool: str, record: OptimizationRecord) -> None:
        write_json(self._pool_file(pool, "optimize.json"), record.to_json())

    def fidelity(self, pool: str, budget: str) -> FidelityRecord | None:
        """The pool's latest fidelity study at this budget."""
        path = self._pool_file(pool, f"fidelity-{budget}.json")
        return read_record(path, FidelityRecord.from_json) if path.exists() else None

    def save_fidelity(self, pool: str, record: FidelityRecord) -> Path:
        path = self._pool_file(pool, f"fidelity-{record.report['budget']}.json")
        write_json(path, record.to_json())
        return path

    # rankings
    def ranked_pools(self) -> list[str]:
        """The pools that have a ranking in this store."""
        root = self.root / "rankings"
        return sorted(p.name for p in root.iterdir() if (p / "latest.json").is_file()) if root.is_dir() else []

    def latest_ranking(self, pool: str) -> Snapshot | None:
        path = self.root / "rankings" / check_pool_name(pool) / "latest.json"
        return read_record(path, Snapshot.from_json) if path.exists() else None

    def save_ranking(self, snapshot: Snapshot) -> Path:
        """Write the snapshot under its time stamp and as the pool's `latest.json`; returns the stamped file."""
        folder = self.root / "rankings" / check_pool_name(snapshot.pool)
        data = snapshot.to_json()
        write_json(folder / f"{snapshot.created}.json", data)
        write_json(folder / "latest.json", data)
        return folder / f"{snapshot.created}.json"

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


def read_record(path: Path, parse):
    """A store record read and typed; one that is not what dataassess wrote is a clear error, and is left as it is."""
    try:
        return parse(read_json(path))
    except (ValueError, KeyError, TypeError, AttributeError) as e:  # not JSON, or not this record's shape
        raise UserError(
            f"store record {path} is damaged ({type(e).__name__}: {e}); it is written whole or not at all, so "
            "something else changed it: restore it from a backup, or remove it to have it written anew"
        ) from None
