"""Evaluation sets: token windows built from held-out documents, slices for screening,
saved in the store by digest and pinned per pool."""

from __future__ import annotations

from collections.abc import Mapping

from .corpus import Document
from .errors import UserError
from .seed import encode
from .store import Store, digest_json, read_record, write_json
from .types import EvalSet, TaskSet, eval_set_from_json


def rolling_windows(ids: list[int], ctx: int, stride: int) -> list[tuple[list[int], int]]:
    """Windows of at most `ctx` ids; each scores only targets no earlier window scored.

    ids[0] is the BOS/EOS context token and is never a target. A window
    (w, s) scores targets w[s:], each predicted from everything before it.
    """
    if len(ids) <= ctx:
        return [(ids, 1)]
    windows, scored_until = [], 1
    for begin in range(0, len(ids) - 1, stride):
        end = min(begin + ctx, len(ids))
        windows.append((ids[begin:end], scored_until - begin))
        scored_until = end
        if end == len(ids):
            break
    return windows


def build_eval_set(
    name: str, docs: list[Document], tokenizer, ctx: int, stride: int | None, max_tokens: int
) -> EvalSet:
    """Documents in digest order until `max_tokens`; the last may be cut to fit."""
    stride = min(stride or ctx // 2, ctx - 1)
    bos = tokenizer.eos_token_id
    windows, n_tokens, n_bytes, n_docs = [], 0, 0, 0
    for doc in sorted(docs, key=lambda d: d.digest):
        if n_tokens >= max_tokens:
            break
        ids = encode(
            tokenizer, [doc.text], eos=False, limit=max_tokens - n_tokens + 1
        ).tolist()  # one more: was it cut?
        text_bytes = len(doc.text.encode("utf-8"))
        if n_tokens + len(ids) > max_tokens:
            ids = ids[: max_tokens - n_tokens]
            text_bytes = len(tokenizer.decode(ids).encode("utf-8"))
        if not ids:
            continue
        windows.extend(rolling_windows([bos] + ids, ctx, stride))
        n_tokens, n_bytes, n_docs = n_tokens + len(ids), n_bytes + text_bytes, n_docs + 1
    if not n_tokens:
        raise UserError(f"evaluation set '{name}' has no tokens")
    return EvalSet(name, digest_json([ctx, stride, windows])[:24], windows, n_tokens, n_bytes, n_docs)


def spread_order(n: int) -> list[int]:
    """Positions 0..n-1 in golden-ratio order: any prefix is spread over the whole range."""
    return sorted(range(n), key=lambda i: (i * 0.6180339887498949) % 1.0)


def task_slice(ts: TaskSet, fraction: float) -> TaskSet:
    """About `fraction` of a task set's items, spread over it; the full set at 1."""
    if fraction >= 1.0:
        return ts
    picked = sorted(spread_order(len(ts.items))[: max(1, round(fraction * len(ts.items)))])
    items = [ts.items[i] for i in picked]
    tokens = sum(len(choices[gold]) for _, choices, gold, _ in items)
    n_bytes = sum(nbytes[gold] for _, _, gold, nbytes in items)
    digest = digest_json([ts.digest, "slice", fraction])[:24]
    return TaskSet(ts.name, digest, ts.kind, items, tokens, n_bytes, len(items))


def eval_slice(es: EvalSet | TaskSet, fraction: float) -> EvalSet | TaskSet:
    """About `fraction` of an evaluation set's scored tokens: whole windows, picked spread over
    the set (golden-ratio order over window positions) until the share is reached; the full set at 1."""
    if isinstance(es, TaskSet):
        return task_slice(es, fraction)
    if fraction >= 1.0:
        return es
    n = len(es.windows)
    order = spread_order(n)
    picked, tokens = [], 0
    for i in order:
        if tokens >= fraction * es.tokens:
            break
        picked.append(i)
        tokens += len(es.windows[i][0]) - es.windows[i][1]
    windows = [es.windows[i] for i in sorted(picked)]
    return EvalSet(
        es.name,
        digest_json([es.digest, "slice", fraction])[:24],
        windows,
        tokens,
        max(1, round(es.bytes * tokens / es.tokens)),
        es.documents,
    )


class EvalSets:
    """The store's evaluation sets, read once per instance (files are named by content and never rewritten)."""

    def __init__(self, store: Store):
        self.store = store
        self._loaded: dict[str, EvalSet] = {}

    def save(self, es: EvalSet | TaskSet) -> str:
        """Written once per digest; a file there that is not a set (changed outside dataassess) is written again."""
        path = self.store.eval_set(es.digest)
        try:
            intact = path.exists() and read_record(path, eval_set_from_json).digest == es.digest
        except UserError:
            intact = False
        if not intact:
            write_json(path, es.to_json())
        self._loaded[es.digest] = es
        return es.digest

    def load(self, digest: str) -> EvalSet | TaskSet:
        if digest not in self._loaded:
            self._loaded[digest] = read_record(self.store.eval_set(digest), eval_set_from_json)
        return self._loaded[digest]

    def sliced(self, sets: Mapping[str, str], fraction: float) -> dict[str, str]:
        """Stored slices (whole windows, about `fraction` of the tokens) of the named sets."""
        return {n: self.save(eval_slice(self.load(d), fraction)) for n, d in sets.items()}

    def tokens(self, sets: Mapping[str, str]) -> int:
        return sum(self.load(d).tokens for d in sets.values())

    def pin(self, pool: str, found: dict[str, str], refresh: bool) -> dict[str, str]:
        """A pool's held-out evaluation sets are fixed at its first run, so later runs re-score only
        mixtures with new units; `refresh` re-pins them to the current held-out data."""
        pinned = self.store.pinned_eval_sets(pool)
        if pinned is not None and not refresh and all(self.store.eval_set(d).exists() for d in pinned.values()):
            return pinned
        self.store.pin_eval_sets(pool, found)
        return found
