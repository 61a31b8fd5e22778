"""A fidelity-study corpus from ../shared/corpora: one partition per subdomain, ~1 unit each.

computing (FOLDOC) is left out: it is the tiny seed's own text.
"""

import gzip
import json
import sys
from pathlib import Path

SRC = Path(sys.argv[1])
OUT = Path(sys.argv[2])
CHARS = int(sys.argv[3]) if len(sys.argv) > 3 else 220_000
PARTS = {
    "scripture-law": ("scripture", "law"),
    "scripture-history": ("scripture", "history"),
    "scripture-wisdom": ("scripture", "wisdom"),
    "scripture-prophets": ("scripture", "prophets"),
    "scripture-gospels": ("scripture", "gospels"),
    "drama-comedy": ("drama", "comedy"),
    "drama-tragedy": ("drama", "tragedy"),
    "jargon": ("jargon", None),
    "satire": ("satire", None),
    "pydocs-library": ("pydocs", "library"),
}
for name, (domain, sub) in PARTS.items():
    docs, used = [], 0
    with gzip.open(SRC / f"{domain}.jsonl.gz", "rt", encoding="utf-8") as f:
        for line in f:
            d = json.loads(line)
            if sub and d["subdomain"] != sub:
                continue
            if used >= CHARS:
                break
            docs.append(d)
            used += len(d["text"])
    (OUT / name).mkdir(parents=True, exist_ok=True)
    (OUT / name / "docs.jsonl").write_text("".join(json.dumps(d) + "\n" for d in docs))
    print(name, len(docs), used)
