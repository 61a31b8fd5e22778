"""A fidelity-study corpus from ../shared/corpora: one partition per subdomain, ~1 unit each.

    python scripts/make_study_corpus.py SRC OUT [CHARS per partition] [PIECE: longest document, in characters]

computing (FOLDOC) is left out: it is the tiny seed's own text. PIECE cuts long documents at paragraph breaks,
so that a small partition still has documents to hold out.
"""

import gzip
import json
import sys
from pathlib import Path

SRC = Path(sys.argv[1])
OUT = Path(sys.argv[2])
CHARS = int(sys.argv[3]) if len(sys.argv) > 3 else 220_000
PIECE = int(sys.argv[4]) if len(sys.argv) > 4 else None
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


def pieces(doc: dict) -> list[dict]:
    """The document, or its paragraphs packed into pieces of at most PIECE characters (a longer paragraph is cut)."""
    if PIECE is None or len(doc["text"]) <= PIECE:
        return [doc]
    out, text = [], ""
    for para in doc["text"].split("\n\n"):
        while len(para) > PIECE:
            out.append(para[:PIECE])
            para = para[PIECE:]
        if text and len(text) + 2 + len(para) > PIECE:
            out.append(text)
            text = ""
        text = f"{text}\n\n{para}" if text else para
    out.append(text)
    return [{**doc, "text": t} for t in out if t.strip()]


for name, (domain, sub) in PARTS.items():
    docs, used = [], 0
    with gzip.open(SRC / f"{domain}.jsonl.gz", "rt", encoding="utf-8") as f:
        for line in f:
            d = json.loads(line)
            if sub and d["subdomain"] != sub:
                continue
            for piece in pieces(d):
                if used >= CHARS:
                    break
                docs.append(piece)
                used += len(piece["text"])
            if used >= CHARS:
                break
    (OUT / name).mkdir(parents=True, exist_ok=True)
    (OUT / name / "docs.jsonl").write_text("".join(json.dumps(d) + "\n" for d in docs))
    print(name, len(docs), used)
