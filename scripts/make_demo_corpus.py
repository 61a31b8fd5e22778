"""Cut the bundled demo corpus and the tiny seed's text from ../shared/corpora.

Run once by a maintainer; its output is committed. Deterministic: documents are
taken in file order until each cut's character budget is reached.
"""

import gzip
import json
import sys
from pathlib import Path

SRC = Path(sys.argv[1] if len(sys.argv) > 1 else "../shared/corpora")
ROOT = Path(__file__).resolve().parents[1]

# partition -> (domain file, subdomains, char budget)
PARTITIONS = {
    "scripture-law": ("scripture", {"law"}, 240_000),
    "scripture-prophets": ("scripture", {"prophets"}, 240_000),
    "scripture-wisdom": ("scripture", {"wisdom"}, 240_000),
    "drama-comedy": ("drama", {"comedy"}, 180_000),
    "drama-tragedy": ("drama", {"tragedy"}, 180_000),
    "jargon": ("jargon", None, 280_000),
    "drama-history": ("drama", {"history"}, 400_000),  # large: split into units
    "satire": ("satire", None, 150_000),  # small: upsampled
}
# Fixed evaluation sets, disjoint from every partition's documents.
EVAL_SETS = {
    "scripture-gospels": ("scripture", {"gospels"}, 50_000, 0),
    "drama-poems": ("drama", {"poem"}, 50_000, 0),
    "jargon": ("jargon", None, 50_000, 280_000),  # entries after the partition's cut
    "satire": ("satire", None, 50_000, 150_000),
    "pydocs": ("pydocs", {"tutorial"}, 50_000, 0),  # a domain no partition holds
}
SEED_TEXT = ("computing", None, 2_400_000)


def cut(domain, subdomains, budget, skip=0):
    out, used, skipped = [], 0, 0
    with gzip.open(SRC / f"{domain}.jsonl.gz", "rt", encoding="utf-8") as f:
        for line in f:
            doc = json.loads(line)
            if subdomains and doc["subdomain"] not in subdomains:
                continue
            if skipped < skip:
                skipped += len(doc["text"])
                continue
            if used >= budget:
                break
            out.append(doc)
            used += len(doc["text"])
    return out


def write(path: Path, docs):
    path.parent.mkdir(parents=True, exist_ok=True)
    with gzip.GzipFile(path, "wb", mtime=0) as f:
        for d in docs:
            f.write((json.dumps(d, ensure_ascii=False) + "\n").encode())
    print(f"{path.relative_to(ROOT)}: {len(docs)} docs, {sum(len(d['text']) for d in docs):,} chars")


for name, spec in PARTITIONS.items():
    write(ROOT / "dataassess/data/demo/corpus" / name / "docs.jsonl.gz", cut(*spec))
for name, spec in EVAL_SETS.items():
    write(ROOT / "dataassess/data/demo/eval" / name / "docs.jsonl.gz", cut(*spec))
write(ROOT / "dataassess/data/seed_text.jsonl.gz", cut(*SEED_TEXT))
