"""Token-level perplexity and bits-per-byte over rolling windows, by one Scorer that owns its
worker threads, LM-head buffers, batches and (for merged models) a model of the seed's shape."""

from __future__ import annotations

import copy
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch
import torch.nn.functional as F

from .merge import MergeMethod, method_class
from .seed import Seed
from .tasks import task_score
from .train import DEFAULT_THREADS, autocast
from .types import EvalSet, MergeSpec, Score, TaskScore, TaskSet

# Architectures whose logits are exactly lm_head(last hidden state): no soft-capping or
# scaling after the head. Others go through the full forward.
HEAD_ONLY_TYPES = {"gpt2", "llama", "mistral", "qwen2", "qwen3", "gpt_neox", "phi3", "smollm3", "olmo", "olmo2"}
HEAD_BLOCK = 1 << 21  # logits per LM-head call (8 MB in float32): rows = HEAD_BLOCK // vocab, at least HEAD_ROWS
HEAD_ROWS = 256  # fewer rows per call re-read a large vocabulary's head weight more often than they use it
LARGE_MODEL = 50_000_000  # parameters from which a model's matmuls use intra-op threads well: no worker threads
BAND = 0.9  # a large model's batch holds rows at least this share of its longest: little compute on padding

Batch = tuple[
    torch.Tensor, torch.Tensor | None, torch.Tensor, torch.Tensor
]  # ids, mask or None, targets, set index per row


def build_batches(eval_sets: Sequence[EvalSet], batch_size: int) -> list[Batch]:
    """Batches over the windows of all `eval_sets`, longest first, so that small sets (screening
    slices) and each set's last windows share batches."""
    windows = sorted(
        ((w, start, i) for i, es in enumerate(eval_sets) for w, start in es.windows), key=lambda x: -len(x[0])
    )
    batches = []
    for b in range(0, len(windows), batch_size):
        batch = windows[b : b + batch_size]
        width = len(batch[0][0])
        ids = torch.zeros(len(batch), width, dtype=torch.long)
        mask = torch.zeros(len(batch), width, dtype=torch.long)
        targets = torch.full((len(batch), width), -100, dtype=torch.long)  # targets[:, j] = ids[:, j + 1]
        for row, (w, start, _) in enumerate(batch):
            ids[row, : len(w)] = torch.tensor(w)
            mask[row, : len(w)] = 1
            targets[row, start - 1 : len(w) - 1] = ids[row, start : len(w)]
        padded = len(batch[-1][0]) < width  # rows are sorted longest first
        owner = torch.tensor([i for _, _, i in batch])
        batches.append(
            (ids, mask if padded else None, targets, owner)
        )  # without padding, no mask: the causal fast path
    return batches


def banded(batch: Batch, band: float = BAND) -> list[Batch]:
    """A padded batch cut into batches of rows of similar length, each only as wide as its longest row.
    A large model's forward costs in proportion to the positions it runs, padding included; a small
    model's is mostly per-call overhead, so its batches are kept whole."""
    ids, mask, targets, owner = batch
    if mask is None:
        return [batch]
    lengths = mask.sum(1).tolist()  # rows are sorted longest first
    out, start = [], 0
    while start < len(lengths):
        width = lengths[start]
        end = start + 1
        while end < len(lengths) and lengths[end] >= band * width:
            end += 1
        rows = slice(start, end)
        padded = lengths[end - 1] < width
        out.append((ids[rows, :width], mask[rows, :width] if padded else None, targets[rows, :width], owner[rows]))
        start = end
    return out


def right_padded(rows: Sequence[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Token id rows as one zero-padded tensor, and the mask of their real positions."""
    ids = torch.zeros(len(rows), max(len(r) for r in rows), dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = torch.tensor(r)
        mask[i, : len(r)] = 1
    return ids, mask


def _worker_init() -> None:
    torch.set_num_threads(1)
    torch.set_flush_denormal(True)  # this thread only: a softmax over a large vocabulary makes many denormals


class Scorer:
    """Scores models on evaluation sets. One caller at a time; use as a context manager.

    On CPU a small model's batches are spread over `threads` single-threaded workers (its many small ops
    scale poorly with intra-op threads); a large model's run in the caller's thread with intra-op threads.
    Results do not depend on the split.
    head_only: run the LM head on scored positions only (None: for plain-head architectures).
    """

    def __init__(
        self,
        batch_size: int,
        device: torch.device | str = "cpu",
        threads: int | None = None,
        seed: Seed | None = None,
        head_only: bool | None = None,
    ):
        self.batch_size, self.device, self.threads = batch_size, torch.device(device), threads
        self.seed, self.head_only = seed, head_only
        self._reset()

    def _reset(self) -> None:
        self._batches: dict[tuple, list[Batch]] = {}  # by (eval-set digests): content hashes
        self._local = threading.local()  # per worker: the LM-head block
        self._executor: ThreadPoolExecutor | None = None
        self._models: dict[str, torch.nn.Module] = {}  # the seed's shape, on CPU and on the device
        self._mergers: dict[str, MergeMethod] = {}  # by method name, each held open across merges
        self._base: Path | None = None  # the seed's weights as a merge base, for methods that use one
        self._lock = threading.Lock()

    def __getstate__(self) -> dict:  # for remote workers: the settings, not the threads or buffers
        return {k: getattr(self, k) for k in ("batch_size", "device", "threads", "seed", "head_only")}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._reset()

    def __enter__(self) -> Scorer:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        if self._executor is not None:
            self._executor.shutdown()
        for method in self._mergers.values():
            method.close()
        self._reset()

    # ---- any model ------------------------------------------------------------------

    def score(self, model: torch.nn.Module, eval_sets: Sequence[EvalSet | TaskSet]) -> list[Score]:
        """The model's score on each of `eval_sets`: text sets in one pass over shared batches, then task sets."""
        model.eval()
        texts = [es for es in eval_sets if isinstance(es, EvalSet)]
        scored = dict(zip((es.digest for es in texts), self._score_texts(model, texts))) if texts else {}
        for ts in eval_sets:
            if isinstance(ts, TaskSet) and ts.digest not in scored:
                scored[ts.digest] = self._score_task(model, ts)
        return [scored[es.digest] for es in eval_sets]

    def _head_only(self, model: torch.nn.Module) -> bool:
        if self.head_only is not None:
            return self.head_only
        return getattr(model.config, "model_type", None) in HEAD_ONLY_TYPES

    def _score_texts(self, model: torch.nn.Module, eval_sets: Sequence[EvalSet]) -> list[Score]:
        batches = self._batches_for(eval_sets)
        large = self._large(model)
        workers = 1 if large else self._workers()
        if large:
            batches = [b for batch in batches for b in banded(batch)]
        if self.device.type == "cpu" and len(batches) < workers:  # few windows (screening slices): split the rows
            batches = [
                tuple(None if x is None else x[rows] for x in b)
                for b in batches
                for rows in torch.arange(len(b[0])).tensor_split(workers)
                if len(rows)
            ]
        head_only = self._head_only(model)

        def batch_nll(batch) -> list[float]:
            ids, mask, targets, owner = batch
            with torch.inference_mode(), autocast(self.device):  # both are per thread
                rows = self._row_nll(
                    model,
                    ids.to(self.device),
                    None if mask is None else mask.to(self.device),
                    targets.to(self.device),
                    head_only,
                )
            return torch.zeros(len(eval_sets), dtype=torch.float64).index_add_(0, owner, rows.double().cpu()).tolist()

        per_batch = self._map(batch_nll, batches) if workers > 1 else [batch_nll(b) for b in batches]
        scores = []
        for i, es in enumerate(eval_sets):
            nll = sum(b[i] for b in per_batch)  # in batch order, whichever worker scored each batch
            counted = sum(int((targets[owner == i] != -100).sum()) for _, _, targets, owner in batches)
            if counted != es.tokens:
                raise AssertionError(f"scored {counted} tokens of '{es.name}', expected {es.tokens}")
            scores.append(Score(nll, es.tokens, es.bytes))
        return scores

    def _score_task(self, model: torch.nn.Module, ts: TaskSet) -> TaskScore:
        """Every item's context encoded once; its choices run on the context's key/value cache."""
        head_only, large = self._head_only(model), self._large(model)
        order = sorted(range(len(ts.items)), key=lambda i: -len(ts.items[i][0]))  # similar contexts share a batch
        groups, rows = [], 0
        for i in order:
            n = len(ts.items[i][1])
            if groups and rows + n <= self.batch_size:
                groups[-1].append(i)
                rows += n
            else:
                groups.append([i])
                rows = n

        def group_loglik(items: list[int]) -> list[list[float]]:
            with torch.inference_mode(), autocast(self.device):
                return self._choice_loglik(model, [ts.items[i] for i in items], head_only)

        workers = 1 if large else self._workers()
        per_group = self._map(group_loglik, groups) if workers > 1 else [group_loglik(g) for g in groups]
        loglik: list[list[float]] = [[] for _ in ts.items]
        for items, lls in zip(groups, per_group):
            for i, ll in zip(items, lls):
                loglik[i] = ll
        return task_score(ts, loglik)

    def _choice_loglik(self, model, items: list, head_only: bool) -> list[list[float]]:
        """Summed log-probability of each choice's tokens given its item's context, for a group of items:
        the contexts (right-padded) in one forward pass, then every choice in one pass over their cache."""
        dev = self.device
        ids, mask = right_padded([ctx for ctx, _, _, _ in items])
        lengths = mask.sum(1)
        body = model.base_model if head_only else model
        out = body(input_ids=ids.to(dev), attention_mask=mask.to(dev), use_cache=True)
        states = out.last_hidden_state if head_only else out.logits
        last = states[torch.arange(len(items), device=dev), lengths.to(dev) - 1]  # predicts each choice's first token
        owner = torch.tensor([row for row, (_, choices, _, _) in enumerate(items) for _ in choices])
        choices = [c for _, cs, _, _ in items for c in cs]
        cids, cmask = right_padded(choices)
        longest = cids.shape[1]
        cache = out.cache
        cache.reorder_cache(owner.to(dev))  # one copy of its item's context per choice
        last_real = torch.tensor([len(c) - 1 for c in choices])[:, None]
        positions = lengths[owner, None] + torch.minimum(torch.arange(longest), last_real)  # padding: within range
        out = body(
            input_ids=cids.to(dev),
            attention_mask=torch.cat([mask[owner], cmask], 1).to(dev),
            position_ids=positions.to(dev),
            cache=cache,
            use_cache=True,
        )
        following = out.last_hidden_state if head_only else out.logits
        states = torch.cat([last[owner.to(dev), None], following[:, :-1]], 1)  # the state before each choice token
        keep = cmask.bool().to(dev)
        if head_only:
            nll = self._head_nll(states[keep], cids.to(dev)[keep], model.get_output_embeddings())
        else:
            nll = F.cross_entropy(states[keep].float(), cids.to(dev)[keep], reduction="none")
        per_choice = torch.zeros(len(choices), dtype=torch.float64).index_add_(
            0, keep.cpu().nonzero()[:, 0], -nll.double().cpu()
        )
        out_ll, at = [], 0
        for _, cs, _, _ in items:
            out_ll.append(per_choice[at : at + len(cs)].tolist())
            at += len(cs)
        return out_ll

    def _batches_for(self, eval_sets: Sequence[EvalSet]) -> list[Batch]:
        key = tuple(es.digest for es in eval_sets)
        if key not in self._batches:
            if len(self._batches) >= 64:
                self._batches.pop(next(iter(self._batches)))
            self._batches[key] = build_batches(eval_sets, self.batch_size)
        return self._batches[key]

    @staticmethod
    def _large(model: torch.nn.Module) -> bool:
        """Large enough that the caller's intra-op threads beat single-threaded workers."""
        return sum(p.numel() for p in model.parameters()) >= LARGE_MODEL

    def _workers(self) -> int:
        return self.threads or DEFAULT_THREADS

    def _start_workers(self) -> ThreadPoolExecutor:
        """All workers started and initialised now: none sets its thread count later, while training runs."""
        n = self._workers()
        executor = ThreadPoolExecutor(n, thread_name_prefix="score", initializer=_worker_init)
        ready = threading.Barrier(n)  # each submit finds no idle worker, so starts a new one
        for started in [executor.submit(ready.wait, timeout=60) for _ in range(n)]:
            started.result()
        return executor

    def _map(self, fn, batches: list) -> list:
        if self.device.type != "cpu":
            return [fn(b) for b in batches]
        threads = torch.get_num_threads()
        if self._executor is None:
            self._executor = self._start_workers()
        try:
            return list(self._executor.map(fn, batches))
        finally:
            torch.set_num_threads(threads)  # a worker's set_num_threads(1) also lowers the default for new threads

    def _row_nll(
        self, model, ids: torch.Tensor, mask: torch.Tensor | None, targets: torch.Tensor, head_only: bool
    ) -> torch.Tensor:
        """Summed NLL of each row's `targets` (-100 = not scored), each predicted from its prefix.

        With head_only the head runs only on scored positions, in blocks: with rolling windows
        half the positions are context, and the full logits tensor is never built.
        """
        if head_only:
            hidden = model.base_model(input_ids=ids, attention_mask=mask, use_cache=False).last_hidden_state
            keep = targets != -100
            nll = self._head_nll(hidden[keep], targets[keep], model.get_output_embeddings())
            return torch.zeros(len(ids), dtype=torch.float32, device=nll.device).index_add_(
                0, keep.nonzero()[:, 0], nll
            )
        logits = model(input_ids=ids, attention_mask=mask, use_cache=False).logits
        nll = F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(), ignore_index=-100, reduction="none")
        return nll.view(targets.shape).sum(1)

    def _head_nll(self, h: torch.Tensor, t: torch.Tensor, head: torch.nn.Module) -> torch.Tensor:
        """NLL per position = logsumexp(logits) - target logit, over row blocks of the head's output."""
        weight = getattr(head, "weight", None)
        rows = max(HEAD_ROWS, HEAD_BLOCK // (weight.shape[0] if weight is not None else HEAD_BLOCK))
        out = torch.empty(len(t), dtype=torch.float32, device=h.device)
        if (
            weight is None
            or getattr(head, "bias", None) is not None
            or weight.dtype != torch.float32
            or h.dtype != torch.float32
            or h.device.type != "cpu"
        ):
            for i in range(0, len(t), rows):
                logits = head(h[i : i + rows]).float()
                out[i : i + rows] = torch.logsumexp(logits, -1) - logits.gather(1, t[i : i + rows, None]).squeeze(1)
            return out
        # float32 on CPU: one reused block per worker, updated in place (no fresh logits tensors)
        buf = getattr(self._local, "buf", None)
        if buf is None or buf.shape != (rows, weight.shape[0]):
            buf = self._local.buf = torch.empty(rows, weight.shape[0])
        for i in range(0, len(t), rows):
            block = buf[: len(h[i : i + rows])]
            torch.mm(h[i : i + rows], weight.t(), out=block)
            target = block.gather(1, t[i : i + rows, None]).squeeze(1)
            top = block.amax(1, keepdim=True)
            out[i : i + rows] = block.sub_(top).exp_().sum(1).log_().add_(top.squeeze(1)).sub_(target)
        return out

    # ---- merged models of the seed's shape -------------------------------------------

    def score_merge(
        self,
        paths: Sequence[str | Path],
        weights: Sequence[float] | None,
        eval_sets: Sequence[EvalSet | TaskSet],
        merge: MergeSpec | None = None,
    ) -> list[Score]:
        """Merge the models (by `merge`, default linear) straight into the parameters of a seed-shaped model
        and score it."""
        if self.seed is None:
            raise ValueError("a Scorer without a seed cannot score merged models")
        merge = merge or MergeSpec("linear")
        with self._lock:
            cpu = self._model("cpu")
            if merge.method not in self._mergers:
                self._mergers[merge.method] = method_class(merge.method)()
            method = self._mergers[merge.method]
            if method.uses_base and self._base is None:
                self._base = self.seed.base_weights()
            method.merge(paths, weights, out=cpu.state_dict(), base=self._base, params=dict(merge.params))
            model = cpu
            if self.device.type != "cpu":
                model = self._model(str(self.device))
                model.load_state_dict(cpu.state_dict())
            return self.score(model, eval_sets)

    def score_file(self, path: str | Path, eval_sets: Sequence[EvalSet]) -> list[Score]:
        return self.score_merge([path], None, eval_sets)

    def _model(self, device: str) -> torch.nn.Module:
        if device not in self._models:
            base = self._models.get("cpu") or self.seed.load_model()
            self._models[device] = base if device == "cpu" else copy.deepcopy(base).to(device)
        return self._models[device]


def score_sets(
    model: torch.nn.Module,
    eval_sets: Sequence[EvalSet],
    batch_size: int,
    device: torch.device | str,
    threads: int | None = None,
    head_only: bool | None = None,
) -> list[Score]:
    """One-off scoring; hold a Scorer open to reuse its threads, buffers and batches."""
    with Scorer(batch_size, device, threads, head_only=head_only) as scorer:
        return scorer.score(model, eval_sets)


def score_model(
    model: torch.nn.Module,
    eval_set: EvalSet,
    batch_size: int,
    device: torch.device | str,
    threads: int | None = None,
    head_only: bool | None = None,
) -> Score:
    return score_sets(model, [eval_set], batch_size, device, threads, head_only)[0]
