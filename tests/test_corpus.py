import gzip
import json
import shutil

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from dataassess.corpus import Document, discover, is_heldout, load_partition_folder
from dataassess.errors import UserError
from tests.conftest import demo_docs, write_jsonl


def test_every_supported_format_loads(tmp_path):
    docs = demo_docs("satire", 6)
    root = tmp_path / "c"
    write_jsonl(root / "jsonl" / "a.jsonl", docs)
    (root / "gz").mkdir(parents=True)
    with gzip.open(root / "gz" / "a.jsonl.gz", "wt", encoding="utf-8") as f:
        f.writelines(json.dumps(d) + "\n" for d in docs)
    (root / "txt").mkdir()
    for i, d in enumerate(docs):
        (root / "txt" / f"{i}.txt").write_text(d["text"])
    (root / "md").mkdir()
    (root / "md" / "doc.md").write_text("# Title\n\n" + docs[0]["text"])
    (root / "parquet").mkdir()
    pq.write_table(pa.table({"text": [d["text"] for d in docs]}), root / "parquet" / "a.parquet")
    good, bad = discover(root)
    assert not bad
    by_name = {p.name: p for p in good}
    assert [d.text for d in by_name["jsonl"].documents] == [d["text"] for d in docs]
    assert [d.text for d in by_name["gz"].documents] == [d["text"] for d in docs]
    assert [d.text for d in by_name["parquet"].documents] == [d["text"] for d in docs]
    assert len(by_name["txt"].documents) == 6  # one document per text file, not per line
    assert by_name["md"].documents[0].text.startswith("# Title")
    # the `domain` field is kept for grouping evaluation sets; files without it use the partition name
    assert by_name["jsonl"].documents[0].domain == "satire"
    assert by_name["txt"].documents[0].domain == "txt"


def test_digest_is_stable_across_order_and_location_and_sensitive_to_bytes(tmp_path):
    docs = demo_docs("jargon", 20)
    a = tmp_path / "a" / "p"
    write_jsonl(a / "1.jsonl", docs[:10])
    write_jsonl(a / "2.jsonl", docs[10:])
    b = tmp_path / "b" / "p"  # same files, written in the other order, elsewhere
    write_jsonl(b / "2.jsonl", docs[10:])
    write_jsonl(b / "1.jsonl", docs[:10])
    da, db = load_partition_folder(a).digest, load_partition_folder(b).digest
    assert da == db
    # gzip with a different timestamp: same content, same digest
    with gzip.GzipFile(b / "1.jsonl.gz", "wb", mtime=12345) as f:
        f.write((b / "1.jsonl").read_bytes())
    (b / "1.jsonl").unlink()
    c = tmp_path / "c" / "p"
    shutil.copytree(a, c)
    raw = bytearray((c / "2.jsonl").read_bytes())
    raw[100] = ord("X") if raw[100] != ord("X") else ord("Y")  # one byte
    (c / "2.jsonl").write_bytes(bytes(raw))
    assert load_partition_folder(c).digest != da


def _bad_corpus(tmp_path):
    root = tmp_path / "corpus"
    write_jsonl(root / "good" / "a.jsonl", demo_docs("satire", 30))
    (root / "empty").mkdir()
    (root / "empty" / "a.jsonl").write_text("")
    (root / "binary").mkdir()
    (root / "binary" / "a.txt").write_bytes(bytes(range(256)) * 4)
    (root / "latin1").mkdir()
    (root / "latin1" / "a.txt").write_bytes("caf\u00e9 na\u00efve r\u00e9sum\u00e9 ".encode("latin-1") * 50)
    write_jsonl(root / "notext" / "a.jsonl", [{"body": d["text"]} for d in demo_docs("satire", 5)])
    (root / "badjson").mkdir()
    (root / "badjson" / "a.jsonl").write_text('{"text": "fine"}\n{"text": broken\n')
    (root / "nofiles").mkdir()
    (root / "truncgz").mkdir()
    packed = gzip.compress("".join(json.dumps({"text": d["text"]}) + "\n" for d in demo_docs("satire", 30)).encode())
    (root / "truncgz" / "a.jsonl.gz").write_bytes(packed[: len(packed) // 2])
    (root / "noparquettext").mkdir()
    pq.write_table(
        pa.table({"body": [d["text"] for d in demo_docs("satire", 5)]}), root / "noparquettext" / "a.parquet"
    )
    write_jsonl(root / "café notes" / "a.jsonl", demo_docs("satire", 30))
    write_jsonl(root / "spaced" / "notes été 1.jsonl", demo_docs("satire", 30))  # file names may hold anything
    return root


@pytest.mark.parametrize(
    "name, file, reason",
    [
        ("empty", "a.jsonl", "empty file"),
        ("binary", "a.txt", "binary content"),
        ("latin1", "a.txt", "not valid UTF-8"),
        ("notext", "a.jsonl", "no 'text' field"),
        ("badjson", "a.jsonl", "could not be parsed as .jsonl: ArrowInvalid: JSON parse error"),
        ("nofiles", None, "empty partition"),
        ("truncgz", "a.jsonl.gz", "not a valid gzip file"),
        ("noparquettext", "a.parquet", "no 'text' field (fields: body)"),
        ("café notes", None, "may hold only ASCII letters"),
    ],
)
def test_bad_partitions_get_a_clear_error_and_the_rest_proceed(tmp_path, name, file, reason):
    root = _bad_corpus(tmp_path)
    good, bad = discover(root)
    assert [p.name for p in good] == ["good", "spaced"]
    err = {e.partition: e for e in bad}[name]
    assert reason in str(err)
    assert f"partition '{name}'" in str(err)
    if file:
        assert str(root / name / file) in str(err)


def test_partition_names_that_would_escape_the_store_are_rejected(tmp_path):
    rows = [
        {"text": d["text"], "domain": dom} for dom in ("ok", "../escape", "a/b", "..") for d in demo_docs("satire", 3)
    ]
    path = write_jsonl(tmp_path / "all.jsonl", rows)
    good, bad = discover(path, partition_field="domain")
    assert [p.name for p in good] == ["ok"]
    assert sorted(e.partition for e in bad) == ["..", "../escape", "a/b"]
    assert all("escape the store" in str(e) for e in bad)


def test_unsupported_file_and_missing_corpus(tmp_path):
    write_jsonl(tmp_path / "c" / "p" / "a.jsonl", demo_docs("satire", 3))
    (tmp_path / "c" / "p" / "notes.pdf").write_bytes(b"%PDF-1.4")
    good, bad = discover(tmp_path / "c")
    assert not good and "unsupported file type" in str(bad[0]) and "notes.pdf" in str(bad[0])
    with pytest.raises(UserError, match="corpus not found"):
        discover(tmp_path / "nope")


def test_heldout_split_is_deterministic_and_by_document():
    docs = [Document(d["text"], "x") for d in demo_docs("jargon")]
    held = [d for d in docs if is_heldout(d, 0.1)]
    assert 0.05 < len(held) / len(docs) < 0.15
    assert held == [d for d in docs if is_heldout(Document(d.text, "other"), 0.1)]
