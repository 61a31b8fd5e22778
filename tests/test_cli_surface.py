"""The CLI as a user meets it: the real `dataassess` executable, its errors, its speed, its ranking views."""

import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from dataassess import pipeline
from dataassess.store import Store
from flows.cli import app
from tests.conftest import DEMO, latest, run_pipeline

EXE = str(Path(sys.executable).with_name("dataassess"))


def run_cli(args, cwd, env=None, timeout=120):
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("DATAASSESS_")}
    full_env.update(env or {})
    return subprocess.run([EXE, *args], cwd=cwd, env=full_env, capture_output=True, text=True, timeout=timeout)


BAD_INPUTS = [
    # (arguments after --config/--store, extra environment, config file text, what the error says)
    (["intake", "no-such-corpus"], {}, "", "corpus not found: no-such-corpus"),
    (["intake", "onlyfile"], {}, "", "no partition subfolders"),
    (["intake", "mistyped/corpus/path"], {}, "", "corpus not found: mistyped/corpus/path"),
    (["intake", "CORPUS"], {"DATAASSESS_RANK__BY": "no-such-set"}, "", "cannot rank by 'no-such-set'"),
    (["serve", "no-such-corpus"], {}, "", "corpus not found"),
    (["ranking", "--top", "0"], {}, "", "Invalid value for '--top'"),
    (["ranking", "--top", "-2"], {}, "", "Invalid value for '--top'"),
    (["score", "CORPUS", "-m", ","], {}, "", "names no units"),
    (["config"], {}, "[train]\nlrr = 1e-4\n", "unknown key 'train.lrr' (from file"),
    (["config"], {}, "[rank]\nk-max = 3\n", "unknown key 'rank.k-max'"),
    (["config"], {"DATAASSESS_TRAIN__LRR": "1e-4"}, "", "unknown key 'train.lrr' (from env DATAASSESS_TRAIN__LRR)"),
    (["config"], {"DATAASSESS_DEVICE": "tpu"}, "", "device = 'tpu' (from env DATAASSESS_DEVICE)"),
    (["config"], {"DATAASSESS_STROE": "x"}, "", "unknown setting DATAASSESS_STROE"),
    (["config"], {"DATAASSESS_RANK__K_MAX": "0"}, "", "rank.k_max = '0' (from env DATAASSESS_RANK__K_MAX)"),
    (["config"], {}, "[units]\ntokens = 0\n", "units.tokens = 0 (from file"),
    (["config"], {}, "[train\nlr = 1e-4\n", "is not valid TOML: Expected ']'"),
    (["config"], {"DATAASSESS_TRAIN__BETA1": "9"}, "", "train.beta1 = '9' (from env DATAASSESS_TRAIN__BETA1)"),
    (["config"], {}, "[train]\ngrad_clip = -1\n", "train.grad_clip = -1 (from file"),
    (["config"], {}, "[tiny]\nn_head = 3\n", "n_embd (128) must be a multiple of n_head (3)"),
    (["config"], {"DATAASSESS_TINY__N_HEAD": "3"}, "", "[tiny] (from env DATAASSESS_TINY__N_HEAD): n_embd (128)"),
    (["config"], {"DATAASSESS_RANK__BUDGET_TOKENS": "100"}, "", "rank.budget_tokens = 100 is less than one training"),
    (["config"], {}, '[train]\nlr = "fast"\n', "train.lr = 'fast' (from file"),
    (
        ["config"],
        {"DATAASSESS_UNITS__TOKENS": "4096"},
        '[units]\ntokens = "lots"\n',
        "units.tokens = 'lots' (from file",
    ),
    (["config"], {}, "[rank]\nbudget_tokens = -5\n", "rank.budget_tokens = -5"),
    (
        ["intake", "CORPUS"],
        {"DATAASSESS_UNITS__TOKENS": "100000000"},
        "",
        "units.tokens = 100,000,000 is larger than every partition",
    ),
    (["--store", "onlyfile/notes.txt", "config"], {}, "", "is a file; the store is a folder"),
    (["intake", "CORPUS"], {}, '[merge]\nmethod = "nope"\n', "unknown merge method 'nope'; methods are"),
    (["intake", "CORPUS"], {}, '[merge]\nmethod = "ties"\n[merge.params]\ndensity = 0\n', "density must be in (0, 1]"),
    (["intake", "CORPUS"], {}, "[merge.params]\nscale = 2\n", "merge method 'norm_matched' has no parameter scale"),
    (["fidelity", "CORPUS", "--budget", "nope", "--no-mlflow"], {}, "", "unknown budget 'nope'; budgets are fixed"),
    (["intake", "CORPUS", "--eval-sets", "EVALS"], {}, "", "empty evaluation set: no files"),
    (["seed"], {"DATAASSESS_BASE_MODEL": "notamodel"}, "", "cannot load base_model 'notamodel': Unrecognized model"),
    (["units", "BADJSONL"], {}, "", "could not load dataset: ArrowInvalid: JSON parse error: Invalid value. in row 1"),
    (["no-such-command"], {}, "", "No such command"),
    (["demo", "--corpus", "CORPUS"], {}, "", "--corpus and --late go together"),
    (["demo", "--pool", "../escaped"], {}, "", "invalid pool name '../escaped'"),
    (["intake", "CORPUS", "--pool", "a/b"], {}, "", "invalid pool name 'a/b'"),
    (["ranking", "--pool", ".."], {}, "", "invalid pool name '..'"),
    (["demo", "--corpus", "CORPUS", "--late", "satire,nosuch"], {}, "", "--late names no partition of"),
    (
        ["demo", "--corpus", "CORPUS", "--late", ",".join(p.name for p in (DEMO / "corpus").iterdir())],
        {},
        "",
        "both waves",
    ),
]


def test_every_bad_input_ends_in_one_error_line_and_trains_nothing(tmp_path):
    (tmp_path / "onlyfile").mkdir()
    (tmp_path / "onlyfile" / "notes.txt").write_text("a file where partitions should be\n")
    evals = tmp_path / "evals"  # one good evaluation set, one empty: refused before the seed is built
    (evals / "empty").mkdir(parents=True)
    (evals / "good").mkdir()
    (evals / "good" / "a.txt").write_text("Some held-out text. " * 50)
    (tmp_path / "notamodel").mkdir()  # a folder with a config.json that names no architecture
    (tmp_path / "notamodel" / "config.json").write_text("{}")
    (tmp_path / "bad.jsonl").write_text('{"text": "a first document", "domain": "a"}\nnot json\n')
    places = {"CORPUS": str(DEMO / "corpus"), "EVALS": str(evals), "BADJSONL": str(tmp_path / "bad.jsonl")}

    def attempt(case: int):  # each in a store and config of its own, so that two can run at once
        args, env, toml, _ = BAD_INPUTS[case]
        config, store = tmp_path / f"dataassess-{case}.toml", tmp_path / f"store-{case}"
        config.write_text(toml)
        args = [places.get(a, a) for a in args]
        return run_cli(["--config", str(config), "--store", str(store), *args], tmp_path, env), store

    with ThreadPoolExecutor(2) as pool:  # the commands are processes: two cores, two at a time
        results = list(pool.map(attempt, range(len(BAD_INPUTS))))
    for (args, _, _, says), (res, store) in zip(BAD_INPUTS, results):
        lines = res.stderr.strip().splitlines()
        assert res.returncode == 2, (args, res.stdout, res.stderr)
        assert len(lines) == 1 and lines[0].startswith("error: ") and says in lines[0], (args, res.stderr)
        assert "Traceback" not in res.stderr + res.stdout and "pydantic.dev" not in res.stderr
        assert not [*(store / "seeds").glob("*"), *(store / "models").glob("*")], f"{args} built or trained something"


@pytest.mark.parametrize("name", ["../escaped", "..", "a/b", "a\\b", "", ".hidden", "x" * 101, "/abs"])
def test_a_partition_name_must_be_one_plain_path_component(tmp_path, name):
    root = tmp_path / "work" / "corpus"
    root.mkdir(parents=True)
    res = run_cli(
        [
            "--store",
            str(tmp_path / "store"),
            "add-partition",
            str(DEMO / "corpus" / "jargon"),
            "--corpus",
            str(root),
            "--name",
            name,
        ],
        tmp_path,
    )
    lines = res.stderr.strip().splitlines()
    assert res.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: "), (name, res.stderr)
    assert "partition name" in lines[0], lines[0]
    assert list(root.iterdir()) == [] and sorted(p.name for p in (tmp_path / "work").iterdir()) == ["corpus"]
    assert not (tmp_path / "escaped").exists() and not (tmp_path / "abs").exists()


def test_help_config_and_a_missing_corpus_answer_fast_importing_no_heavy_library(tmp_path):
    probe = (
        "import sys; from flows.cli import app\n"
        "try: app(['--help'])\nexcept SystemExit: pass\n"
        "print(sorted(m for m in ('torch', 'transformers', 'datasets', 'mlflow', 'prefect', 'pandas') if m in "
        "sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, capture_output=True, text=True, check=True)
    assert out.stdout.strip().splitlines()[-1] == "[]"
    store = ["--store", str(tmp_path / "s")]
    for args, code in (([*store, "--help"], 0), ([*store, "config"], 0), ([*store, "intake", "no-such-corpus"], 2)):
        best = min(_timed(args, tmp_path, code) for _ in range(3))
        assert best < 1.0, f"dataassess {' '.join(args)} took {best:.2f} s"


def _timed(args, cwd, code) -> float:
    start = time.perf_counter()
    res = run_cli(args, cwd)
    assert res.returncode == code, res.stderr
    return time.perf_counter() - start


def test_commands_create_nothing_in_the_working_folder_and_prefect_lives_in_the_store(tmp_path):
    work, store, root = tmp_path / "work", tmp_path / "elsewhere" / "store", tmp_path / "corpus"
    work.mkdir()
    root.mkdir()
    run_cli(["--store", str(store), "ranking"], work)
    run_cli(["--store", str(store), "config"], work)
    res = run_cli(
        ["--store", str(store), "add-partition", str(DEMO / "corpus" / "jargon"), "--corpus", str(root)],
        work,
        {"PREFECT_HOME": str(tmp_path / "not-here")},
    )
    assert res.returncode == 0, res.stderr
    assert list(work.iterdir()) == []
    assert (store / "prefect").is_dir() and not (tmp_path / "not-here").exists()


def test_internal_errors_say_they_are_bugs_and_show_the_traceback_with_verbose(settings, monkeypatch):
    def broken(*args, **kwargs):
        raise KeyError("weights")

    monkeypatch.setattr(pipeline, "latest_snapshot", broken)
    res = CliRunner().invoke(app, ["--store", str(settings.store), "ranking"])
    assert (
        res.exit_code == 1
        and "internal error (a bug in dataassess" in res.output
        and "KeyError: 'weights'" in res.output
    )
    assert "Traceback" not in res.output and "rerun with -v" in res.output
    res = CliRunner().invoke(app, ["--store", str(settings.store), "-v", "ranking"])
    assert res.exit_code == 1 and "Traceback" in res.output


def test_ranking_by_one_set_resorts_the_stored_scores(settings, corpus):
    run_pipeline(corpus, settings, progress=False)
    stored = latest(settings)
    target = sorted(stored["ranking"][0]["scores"])[-1]
    res = CliRunner().invoke(app, ["--store", str(settings.store), "ranking", "--by", target, "--json"])
    assert res.exit_code == 0, res.output
    rows = json.loads(res.stdout)["rows"]
    assert [r["scores"] for r in rows] == sorted((r["scores"] for r in stored["ranking"]), key=lambda s: s[target])
    assert [r["rank"] for r in rows] == list(range(1, len(rows) + 1))
    assert latest(settings)["created"] == stored["created"], "nothing recomputed or rewritten"
    res = CliRunner().invoke(app, ["--store", str(settings.store), "ranking", "--by", "no-such-set"])
    assert res.exit_code == 2 and "cannot rank by 'no-such-set'" in res.output


def test_rankings_are_per_pool(settings, corpus):
    run_pipeline(corpus, settings, pool="first", progress=False)
    run_pipeline(corpus, settings, pool="second", progress=False)
    res = CliRunner().invoke(app, ["--store", str(settings.store), "ranking"])
    assert res.exit_code == 2 and "several pools: first, second" in res.output
    res = CliRunner().invoke(app, ["--store", str(settings.store), "ranking", "--pool", "second", "--json"])
    assert res.exit_code == 0 and json.loads(res.stdout)["pool"] == "second"
    assert json.loads(res.stdout)["previous"] is None, "a pool's changes are against its own previous ranking"


def test_a_pool_is_named_after_its_corpus_root_given_as_a_path_a_dot_or_a_hub_id(tmp_path, monkeypatch):
    (tmp_path / "web text" / "sub").mkdir(parents=True)
    monkeypatch.chdir(tmp_path / "web text")
    assert [pipeline.pool_name(c) for c in (".", "sub/..", "sub/", "hf://org/books.v2")] == [
        "web-text",
        "web-text",
        "sub",
        "books-v2",
    ]


def test_export_writes_the_merged_model_as_a_folder_from_pretrained_loads(settings, corpus, tmp_path):
    from transformers import AutoModelForCausalLM

    result = run_pipeline(corpus, settings, progress=False)
    a, b = sorted(result.models)[:2]
    out = tmp_path / "exported"
    res = CliRunner().invoke(app, ["--store", str(settings.store), "export", f"{a},{b}", str(out)])
    assert res.exit_code == 0, res.output
    model = AutoModelForCausalLM.from_pretrained(out)
    store = Store(settings.store)
    wa, wb = (load_file(str(store.weights(result.models[u].key))) for u in (a, b))
    (base,) = [load_file(str(p)) for p in (settings.store / "seeds").glob("*/base.safetensors")]
    state = model.state_dict()
    assert settings.merge.method == "norm_matched"  # by hand: the mean update, stretched to the updates' mean length
    for name, tensor in wa.items():
        da, db = tensor.double() - base[name].double(), wb[name].double() - base[name].double()
        mean = (da + db) / 2
        expected = base[name].double() + mean * ((da.norm() + db.norm()) / 2 / mean.norm())
        torch.testing.assert_close(state[name].double(), expected, rtol=1e-5, atol=1e-6)
    res = CliRunner().invoke(app, ["--store", str(settings.store), "export", f"{a},{b}", str(out)])
    assert res.exit_code == 2 and "already exists" in res.output


def test_the_table_fits_120_columns_whatever_the_names():
    from dataassess.rank import format_table, rank
    from dataassess.types import RankedMixture

    sets = [f"a-rather-long-evaluation-set-name-{i}" for i in range(6)]
    units = [f"partition-with-a-long-name-{i}.u0" for i in range(4)]
    rows = [
        RankedMixture([a, b], {s: 100.0 + i + j for j, s in enumerate(sets)}, {s: 1.0 for s in sets})
        for i, (a, b) in enumerate([(units[0], units[1]), (units[2], units[3]), (units[0], units[3])])
    ]
    table = format_table(rank(rows), seed_scores={s: 200.0 for s in sets})
    assert max(map(len, table.splitlines())) <= 120
    assert "sets: s1 = a-rather-long-evaluation-set-name-0" in table and "(seed, reference)" in table
    many = [f"set{i}" for i in range(30)]
    wide = [RankedMixture([units[0]], {s: 50.0 for s in many}, {s: 1.0 for s in many})]
    table = format_table(rank(wide))
    assert max(map(len, table.splitlines())) <= 120 and "per-set perplexities: dataassess ranking --json" in table
