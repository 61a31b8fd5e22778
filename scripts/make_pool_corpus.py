"""A 32-partition pool from ../shared/corpora for `make bench-pool`: subdomains and first letters.

    python scripts/make_pool_corpus.py SRC OUT [CHARS: most training characters per partition]

Writes OUT/corpus/<partition>/docs.jsonl and OUT/eval/<set>/docs.jsonl. Scripture and drama are cut by
subdomain (the larger ones into consecutive parts), jargon and satire by ranges of first letters. Every tenth
document of a partition is held out into its domain's evaluation set; pydocs and computing (FOLDOC) give
out-of-domain sets. The same SRC gives the same files.
"""

from __future__ import annotations

import gzip
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from make_study_corpus import pieces  # noqa: E402

PIECE = 4000  # longest document, in characters: acts and long chapters cut at paragraph breaks
HELD_OUT_EVERY = 10
EVAL_CHARS = 60_000  # per evaluation set; scoring reads at most corpus.eval_max_tokens of it
# (domain, subdomains or first letters, parts)
GROUPS = [
    *[("scripture", (sub,), parts) for sub, parts in (("law", 2), ("history", 2), ("wisdom", 2), ("prophets", 2))],
    ("scripture", ("gospels",), 1),
    ("scripture", ("acts-epistles",), 1),
    *[("drama", (sub,), 3) for sub in ("comedy", "tragedy", "history")],
    ("drama", ("poem",), 1),
    *[("jargon", tuple(letters), 1) for letters in ("ab", "c", "de", "fg", "hijkl", "mno", "pqr", "s", "tuvwxyz")],
    *[("satire", tuple(letters), 1) for letters in ("abcdefgh", "ijklmnopqr", "stuvwxyz")],
]
OUT_OF_DOMAIN = ("pydocs", "computing")


def read(src: Path, domain: str) -> list[dict]:
    with gzip.open(src / f"{domain}.jsonl.gz", "rt", encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def name_of(domain: str, subs: tuple[str, ...], part: int, parts: int) -> str:
    label = subs[0] if len(subs[0]) > 1 else (subs[0] if len(subs) == 1 else f"{subs[0]}-{subs[-1]}")
    return f"{domain}-{label}" + (f"-{part + 1}" if parts > 1 else "")


def partitions(src: Path, chars: int) -> tuple[dict[str, list[dict]], dict[str, list[dict]]]:
    """Training documents by partition and held-out documents by domain."""
    corpus: dict[str, list[dict]] = {}
    held: dict[str, list[dict]] = {}
    cache: dict[str, list[dict]] = {}
    for domain, subs, parts in GROUPS:
        docs = cache.setdefault(domain, read(src, domain))
        mine = [cut for d in docs if d["subdomain"] in subs for cut in pieces(d, PIECE)]
        for part in range(parts):
            share = mine[part * len(mine) // parts : (part + 1) * len(mine) // parts]
            train, used = [], 0
            for i, doc in enumerate(share):
                if i % HELD_OUT_EVERY == HELD_OUT_EVERY - 1:
                    held.setdefault(domain, []).append(doc)
                elif used < chars:
                    train.append(doc)
                    used += len(doc["text"])
            corpus[name_of(domain, subs, part, parts)] = train
    return corpus, held


def out_of_domain(src: Path, domain: str) -> list[dict]:
    """About EVAL_CHARS of the domain, taken evenly across it."""
    docs = [cut for d in read(src, domain) for cut in pieces(d, PIECE)]
    total = sum(len(d["text"]) for d in docs)
    step = max(1, round(total / EVAL_CHARS))
    return docs[::step]


def write(folder: Path, docs: list[dict]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "docs.jsonl").write_text("".join(json.dumps(d) + "\n" for d in docs))


def main(src: Path, out: Path, chars: int) -> None:
    corpus, held = partitions(src, chars)
    for name, docs in corpus.items():
        write(out / "corpus" / name, docs)
    for domain, docs in held.items():
        write(out / "eval" / domain, docs)
    for domain in OUT_OF_DOMAIN:
        write(out / "eval" / domain, out_of_domain(src, domain))
    print(f"{len(corpus)} partitions, {len(held) + len(OUT_OF_DOMAIN)} evaluation sets in {out}")


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3]) if len(sys.argv) > 3 else 180_000)
