"""Token-level perplexity and bits-per-byte, with rolling windows for long documents."""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from .corpus import Document
from .store import digest_json
from .train import autocast


@dataclass
class EvalSet:
    name: str
    digest: str  # of the token windows: changes with text, tokenizer or windowing
    windows: list[tuple[list[int], int]] = field(repr=False)  # (input ids, first scored position)
    tokens: int  # scored tokens
    bytes: int  # UTF-8 bytes of the scored text
    documents: int


@dataclass(frozen=True)
class Score:
    nll: float  # summed, nats
    tokens: int
    bytes: int

    @property
    def perplexity(self) -> float:
        return math.exp(self.nll / self.tokens)

    @property
    def bits_per_byte(self) -> float:
        return self.nll / (math.log(2) * self.bytes)

    def to_dict(self) -> dict:
        return {"perplexity": self.perplexity, "bits_per_byte": self.bits_per_byte, "nll": self.nll, "tokens": self.tokens, "bytes": self.bytes}


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


def build_eval_set(name: str, docs: list[Document], tokenizer, ctx: int, stride: int | None, max_tokens: int) -> EvalSet:
    """Documents in digest order until `max_tokens`; the last may be cut to fit."""
    stride = min(stride or ctx // 2, ctx - 1)
    bos = tokenizer.eos_token_id
    windows, n_tokens, n_bytes, n_docs = [], 0, 0, 0
    for doc in sorted(docs, key=lambda d: d.digest):
        if n_tokens >= max_tokens:
            break
        ids = tokenizer(doc.text, add_special_tokens=False)["input_ids"]
        text_bytes = len(doc.text.encode("utf-8"))
        if n_tokens + len(ids) > max_tokens:
            ids = ids[: max_tokens - n_tokens]
            text_bytes = len(tokenizer.decode(ids).encode("utf-8"))
        if not ids:
            continue
        windows.extend(rolling_windows([bos] + ids, ctx, stride))
        n_tokens, n_bytes, n_docs = n_tokens + len(ids), n_bytes + text_bytes, n_docs + 1
    if not n_tokens:
        raise ValueError(f"evaluation set '{name}' has no tokens")
    return EvalSet(name, digest_json([ctx, stride, windows])[:24], windows, n_tokens, n_bytes, n_docs)


@torch.inference_mode()
def score_model(model: torch.nn.Module, eval_set: EvalSet, batch_size: int, device: torch.device) -> Score:
    model.eval()
    order = sorted(range(len(eval_set.windows)), key=lambda i: -len(eval_set.windows[i][0]))
    nll, counted = 0.0, 0
    for b in range(0, len(order), batch_size):
        batch = [eval_set.windows[i] for i in order[b:b + batch_size]]
        width = len(batch[0][0])
        ids = torch.zeros(len(batch), width, dtype=torch.long)
        mask = torch.zeros(len(batch), width, dtype=torch.long)
        labels = torch.full((len(batch), width), -100, dtype=torch.long)
        for row, (w, start) in enumerate(batch):
            ids[row, : len(w)] = torch.tensor(w)
            mask[row, : len(w)] = 1
            labels[row, start: len(w)] = ids[row, start: len(w)]
        ids, labels = ids.to(device), labels.to(device)
        padded = len(batch[-1][0]) < width  # rows are sorted longest first
        with autocast(device):  # without padding, no mask: the causal fast path
            logits = model(input_ids=ids, attention_mask=mask.to(device) if padded else None).logits
        targets = labels[:, 1:]
        loss = F.cross_entropy(logits[:, :-1].float().flatten(0, 1), targets.flatten(), ignore_index=-100, reduction="sum")
        nll += loss.item()
        counted += int((targets != -100).sum())
    if counted != eval_set.tokens:
        raise AssertionError(f"scored {counted} tokens, expected {eval_set.tokens}")
    return Score(nll, eval_set.tokens, eval_set.bytes)
