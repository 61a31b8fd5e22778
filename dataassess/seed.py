"""The seed model: the built-in `tiny` preset, an HF hub id, or a local model folder.

Every seed is materialized once as an HF folder in the store (config, safetensors
weights, tokenizer) and identified by the digest of those files.
"""

from __future__ import annotations

import gzip
import json
import logging
import threading
from array import array
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, GPT2Config, LlamaConfig, PreTrainedTokenizerFast
from transformers.utils import logging as hf_logging

from .config import Settings
from .errors import UserError
from .store import Store, atomic_dir, digest_json, intact, read_json, sha256_file, write_json
from .train import resolve_device, to_sequences, train_lm, warmup_cosine
from .weights import os_errors, save_state, save_weights

log = logging.getLogger(__name__)
TINY_PRESETS = {"tiny": "gpt2", "tiny-llama": "llama"}
EOS = "<|endoftext|>"
SEED_FILES = ("config.json", "model.safetensors", "tokenizer.json")
# from_pretrained is not thread-safe: its meta-device init is process-wide (transformers#41782)
_load_lock = threading.Lock()


@contextmanager
def no_hf_progress_bars() -> Iterator[None]:
    """transformers' progress bars off within the block, as they were after."""
    enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if enabled:
            hf_logging.enable_progress_bar()


@dataclass(frozen=True)
class Seed:
    path: Path  # HF model folder
    digest: str  # of its weights, config and tokenizer
    tokenizer_digest: str
    source: str

    @property
    def imported(self) -> bool:
        """Pretrained elsewhere (a hub id, a folder, a GGUF file), not built here."""
        return self.source not in TINY_PRESETS

    def load_model(self) -> torch.nn.Module:
        with _load_lock, no_hf_progress_bars():  # a bar per load of a large model (every merge): ours say more
            return AutoModelForCausalLM.from_pretrained(self.path, dtype=torch.float32, use_safetensors=True)

    def load_tokenizer(self):
        return AutoTokenizer.from_pretrained(self.path)

    def base_weights(self) -> Path:
        """The seed's weights laid out as a unit model's (the same tensor names, tied ones stored once): the base
        of merge methods that merge updates. Written beside the seed once, atomically."""
        path = self.path / "base.safetensors"
        if not intact(path):
            save_weights(self.load_model(), path)
        return path


def bundled_seed_text() -> Path:
    return Path(str(resources.files("dataassess") / "data" / "seed_text.jsonl.gz"))


def read_texts(path: Path) -> list[str]:
    """Texts of a .jsonl(.gz) file (field `text`) or a .txt/.md file, or of every such file in a folder
    (where links are followed only when they resolve inside it)."""
    path = Path(path)
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file())
        for p in files:
            if not p.resolve().is_relative_to(path.resolve()):
                raise UserError(f"tiny.text: {p} is a link out of {path}, to {p.resolve()}; links must stay inside it")
        return [t for p in files for t in read_texts(p)]
    if path.name.endswith((".jsonl", ".jsonl.gz")):
        opener = gzip.open if path.name.endswith(".gz") else open
        with opener(path, "rt", encoding="utf-8") as f:
            return [json.loads(line)["text"] for line in f if line.strip()]
    return [path.read_text(encoding="utf-8")]


def train_tokenizer(texts: list[str], vocab_size: int) -> PreTrainedTokenizerFast:
    from tokenizers import ByteLevelBPETokenizer

    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(texts, vocab_size=vocab_size, min_frequency=2, special_tokens=[EOS], show_progress=False)
    return PreTrainedTokenizerFast(tokenizer_object=bpe, bos_token=EOS, eos_token=EOS, unk_token=EOS, pad_token=EOS)


def tiny_config(arch: str, cfg, vocab_size: int, ctx: int, eos_id: int):
    if arch == "gpt2":
        return GPT2Config(
            vocab_size=vocab_size,
            n_positions=ctx,
            n_embd=cfg.n_embd,
            n_layer=cfg.n_layer,
            n_head=cfg.n_head,
            resid_pdrop=0.0,
            embd_pdrop=0.0,
            attn_pdrop=0.0,
            bos_token_id=eos_id,
            eos_token_id=eos_id,
            tie_word_embeddings=True,
            activation_function="gelu_pytorch_tanh",  # GPT-2's tanh GELU, as one fused op
        )
    return LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=cfg.n_embd,
        intermediate_size=4 * cfg.n_embd,
        num_hidden_layers=cfg.n_layer,
        num_attention_heads=cfg.n_head,
        num_key_value_heads=cfg.n_head,
        max_position_embeddings=ctx,
        bos_token_id=eos_id,
        eos_token_id=eos_id,
        pad_token_id=eos_id,
        tie_word_embeddings=True,
    )


PIECE_CHARS = 1 << 16  # a longer document is tokenized in pieces of at most this many characters
BATCH_CHARS = 1 << 20  # characters per tokenizer call


def text_pieces(text: str, size: int = PIECE_CHARS) -> Iterator[str]:
    """`text` in pieces of at most `size` characters, each cut just before a space that follows a
    non-space (where a byte-level BPE's pre-tokens begin anyway), so that memory stays bounded
    whatever the document's length."""
    start = 0
    while len(text) - start > size:
        cut = text.rfind(" ", start + 1, start + size)
        while cut > start and text[cut - 1].isspace():
            cut = text.rfind(" ", start + 1, cut)
        cut = cut if cut > start else start + size
        yield text[start:cut]
        start = cut
    yield text[start:]


def encode(tokenizer, texts: Iterable[str], eos: bool = True, limit: int | None = None) -> torch.Tensor:
    """Token ids of `texts`, one after another (each ended by EOS when `eos`), as int32, in bounded
    memory: long documents go in pieces, and pieces in batches. Stops after `limit` ids."""
    out = array("i")
    batch: list[tuple[str, bool]] = []  # (piece, ends its document)

    def flush() -> None:
        if not batch:
            return
        for (_, last), ids in zip(batch, tokenizer([p for p, _ in batch], add_special_tokens=False)["input_ids"]):
            out.extend(ids)
            if last and eos:
                out.append(tokenizer.eos_token_id)
        batch.clear()

    chars = 0
    for text in texts:
        pieces = list(text_pieces(text))
        for i, piece in enumerate(pieces):
            batch.append((piece, i == len(pieces) - 1))
            chars += len(piece)
            if chars >= BATCH_CHARS:
                flush()
                chars = 0
                if limit is not None and len(out) >= limit:
                    return torch.frombuffer(out, dtype=torch.int32)[:limit].clone()
    flush()
    ids = torch.frombuffer(out, dtype=torch.int32) if len(out) else torch.zeros(0, dtype=torch.int32)
    return (ids if limit is None else ids[:limit]).clone()


def tokenize_stream(tokenizer, texts: list[str]) -> torch.Tensor:
    """Documents joined into one token stream, each ended by EOS."""
    return encode(tokenizer, texts)


def _build_tiny(settings: Settings, arch: str, out: Path, progress: bool) -> None:
    cfg = settings.tiny
    texts = read_texts(Path(cfg.text) if cfg.text else bundled_seed_text())
    tokenizer = train_tokenizer(texts, cfg.vocab_size)
    torch.manual_seed(settings.train.seed)
    model = AutoModelForCausalLM.from_config(
        tiny_config(arch, cfg, len(tokenizer), settings.train.seq_len, tokenizer.eos_token_id)
    )
    seqs = to_sequences(tokenize_stream(tokenizer, texts), settings.train.seq_len)
    train_cfg = settings.train.model_copy(update={"lr": cfg.lr})
    result = train_lm(
        model,
        seqs,
        train_cfg,
        cfg.tokens,
        resolve_device(settings.device),
        lr_at=warmup_cosine(cfg.lr, cfg.min_lr, cfg.warmup_steps),
        desc="seed",
        progress=progress,
    )
    log.info("tiny seed: %d steps, final loss %.3f, %.0f s", result.steps, result.final_loss, result.wall_s)
    with os_errors(out):
        model.cpu().save_pretrained(out)
    tokenizer.save_pretrained(out)
    write_json(
        out / "seed_train.json",
        {"steps": result.steps, "tokens": result.tokens, "final_loss": result.final_loss, "wall_s": result.wall_s},
    )


def _import_model(settings: Settings, out: Path) -> None:
    """An HF hub id or local folder (optionally a GGUF file in it), saved as safetensors. Weights are read
    from safetensors or GGUF only (never a pickled .bin), and no code from the model's repository runs."""
    kwargs = {"gguf_file": settings.gguf_file} if settings.gguf_file else {"use_safetensors": True}
    try:
        model = AutoModelForCausalLM.from_pretrained(
            settings.base_model, dtype=torch.float32, trust_remote_code=False, **kwargs
        )
        tokenizer = AutoTokenizer.from_pretrained(
            settings.base_model, trust_remote_code=False, gguf_file=settings.gguf_file
        )
    except (OSError, ValueError) as e:  # not found, or not a model transformers knows
        raise UserError(
            f"cannot load base_model '{settings.base_model}': {str(e).rstrip('.')}. Use a local model folder or an HF "
            "hub id reachable from here with model.safetensors (pickled .bin weights are not read), a GGUF file "
            "(gguf_file), or 'tiny'."
        ) from None
    if tokenizer.eos_token_id is None:
        raise UserError(f"base_model '{settings.base_model}' has a tokenizer without an EOS token")
    try:
        with os_errors(out):
            model.save_pretrained(out)
    except ValueError:  # GGUF-loaded models are dequantized floats but refuse save_pretrained
        config = model.config
        if hasattr(config, "quantization_config"):
            del config.quantization_config
        config.save_pretrained(out)
        # every key, tied ones included, so from_pretrained re-ties them the right way round
        save_state(
            {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}, out / "model.safetensors"
        )
    tokenizer.save_pretrained(out)


def _source_key(settings: Settings) -> str:
    key = {"base_model": settings.base_model, "gguf_file": settings.gguf_file}
    if settings.base_model in TINY_PRESETS:
        key.update(tiny=settings.tiny.model_dump(), seq_len=settings.train.seq_len, seed=settings.train.seed)
    elif Path(settings.base_model).is_dir():
        key["files"] = sorted(
            (p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in Path(settings.base_model).iterdir() if p.is_file()
        )
    return digest_json(key)[:16]


def _seed_intact(folder: Path, meta: dict) -> bool:
    """Do the seed's files match the digests recorded when it was built? A mismatch is reported and the seed rebuilt."""
    for name, sha in meta["files"].items():
        path = folder / name
        if not path.exists() or sha256_file(path) != sha:
            log.warning(
                "store: seed file %s does not match the digest recorded when it was built: rebuilding the seed", path
            )
            return False
    return True


def prepare_seed(settings: Settings, store: Store, progress: bool = True) -> Seed:
    """Build or import the seed once; later calls return the stored one."""
    folder = store.seed_dir(_source_key(settings))
    meta_path = folder / "seed.json"
    if meta_path.exists() and not _seed_intact(folder, read_json(meta_path)):
        meta_path.unlink()
    if not meta_path.exists():
        with atomic_dir(folder) as tmp:
            if settings.base_model in TINY_PRESETS:
                _build_tiny(settings, TINY_PRESETS[settings.base_model], tmp, progress)
            else:
                _import_model(settings, tmp)
            files = {
                p.name: sha256_file(p)
                for p in sorted(tmp.iterdir())
                if p.suffix in (".json", ".safetensors", ".model", ".txt")
            }
            tok_files = {
                k: v for k, v in files.items() if k.startswith(("tokenizer", "vocab", "merges", "special_tokens"))
            }
            write_json(
                tmp / "seed.json",
                {
                    "source": settings.base_model,
                    "digest": digest_json(files),
                    "tokenizer_digest": digest_json(tok_files),
                    "files": files,
                },
            )
    meta = read_json(meta_path)
    return Seed(folder, meta["digest"], meta["tokenizer_digest"], meta["source"])


def find_seed(store: Store, digest: str) -> Seed | None:
    """The stored seed with this digest, if any."""
    for folder in sorted(store.root.glob("seeds/*")):
        if (folder / "seed.json").is_file() and (meta := read_json(folder / "seed.json"))["digest"] == digest:
            return Seed(folder, meta["digest"], meta["tokenizer_digest"], meta["source"])
    return None
