"""A fidelity-study corpus from ../shared/corpora: one partition per subdomain, ~1 unit each.

    python scripts/make_study_corpus.py SRC OUT [CHARS per partition] [PIECE: longest document, in characters]

computing (FOLDOC) is left out: it is the tiny seed's own text. PIECE cuts long documents at paragraph breaks,
so that a small partition still has documents to hold out.
"""

import gzip
import json
import sys
from pathlib import Path

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


def pieces(doc: dict, piece: int | None) -> list[dict]:
    """The document, or its paragraphs packed into pieces of at most `piece` characters (a longer paragraph is cut)."""
    if piece is None or len(doc["text"]) <= piece:
        return [doc]
    out, text = [], ""
    for para in doc["text"].split("\n\n"):
        while len(para) > piece:
            out.append(para[:piece])
            para = para[piece:]
        if text and len(text) + 2 + len(para) > piece:
            out.append(text)
            text = ""
        text = f"{text}\n\n{para}" if text else para
    out.append(text)
    return [{**doc, "text": t} for t in out if t.strip()]


def main(src: Path, out: Path, chars: int, piece: int | None) -> None:
    for name, (domain, sub) in PARTS.items():
        docs, used = [], 0
        with gzip.open(src / f"{domain}.jsonl.gz", "rt", encoding="utf-8") as f:
            for line in f:
                d = json.loads(line)
                if sub and d["subdomain"] != sub:
                    continue
                for cut in pieces(d, piece):
                    if used >= chars:
                        break
                    docs.append(cut)
                    used += len(cut["text"])
                if used >= chars:
                    break
        (out / name).mkdir(parents=True, exist_ok=True)
        (out / name / "docs.jsonl").write_text("".join(json.dumps(d) + "\n" for d in docs))
        print(name, len(docs), used)


if __name__ == "__main__":
    main(
        Path(sys.argv[1]),
        Path(sys.argv[2]),
        int(sys.argv[3]) if len(sys.argv) > 3 else 220_000,
        int(sys.argv[4]) if len(sys.argv) > 4 else None,
    )
