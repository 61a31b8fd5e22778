"""Convert a local multiple-choice dataset (lm-evaluation-harness style: ARC, HellaSwag, PIQA, MMLU, ...) into a
dataassess task folder: items.jsonl of {"context", "choices", "gold"} and a task.toml.

    python scripts/convert_mc.py arc_easy_test.jsonl my-evals/arc-easy --family qa \\
        --context "Question: {question}\\nAnswer:" --choices choices.text --gold answerKey --labels choices.label
    python scripts/convert_mc.py hellaswag_val.parquet my-evals/hellaswag --context "{ctx}" \\
        --choices endings --gold label

INPUT: a .jsonl, .json, .parquet or .csv file, or a folder written by datasets' save_to_disk. --context is a
template over the record's fields (str.format; dotted paths as in --choices are not allowed there). --gold is a
field holding the gold choice's index, its letter (A, B, ...; matched against --labels when given) or its text.
"""

from __future__ import annotations

import argparse
import json
import string
import sys
from pathlib import Path


def field(record: dict, path: str):
    """A dotted path into a record: "choices.text"."""
    for part in path.split("."):
        record = record[part]
    return record


def gold_index(value, choices: list[str], labels: list[str] | None) -> int:
    if isinstance(value, bool):
        raise ValueError(f"gold {value!r} is not an index, a label or a choice")
    if isinstance(value, int):
        return value
    text = str(value).strip()
    if labels is not None and text in labels:
        return labels.index(text)
    if text.isdigit():
        return int(text)
    if len(text) == 1 and text in string.ascii_uppercase:
        return string.ascii_uppercase.index(text)
    if text in choices:
        return choices.index(text)
    raise ValueError(f"gold {value!r} is not an index, a label or a choice")


def load(path: Path) -> list[dict]:
    import datasets

    if path.is_dir():
        return list(datasets.load_from_disk(str(path)))
    kind = {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".csv": "csv"}.get(path.suffix.lower())
    if kind is None:
        raise ValueError(f"{path}: expected .jsonl, .json, .parquet, .csv or a save_to_disk folder")
    return list(datasets.load_dataset(kind, data_files=str(path), split="train"))


def convert(records: list[dict], context: str, choices: str, gold: str, labels: str | None) -> list[dict]:
    out = []
    for n, record in enumerate(records, 1):
        try:
            options = [str(c) for c in field(record, choices)]
            index = gold_index(field(record, gold), options, field(record, labels) if labels else None)
            if not 0 <= index < len(options):
                raise ValueError(f"gold {index} is out of range for {len(options)} choices")
            out.append({"context": context.format(**record), "choices": options, "gold": index})
        except (KeyError, ValueError, IndexError, TypeError) as e:
            raise SystemExit(f"error: record {n}: {e}") from None
    return out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("input", type=Path)
    p.add_argument("out", type=Path, help="the task folder to write (a subfolder of your --eval-sets folder)")
    p.add_argument("--context", required=True, help='template over the record\'s fields, e.g. "Question: {question}"')
    p.add_argument("--choices", required=True, help="field (dotted path) holding the list of choices")
    p.add_argument("--gold", required=True, help="field holding the gold choice: index, letter or text")
    p.add_argument("--labels", help="field holding the choices' labels, when --gold holds a label")
    p.add_argument("--family", help="the task's family (task.toml)")
    args = p.parse_args(argv)
    items = convert(load(args.input), args.context, args.choices, args.gold, args.labels)
    if args.out.exists():
        raise SystemExit(f"error: {args.out} already exists; choose a new folder")
    args.out.mkdir(parents=True)
    (args.out / "items.jsonl").write_text("".join(json.dumps(i, ensure_ascii=False) + "\n" for i in items))
    if args.family:
        (args.out / "task.toml").write_text(f"family = {json.dumps(args.family)}\n")
    print(f"{args.out}: {len(items)} items")


if __name__ == "__main__":
    main(sys.argv[1:])
