"""Build the demo's two task sets from its held-out evaluation documents (dataassess/data/demo/eval).

- cloze (multiple choice): a passage of 3 sentences; its true next sentence among 4 choices, the other 3 being
  copies of it with two adjacent words swapped (each a different pair). Choices have the same bytes, so only
  the model's grasp of the domain's word order decides. A design with the next sentence among sentences of other
  domains was measured first: the tiny seed hardly uses its context, so it scored at chance there;
- continuation (gold continuation): a passage and its true next sentence as the gold answer.
Both are family "reading". Deterministic (a seeded random order); run once by a maintainer, output committed.
"""

import gzip
import json
import random
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
EVAL = ROOT / "dataassess" / "data" / "demo" / "eval"
TEXT_SETS = ["drama-poems", "jargon", "pydocs", "satire", "scripture-gospels"]
CLOZE_PER_DOMAIN, CONTINUATION_PER_DOMAIN = 32, 16
SENTENCE = re.compile(r"(?<=[.!?;:])\s+")


def sentences(text: str) -> list[str]:
    """Sentences of a document, whitespace collapsed; those of 20 to 240 characters."""
    out = [" ".join(s.split()) for s in SENTENCE.split(text)]
    return [s for s in out if 20 <= len(s) <= 240]


def documents(domain: str) -> list[list[str]]:
    """A domain's evaluation documents, as their usable sentences."""
    with gzip.open(EVAL / domain / "docs.jsonl.gz", "rt", encoding="utf-8") as f:
        return [sentences(json.loads(line)["text"]) for line in f]


def passages(domain: str) -> list[tuple[str, str]]:
    """(context, next sentence) pairs: in each document, each sentence of 5 words or more after the 3 before it."""
    out = []
    for sents in documents(domain):
        out += [
            (" ".join(sents[end - 3 : end]), sents[end]) for end in range(3, len(sents)) if len(sents[end].split()) >= 5
        ]
    return out


def swapped(sentence: str, rng: random.Random, n: int = 3) -> list[str]:
    """n distinct copies of the sentence, each with one pair of adjacent words swapped."""
    words = sentence.split(" ")
    pairs = [i for i in range(len(words) - 1) if words[i] != words[i + 1]]
    out = []
    for i in rng.sample(pairs, len(pairs)):
        w = words[:]
        w[i], w[i + 1] = w[i + 1], w[i]
        if " ".join(w) not in out and " ".join(w) != sentence:
            out.append(" ".join(w))
        if len(out) == n:
            break
    return out


def build(rng: random.Random) -> tuple[list[dict], list[dict]]:
    cloze, continuation = [], []
    for domain in TEXT_SETS:
        found = passages(domain)
        picked = rng.sample(found, min(len(found), CLOZE_PER_DOMAIN + CONTINUATION_PER_DOMAIN))
        for context, gold in picked[:CLOZE_PER_DOMAIN]:
            distractors = swapped(gold, rng)
            if len(distractors) < 3:
                continue
            choices = [gold, *distractors]
            rng.shuffle(choices)
            cloze.append({"context": context, "choices": choices, "gold": choices.index(gold), "domain": domain})
        for context, gold in picked[CLOZE_PER_DOMAIN:]:
            continuation.append({"context": context, "answer": gold, "domain": domain})
    return cloze, continuation


def write(folder: Path, records: list[dict], family: str, description: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    with gzip.GzipFile(folder / "items.jsonl.gz", "wb", mtime=0) as f:
        for r in records:
            f.write((json.dumps(r, ensure_ascii=False) + "\n").encode())
    (folder / "task.toml").write_text(f'family = "{family}"\ndescription = "{description}"\n')
    print(f"{folder}: {len(records)} items")


def main(out: Path = EVAL) -> None:
    cloze, continuation = build(random.Random(0))
    write(out / "cloze", cloze, "reading", "the next sentence of a passage, against 3 copies with 2 words swapped")
    write(out / "continuation", continuation, "reading", "the next sentence of a passage, as the gold answer")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else EVAL)
