"""A fidelity-study corpus from ../shared/corpora: one partition per subdomain, ~1 unit each.

    python scripts/make_study_corpus.py SRC OUT [CHARS per partition] [PIECE: longest document, in characters] [CUT]

computing (FOLDOC) is left out: it is the tiny seed's own text. PIECE cuts long documents at paragraph breaks,
so that a small partition still has documents to hold out. CUT "second" takes none of the default cut's documents:
other subdomains, or the next CHARS of the same ones (four domains; satire has too little text left for a unit).
"""

import gzip
import json
import sys
from pathlib import Path

# partition: (domain, subdomain or None, slice: how many CHARS of that text an earlier partition took)
PARTS = {
    "scripture-law": ("scripture", "law", 0),
    "scripture-history": ("scripture", "history", 0),
    "scripture-wisdom": ("scripture", "wisdom", 0),
    "scripture-prophets": ("scripture", "prophets", 0),
    "scripture-gospels": ("scripture", "gospels", 0),
    "drama-comedy": ("drama", "comedy", 0),
    "drama-tragedy": ("drama", "tragedy", 0),
    "jargon": ("jargon", None, 0),
    "satire": ("satire", None, 0),
    "pydocs-library": ("pydocs", "library", 0),
}
SECOND_PARTS = {
    "scripture-acts": ("scripture", "acts-epistles", 0),
    "scripture-law": ("scripture", "law", 1),
    "scripture-prophets": ("scripture", "prophets", 1),
    "drama-history": ("drama", "history", 0),
    "drama-tragedy": ("drama", "tragedy", 1),
    "jargon-b": ("jargon", None, 1),
    "jargon-c": ("jargon", None, 2),
    "pydocs-capi": ("pydocs", "c-api", 0),
    "pydocs-howto": ("pydocs", "howto", 0),
    "pydocs-whatsnew": ("pydocs", "whatsnew", 0),
}
CUTS = {"default": PARTS, "second": SECOND_PARTS}


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


def main(src: Path, out: Path, chars: int, piece: int | None, cut: str = "default") -> None:
    for name, (domain, sub, taken) in CUTS[cut].items():
        docs, used, start = [], 0, taken * chars
        with gzip.open(src / f"{domain}.jsonl.gz", "rt", encoding="utf-8") as f:
            for line in f:
                d = json.loads(line)
                if sub and d["subdomain"] != sub:
                    continue
                for cut_doc in pieces(d, piece):
                    if used >= start + chars:
                        break
                    if used >= start:
                        docs.append(cut_doc)
                    used += len(cut_doc["text"])
                if used >= start + chars:
                    break
        (out / name).mkdir(parents=True, exist_ok=True)
        (out / name / "docs.jsonl").write_text("".join(json.dumps(d) + "\n" for d in docs))
        print(name, len(docs), used - start)


if __name__ == "__main__":
    main(
        Path(sys.argv[1]),
        Path(sys.argv[2]),
        int(sys.argv[3]) if len(sys.argv) > 3 else 220_000,
        int(sys.argv[4]) if len(sys.argv) > 4 and sys.argv[4] != "-" else None,
        sys.argv[5] if len(sys.argv) > 5 else "default",
    )
