"""Corpus discovery: partitions, content digests, validation and the held-out split.

A corpus is either a folder (each subfolder one partition) or one dataset, a local
file or an HF hub id written hf://owner/name, whose rows are grouped into partitions by a field.
"""

from __future__ import annotations

import gzip
import hashlib
import logging
import re
import shutil
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from .errors import UserError
from .files import digest_json, sha256_bytes
from .tasks import TaskError, TaskSource, is_task_folder, read_task_folder

if TYPE_CHECKING:
    import datasets

log = logging.getLogger(__name__)
HUB = "hf://"

SUFFIXES = (".jsonl.gz", ".jsonl", ".parquet", ".txt", ".md")
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")


class CorpusError(UserError):
    """A bad input: names the partition, the file and the reason."""

    def __init__(self, partition: str, reason: str, file: str | None = None, kind: str = "partition"):
        self.partition, self.file, self.reason = partition, file, reason
        where = f"{file}: " if file else ""
        super().__init__(f"{kind} '{partition}': {where}{reason}")


@dataclass(frozen=True)
class Document:
    text: str
    domain: str  # the `domain` field when the record has one, else the partition name

    @property
    def digest(self) -> str:
        return sha256_bytes(self.text.encode("utf-8"))


@dataclass
class Partition:
    name: str
    digest: str  # content digest: stable across machines and file order
    documents: list[Document] = field(repr=False)
    source: str = ""

    def split(self, heldout_fraction: float) -> tuple[list[Document], list[Document]]:
        """(train, held-out), decided per document by its hash, so never trained on."""
        train, held = [], []
        for doc in self.documents:
            (held if is_heldout(doc, heldout_fraction) else train).append(doc)
        return train, held


def is_heldout(doc: Document, fraction: float) -> bool:
    return int(doc.digest[:16], 16) / 16**16 < fraction


def suffix_of(path: Path) -> str | None:
    name = path.name.lower()
    return next((s for s in SUFFIXES if name.endswith(s)), None)


MAX_NAME = 100  # characters: names become folder names, store keys and MLflow model names


def check_name(name: str) -> None:
    """A partition name is one plain path component: no separators, no '..', no leading dot, not empty, bounded."""
    if not name or len(name) > MAX_NAME:
        raise CorpusError(name, f"invalid partition name: it must have 1 to {MAX_NAME} characters")
    if "/" in name or "\\" in name or ".." in name:
        raise CorpusError(
            name,
            "invalid partition name: it would escape the store (use letters, digits, '.', '_', '-'; no '..' or '/')",
        )
    if not NAME_RE.match(name):
        raise CorpusError(
            name,
            "invalid partition name: it names store keys and MLflow models, so it may hold only "
            "ASCII letters, digits, '.', '_' and '-', starting with a letter or digit (rename it)",
        )


def _raw_bytes(path: Path, partition: str) -> bytes:
    data = path.read_bytes()
    if path.name.lower().endswith(".gz"):
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError, zlib.error) as e:
            raise CorpusError(partition, f"not a valid gzip file ({e})", str(path)) from None
    return data


def _check_text_bytes(data: bytes, path: Path, partition: str) -> None:
    if not data.strip():
        raise CorpusError(partition, "empty file", str(path))
    if b"\x00" in data:
        raise CorpusError(partition, "binary content (NUL bytes); expected UTF-8 text", str(path))
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise CorpusError(partition, f"not valid UTF-8 (byte {e.start}: {e.reason})", str(path)) from None


def _load_file(path: Path, suffix: str, cache_dir: str | None) -> datasets.Dataset:
    import datasets

    datasets.logging.set_verbosity(datasets.logging.CRITICAL)  # a malformed file is our one error line, not its log
    if suffix in (".txt", ".md"):
        return datasets.load_dataset(
            "text", data_files=str(path), sample_by="document", split="train", cache_dir=cache_dir
        )
    builder = "parquet" if suffix == ".parquet" else "json"
    return datasets.load_dataset(builder, data_files=str(path), split="train", cache_dir=cache_dir)


def _cause(e: BaseException) -> str:
    """A loading error as `Type: message`, the parser's own rather than the datasets wrapper's."""
    while type(e).__module__.startswith("datasets") and (e.__cause__ or e.__context__) is not None:
        e = e.__cause__ or e.__context__
    return f"{type(e).__name__}: {str(e)[:300]}"


def _documents(ds: datasets.Dataset, partition: str, file: str) -> list[Document]:
    if "text" not in ds.column_names:
        raise CorpusError(partition, f"no 'text' field (fields: {', '.join(ds.column_names) or 'none'})", file)
    domains = ds["domain"] if "domain" in ds.column_names else [None] * len(ds)
    docs = []
    for i, (text, domain) in enumerate(zip(ds["text"], domains)):
        if not isinstance(text, str):
            raise CorpusError(partition, f"record {i + 1} has no 'text' string", file)
        if text.strip():
            docs.append(Document(text, str(domain) if domain else partition))
    return docs


def files_inside(folder: Path, root: Path | None = None) -> list[Path]:
    """A folder's files (hidden ones skipped), refusing any link that resolves outside `root` (default: the folder)."""
    name = folder.name
    inside = Path(root or folder).resolve()
    if not folder.resolve().is_relative_to(inside):
        raise CorpusError(name, f"the partition is a link out of the corpus root, to {folder.resolve()}", str(folder))
    files = sorted(p for p in folder.rglob("*") if p.is_file() and not p.name.startswith("."))
    for path in files:
        if not path.resolve().is_relative_to(inside):
            raise CorpusError(
                name, f"a link out of the corpus root, to {path.resolve()}; links must stay inside {inside}", str(path)
            )
    return files


def load_partition_folder(folder: Path, cache_dir: str | None = None, root: Path | None = None) -> Partition:
    """Read and validate one partition folder; raises CorpusError naming the file.
    Symbolic links are followed only when they resolve inside `root` (the corpus root; default the folder):
    a link out of it is refused before anything is read."""
    name = folder.name
    check_name(name)
    files = files_inside(folder, root)
    if not files:
        raise CorpusError(name, "empty partition: no files", str(folder))
    entries, docs = [], []
    for path in files:
        suffix = suffix_of(path)
        if suffix is None:
            raise CorpusError(name, f"unsupported file type (supported: {', '.join(SUFFIXES)})", str(path))
        raw = _raw_bytes(path, name) if suffix != ".parquet" else path.read_bytes()
        if suffix != ".parquet":
            _check_text_bytes(raw, path, name)
        elif not raw:
            raise CorpusError(name, "empty file", str(path))
        entries.append((path.relative_to(folder).as_posix(), sha256_bytes(raw)))
        try:
            ds = _load_file(path, suffix, cache_dir)
        except CorpusError:
            raise
        except Exception as e:  # datasets raises many types for malformed input
            raise CorpusError(name, f"could not be parsed as {suffix}: {_cause(e)}", str(path)) from None
        docs.extend(_documents(ds, name, str(path)))
    if not docs:
        raise CorpusError(name, "empty partition: no non-blank documents", str(folder))
    return Partition(name, digest_json(entries), docs, str(folder))


def load_dataset_partitions(
    source: str, partition_field: str, cache_dir: str | None = None
) -> tuple[list[Partition], list[CorpusError]]:
    """A single dataset (local file, or HF hub id written hf://owner/name), grouped into partitions by
    `partition_field`."""
    import datasets

    path = Path(source)
    try:
        if path.is_file():
            suffix = suffix_of(path)
            if suffix is None:
                raise CorpusError(path.name, f"unsupported file type (supported: {', '.join(SUFFIXES)})", source)
            if suffix != ".parquet":
                _check_text_bytes(_raw_bytes(path, path.name), path, path.name)
            ds = _load_file(path, suffix, cache_dir)
        else:
            ds = datasets.load_dataset(source.removeprefix(HUB), split="train", cache_dir=cache_dir)
    except CorpusError:
        raise
    except Exception as e:
        raise CorpusError(source, f"could not load dataset: {_cause(e)}", source) from None
    if partition_field not in ds.column_names:
        raise CorpusError(
            source, f"no '{partition_field}' field to partition by (fields: {', '.join(ds.column_names)})", source
        )
    if "text" not in ds.column_names:
        raise CorpusError(source, f"no 'text' field (fields: {', '.join(ds.column_names)})", source)
    groups: dict[str, list[dict]] = {}
    for row in ds:
        groups.setdefault(str(row[partition_field]), []).append(row)
    good, bad = [], []
    for name in sorted(groups):
        rows = groups[name]
        try:
            check_name(name)
            docs = _documents(datasets.Dataset.from_list(rows), name, source)
            if not docs:
                raise CorpusError(name, "empty partition: no non-blank documents", source)
        except CorpusError as e:
            bad.append(e)
            continue
        digest = digest_json([r["text"] for r in rows])
        good.append(Partition(name, digest, docs, source))
    return good, bad


def check_source(source: str | Path) -> None:
    """A local corpus must exist (a hub dataset is checked when it loads)."""
    if not str(source).startswith(HUB) and not Path(source).exists():
        raise UserError(
            f"corpus not found: {source} (no such file or folder; a hub dataset is written {HUB}owner/name)"
        )


def discover(
    source: str | Path, partition_field: str = "domain", cache_dir: str | None = None
) -> tuple[list[Partition], list[CorpusError]]:
    """All valid partitions under `source`, and the errors of the quarantined ones."""
    if str(source).startswith(HUB):
        return load_dataset_partitions(str(source), partition_field, cache_dir)
    check_source(source)
    root = Path(source)
    if not root.is_dir():
        return load_dataset_partitions(str(source), partition_field, cache_dir)
    good, bad = [], []
    folders = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    stray = sorted(p.name for p in root.iterdir() if p.is_file() and not p.name.startswith("."))
    if not folders:
        held = f" (it holds only files: {', '.join(stray[:5])})" if stray else ""
        raise UserError(f"corpus {root}: no partition subfolders{held}; a partition is a subfolder of documents")
    for folder in folders:
        try:
            good.append(load_partition_folder(folder, cache_dir, root))
        except CorpusError as e:
            bad.append(e)
    if stray:
        log.warning("ignored files at the corpus root (partitions are subfolders): %s", ", ".join(stray))
    return good, bad


def eval_sets_from_folder(
    root: Path, cache_dir: str | None = None
) -> tuple[dict[str, list[Document] | TaskSource], list[str]]:
    """Explicit evaluation sets, one subfolder each: text in a partition's formats, or a task (dataassess/tasks.py).
    Returns the sets and one message per task set skipped for bad records; a bad text set, or no set left, is fatal."""
    if not Path(root).is_dir():
        raise UserError(f"evaluation sets not found: {root} is not a folder (one subfolder per evaluation set)")
    sets: dict[str, list[Document] | TaskSource] = {}
    skipped = []
    for folder in sorted(p for p in Path(root).iterdir() if p.is_dir() and not p.name.startswith(".")):
        try:
            check_name(folder.name)
            files_inside(folder, Path(root))
            if is_task_folder(folder):
                try:
                    sets[folder.name] = read_task_folder(folder)
                except TaskError as e:
                    skipped.append(f"task '{folder.name}' skipped: {e}")
                continue
            sets[folder.name] = load_partition_folder(folder, cache_dir, Path(root)).documents
        except CorpusError as e:  # read as a partition is; reported as what it is
            reason = e.reason.replace("partition", "evaluation set").replace("corpus root", "evaluation sets' folder")
            raise CorpusError(e.partition, reason, e.file, kind="evaluation set") from None
    if not sets:
        why = f": {'; '.join(skipped)}" if skipped else ""
        raise CorpusError(Path(root).name, f"no usable evaluation-set subfolders{why}", str(root))
    return sets, skipped


def text_digest(docs: list[Document]) -> str:
    h = hashlib.sha256()
    for d in docs:
        h.update(d.digest.encode())
    return h.hexdigest()


def add_partition(folder: Path, root: Path, name: str | None = None) -> tuple[Partition, Path]:
    """Validate a partition folder and copy it into a corpus root as `name` (default: the folder's name).
    Every check runs before anything is written; the copy appears whole (a hidden temporary folder, renamed)."""
    if not root.is_dir():
        raise UserError(f"corpus root not found: {root} is not a folder")
    if not folder.is_dir():
        raise UserError(f"partition not found: {folder} is not a folder")
    name = folder.resolve().name if name is None else name
    check_name(name)
    part = load_partition_folder(folder)  # rejects bad input before anything is copied
    target = root / name
    if target.exists():
        raise UserError(f"{target} already exists; remove it first or pass --name")
    tmp = root / f".{name}.incoming"
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(folder, tmp)
    tmp.rename(target)
    return part, target
