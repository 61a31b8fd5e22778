"""Continued pretraining: a short, explicit loop (fresh AdamW, constant or linearly decaying LR, fixed token budget).

Why not transformers.Trainer: a unit run is a few dozen optimizer steps on a
pre-tokenized tensor with a fixed budget; Trainer's dataloader, callback and
checkpoint machinery costs more start-up time than the run itself on CPU and
hides the exact token budget. This loop is ~60 lines and does the same math.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch

from .config import TrainConfig
from .errors import UserError
from .progress import progress_bar


def resolve_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def autocast(device: torch.device):
    """bf16 autocast on GPUs; full precision on CPU."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")


def flushes_denormals() -> bool:
    """Whether this thread flushes denormal floats to zero."""
    return (torch.tensor([1e-39]) * 1.0).item() == 0.0


# torch's thread count as the process started (OMP_NUM_THREADS, or the cores); a scoring worker's
# set_num_threads(1) can lower the live value at any time, and the count changes a model's bits
DEFAULT_THREADS = torch.get_num_threads()


@contextmanager
def cpu_threads(threads: int | None) -> Iterator[None]:
    """Within the block: `threads` torch CPU threads (None: the process's default, whatever another thread
    set) and denormals flushed on this thread; both restored after, so callers' settings are left alone."""
    before, flushing = torch.get_num_threads(), flushes_denormals()
    torch.set_num_threads(threads or DEFAULT_THREADS)
    torch.set_flush_denormal(True)
    try:
        yield
    finally:
        torch.set_num_threads(before)
        torch.set_flush_denormal(flushing)


@dataclass
class TrainResult:
    steps: int
    tokens: int
    final_loss: float
    wall_s: float
    losses: list[float]
    weights_digest: str = ""  # set once the weights are saved
    seed_loss: float = float("nan")  # the seed's mean loss on the first step's worth of sequences
    end_loss: float = float("nan")  # the trained model's, on the same sequences


def to_sequences(tokens: torch.Tensor, seq_len: int) -> torch.Tensor:
    n = tokens.numel() // seq_len
    if n == 0:
        raise UserError(f"{tokens.numel()} tokens are fewer than one sequence of {seq_len}")
    return tokens[: n * seq_len].view(n, seq_len).long()


def train_lm(
    model: torch.nn.Module,
    sequences: torch.Tensor,
    cfg: TrainConfig,
    total_tokens: int,
    device: torch.device,
    lr_at: Callable[[int, int], float] | None = None,
    desc: str = "train",
    progress: bool = True,
    on_step: Callable[[int, float], None] | None = None,
) -> TrainResult:
    """Train `model` in place on `total_tokens` drawn from shuffled `sequences` (N x L), at lr_at(step, steps), or
    else at cfg.schedule's rate. on_step(step, loss) is called after each optimizer step."""
    if lr_at is None and cfg.schedule == "linear":
        lr_at = linear_decay(cfg.lr)
    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    seq_len = sequences.shape[1]
    seqs_per_step = max(1, cfg.batch_tokens // seq_len)
    steps = max(1, total_tokens // (seqs_per_step * seq_len))
    decay = [p for p in model.parameters() if p.requires_grad and p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.dim() < 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=cfg.lr,
        betas=(cfg.beta1, cfg.beta2),
    )
    model.to(device).train()
    order = torch.empty(0, dtype=torch.long)
    losses: list[float] = []
    start = time.perf_counter()
    with progress_bar(
        range(steps), desc=desc, disable=not progress, leave=False
    ) as bar:  # closed before an error is printed
        for step in bar:
            if order.numel() < seqs_per_step:  # next epoch, reshuffled
                order = torch.cat([order, torch.randperm(len(sequences), generator=gen)])
            idx, order = order[:seqs_per_step], order[seqs_per_step:]
            for group in opt.param_groups:
                group["lr"] = lr_at(step, steps) if lr_at else cfg.lr
            step_loss = 0.0
            for micro in idx.split(cfg.micro_batch):
                x = sequences[micro].to(device)
                with autocast(device):
                    loss = model(input_ids=x, labels=x, use_cache=False).loss * (
                        len(micro) / len(idx)
                    )  # no KV cache in training
                loss.backward()
                step_loss += loss.item()
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            opt.step()
            opt.zero_grad(set_to_none=True)
            losses.append(step_loss)
            if on_step is not None:
                on_step(step, step_loss)
    tail = losses[-max(1, steps // 10) :]
    return TrainResult(
        steps, steps * seqs_per_step * seq_len, sum(tail) / len(tail), time.perf_counter() - start, losses
    )


@torch.no_grad()
def mean_loss(model: torch.nn.Module, sequences: torch.Tensor, micro_batch: int, device: torch.device) -> float:
    """The model's mean next-token loss over `sequences` (N x L), in eval mode; the model's mode is restored."""
    was_training = model.training
    model.to(device).eval()
    total = 0.0
    for chunk in sequences.split(micro_batch):
        x = chunk.to(device)
        with autocast(device):
            total += model(input_ids=x, labels=x, use_cache=False).loss.item() * len(chunk)
    model.train(was_training)
    return total / len(sequences)


def linear_decay(lr: float) -> Callable[[int, int], float]:
    """From lr at the first step down to lr / steps at the last: the last batches weigh less in the final model,
    so it depends less on which data came last."""
    return lambda step, steps: lr * (steps - step) / steps


def warmup_cosine(lr: float, min_lr: float, warmup: int) -> Callable[[int, int], float]:
    def lr_at(step: int, steps: int) -> float:
        if step < warmup:
            return lr * (step + 1) / warmup
        progress = (step - warmup) / max(1, steps - warmup)
        return min_lr + 0.5 * (lr - min_lr) * (1 + math.cos(math.pi * progress))

    return lr_at
