"""Task sets: multiple-choice and gold-continuation items, scored by the log-likelihood of each answer.

A folder under --eval-sets is a task when it holds a task.toml or its JSONL records have a "context":
    {"context": "...", "choices": ["...", ...], "gold": 0}   multiple choice
    {"context": "...", "answer": "..."}                      gold continuation
task.toml may name the task's family (family = "qa"). An answer is joined to its context by one space
unless either side already has whitespace there; that space is scored (it belongs to the answer's first
token) but not counted in the answer's bytes: bytes are the answer's own text, leading whitespace stripped.
"""

from __future__ import annotations

import gzip
import json
import math
from dataclasses import dataclass
from pathlib import Path

try:
    import tomllib
except ImportError:  # Python 3.10
    import tomli as tomllib

from .files import digest_json
from .types import TaskScore, TaskSet

TASK_FILE = "task.toml"
TASK_KEYS = {"family", "description"}
MAX_REPORTED = 3  # bad records named in a skipped set's warning


class TaskError(Exception):
    """A task set that cannot be used: one line naming the files and lines at fault."""


@dataclass(frozen=True)
class TaskSource:
    """A task folder's records, checked, not yet tokenized."""

    name: str
    family: str | None
    kind: str  # "choice" or "gold"
    items: list[tuple[str, list[str], int]]  # context, choices (a gold-continuation item: its answer), gold index


def _jsonl_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.name.lower().endswith((".jsonl", ".jsonl.gz")))


def _lines(path: Path) -> list[str]:
    data = path.read_bytes()
    if path.name.lower().endswith(".gz"):
        data = gzip.decompress(data)
    return data.decode("utf-8").splitlines()


def is_task_folder(folder: Path) -> bool:
    """A task.toml, or a first JSONL record with a "context"."""
    if (folder / TASK_FILE).is_file():
        return True
    for path in _jsonl_files(folder)[:1]:
        opener = gzip.open if path.name.lower().endswith(".gz") else open
        try:
            with opener(path, "rt", encoding="utf-8") as f:
                first = next((line for line in f if line.strip()), "")
            return isinstance(record := json.loads(first), dict) and "context" in record
        except (OSError, ValueError, EOFError):
            return False
    return False


def _check_record(record, kind: str | None) -> tuple[str | None, tuple[str, list[str], int] | None, str | None]:
    """(kind, item, problem) of one parsed record."""
    if not isinstance(record, dict):
        return kind, None, "not a JSON object"
    context = record.get("context")
    if not isinstance(context, str):
        return kind, None, 'no "context" string'
    has_choices, has_answer = "choices" in record, "answer" in record
    if has_choices == has_answer:
        return kind, None, 'needs either "choices" and "gold" (multiple choice) or "answer" (gold continuation)'
    this = "choice" if has_choices else "gold"
    if kind is not None and this != kind:
        return kind, None, f"a {this} record in a {kind} task: a task's records are all of one form"
    if this == "gold":
        answer = record["answer"]
        if not isinstance(answer, str) or not answer.strip():
            return this, None, '"answer" must be a non-empty string'
        return this, (context, [answer], 0), None
    choices, gold = record["choices"], record.get("gold")
    if not isinstance(choices, list) or len(choices) < 2:
        return this, None, '"choices" must be a list of at least 2 strings'
    if not all(isinstance(c, str) and c.strip() for c in choices):
        return this, None, '"choices" holds an empty or non-string choice'
    if not isinstance(gold, int) or isinstance(gold, bool):
        return this, None, '"gold" must be an integer index into "choices"'
    if not 0 <= gold < len(choices):
        return this, None, f'"gold" {gold} is out of range for {len(choices)} choices'
    return this, (context, choices, gold), None


def read_task_folder(folder: Path) -> TaskSource:
    """Every record of a task folder checked; raises TaskError naming the bad records by file and line."""
    family = None
    if (folder / TASK_FILE).is_file():
        try:
            meta = tomllib.loads((folder / TASK_FILE).read_text(encoding="utf-8"))
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
            raise TaskError(f"{folder / TASK_FILE}: not valid TOML ({e})") from None
        unknown = sorted(set(meta) - TASK_KEYS)
        if unknown:
            raise TaskError(f"{folder / TASK_FILE}: unknown keys {unknown} (known: {sorted(TASK_KEYS)})")
        family = meta.get("family")
        if family is not None and (not isinstance(family, str) or not family.strip()):
            raise TaskError(f"{folder / TASK_FILE}: family must be a non-empty string")
    files = _jsonl_files(folder)
    if not files:
        raise TaskError(f"{folder}: a task folder needs records in .jsonl or .jsonl.gz files")
    kind, items, problems = None, [], []
    for path in files:
        try:
            lines = _lines(path)
        except (OSError, EOFError, UnicodeDecodeError) as e:
            raise TaskError(f"{path}: unreadable ({e})") from None
        for n, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except ValueError:
                problems.append(f"{path} line {n}: not valid JSON")
                continue
            kind, item, problem = _check_record(record, kind)
            if problem:
                problems.append(f"{path} line {n}: {problem}")
            else:
                items.append(item)
    if problems:
        more = f" (and {len(problems) - MAX_REPORTED} more bad records)" if len(problems) > MAX_REPORTED else ""
        raise TaskError("; ".join(problems[:MAX_REPORTED]) + more)
    if not items:
        raise TaskError(f"{folder}: no records")
    return TaskSource(folder.name, family, kind, items)


def joined(context: str, answer: str) -> str:
    """The answer as scored after its context: with one joining space unless whitespace is already there."""
    if not context or context[-1].isspace() or answer[0].isspace():
        return answer
    return " " + answer


def build_task_set(src: TaskSource, tokenizer, ctx: int, max_tokens: int | None = None) -> TaskSet:
    """Token ids of the items, in file order until their gold answers hold `max_tokens` (corpus.eval_max_tokens,
    as a text set's scored tokens): contexts (after the EOS/BOS token) cut from the left so that the longest
    choice fits `ctx` positions. Raises TaskError when a choice alone does not fit."""
    from .seed import encode  # torch: not imported where task files are only read

    items, tokens, n_bytes = [], 0, 0
    for i, (context, choices, gold) in enumerate(src.items, 1):
        if max_tokens is not None and tokens >= max_tokens:
            break
        ids = [encode(tokenizer, [joined(context, c)], eos=False).tolist() for c in choices]
        longest = max(len(c) for c in ids)
        if longest > ctx - 1:
            raise TaskError(f"task '{src.name}', item {i}: a choice of {longest} tokens does not fit the context")
        context_ids = [tokenizer.eos_token_id] + encode(tokenizer, [context], eos=False).tolist()
        context_ids = context_ids[-(ctx - longest) :]
        choice_bytes = [len(c.lstrip().encode("utf-8")) for c in choices]
        items.append((context_ids, ids, gold, choice_bytes))
        tokens, n_bytes = tokens + len(ids[gold]), n_bytes + choice_bytes[gold]
    return TaskSet(src.name, digest_json(["task", ctx, items])[:24], src.kind, items, tokens, n_bytes, len(items))


def task_score(ts: TaskSet, loglik: list[list[float]]) -> TaskScore:
    """The metrics of one model on a task set from each item's choice log-likelihoods (nats, summed over tokens)."""
    gold_bpb, acc, acc_raw, prob_norm, chance, nll = [], [], [], [], [], 0.0
    for (_, _, gold, nbytes), ll in zip(ts.items, loglik, strict=True):
        nll -= ll[gold]
        gold_bpb.append(-ll[gold] / nbytes[gold] / math.log(2))
        if ts.kind == "choice":
            per_byte = [x / b for x, b in zip(ll, nbytes)]
            acc.append(float(max(range(len(ll)), key=per_byte.__getitem__) == gold))
            acc_raw.append(float(max(range(len(ll)), key=ll.__getitem__) == gold))
            top = max(ll)
            prob_norm.append(math.exp(ll[gold] - top) / sum(math.exp(x - top) for x in ll))
            chance.append(1.0 / len(ll))

    def mean(xs: list[float]) -> float | None:
        return sum(xs) / len(xs) if xs else None

    return TaskScore(
        nll, ts.tokens, ts.bytes, len(ts.items), mean(gold_bpb), mean(acc), mean(acc_raw), mean(prob_norm), mean(chance)
    )
