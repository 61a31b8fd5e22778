"""Task sets: gold-answer bits per byte and choice metrics beside perplexity, with real tiny models."""

import gzip
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from mlflow import MlflowClient
from typer.testing import CliRunner

from dataassess.corpus import eval_sets_from_folder
from dataassess.rank import format_table, rank
from dataassess.scoring import score_sets
from dataassess.store import Store
from dataassess.tasks import TaskSource, build_task_set
from dataassess.types import RankedMixture
from flows.cli import app
from registry.tracking import RANKINGS_EXPERIMENT, embedded_uri
from tests.conftest import DEMO, demo_docs, latest, write_jsonl, write_toml
from tests.test_cli_surface import run_cli

DEMO_TASKS = DEMO / "eval"


def hand_loglik(model, tok, context: str, choice: str) -> float:
    """log p(choice | context), summed over the choice's tokens, by one plain forward pass over both."""
    ctx = [tok.eos_token_id] + tok(context)["input_ids"]
    ans = tok(" " + choice)["input_ids"]
    with torch.no_grad():
        logp = torch.log_softmax(model(torch.tensor([ctx + ans])).logits[0].double(), -1)
    return sum(logp[len(ctx) - 1 + i, t].item() for i, t in enumerate(ans))


def test_gold_bpb_and_choice_metrics_equal_a_hand_computation_on_a_two_item_task(seed):
    model, tok = seed.load_model().eval(), seed.load_tokenizer()
    items = [
        ("The compiler reads the", ["source file", "blue sea of", "and then"], 0),
        ("A byte is eight", ["bits", "camels, a caravan"], 1),
    ]
    ts = build_task_set(TaskSource("t", None, "choice", items), tok, 128)
    [score] = score_sets(model, [ts], batch_size=3, device="cpu", threads=2)
    ll = [[hand_loglik(model, tok, c, ch) for ch in choices] for c, choices, _ in items]
    nbytes = [[len(ch.encode()) for ch in choices] for _, choices, _ in items]
    golds = [g for _, _, g in items]
    bpb = [-ll[i][g] / nbytes[i][g] / math.log(2) for i, g in enumerate(golds)]
    assert score.gold_bpb == pytest.approx(sum(bpb) / 2, rel=1e-5)
    assert score.perplexity == pytest.approx(2 ** (sum(bpb) / 2), rel=1e-5)
    per_byte = [int(np.argmax(np.array(ll[i]) / np.array(nbytes[i])) == g) for i, g in enumerate(golds)]
    raw = [int(np.argmax(ll[i]) == g) for i, g in enumerate(golds)]
    norm = [math.exp(ll[i][g]) / sum(math.exp(x) for x in ll[i]) for i, g in enumerate(golds)]
    assert score.choice_accuracy == sum(per_byte) / 2 and score.choice_accuracy_raw == sum(raw) / 2
    assert score.gold_prob_norm == pytest.approx(sum(norm) / 2, rel=1e-5)
    assert score.chance == pytest.approx((1 / 3 + 1 / 2) / 2) and score.items == 2
    # a gold continuation: gold_bpb only, the same hand computation
    gold = TaskSource("g", None, "gold", [(c, [choices[g]], 0) for c, choices, g in items])
    [g_score] = score_sets(model, [build_task_set(gold, tok, 128)], batch_size=2, device="cpu", threads=1)
    assert g_score.gold_bpb == pytest.approx(sum(bpb) / 2, rel=1e-5) and g_score.choice_accuracy is None


def seed_text_docs(n: int) -> list[str]:
    path = Path(__file__).resolve().parents[1] / "dataassess" / "data" / "seed_text.jsonl.gz"
    with gzip.open(path, "rt", encoding="utf-8") as f:
        docs = [json.loads(line)["text"] for line in f]
    return [d for d in docs if len(d) > 400][:n]


def test_choice_accuracy_picks_the_text_the_model_was_trained_on(seed):
    """The seed continue-trained on six passages picks each passage's own ending over endings of the same length
    from texts it never saw, and gives it most of the normalized probability."""
    model, tok = seed.load_model(), seed.load_tokenizer()
    others = [d["text"] for p in ("scripture-law", "drama-comedy", "satire") for d in demo_docs(p, 6)]
    items = []
    for i, doc in enumerate(seed_text_docs(6)):
        context, answer = " ".join(doc[:160].split()[:-1]), " ".join(doc[160:260].split()[1:-1])
        distractors = [" ".join(others[3 * i + j][: len(answer)].split()) for j in range(3)]
        items.append((context, [distractors[0], answer, *distractors[1:]], 1))
    ts = build_task_set(TaskSource("own", None, "choice", items), tok, 128)
    [before] = score_sets(model.eval(), [ts], batch_size=8, device="cpu", threads=2)
    texts = [torch.tensor([tok.eos_token_id] + tok(f"{c} {ch[g]}")["input_ids"][:120]) for c, ch, g in items]
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    model.train()
    for _ in range(40):
        for ids in texts:
            loss = model(ids[None], labels=ids[None]).loss
            loss.backward()
            opt.step()
            opt.zero_grad()
    [after] = score_sets(model.eval(), [ts], batch_size=8, device="cpu", threads=2)
    assert after.choice_accuracy == 1.0 and after.choice_accuracy_raw == 1.0 and after.gold_prob_norm > 0.9
    assert after.gold_bpb < before.gold_bpb / 2


def row(units, scores, tasks=None):
    return RankedMixture(list(units), scores, {s: 1.0 for s in scores}, tasks=tasks)


def test_z_macro_and_family_rankings_equal_a_hand_computation():
    scores = {
        ("a",): {"text": 100.0, "cloze": 2**3.0, "cont": 2**2.0},
        ("b",): {"text": 120.0, "cloze": 2**2.5, "cont": 2**2.2},
        ("c",): {"text": 90.0, "cloze": 2**3.5, "cont": 2**2.6},
    }
    families = {"reading": ["cloze", "cont"]}
    ranked = rank([row(u, s) for u, s in scores.items()], "z_macro", families=families)
    # by hand: per set, z of log scores with the population standard deviation, then the mean over sets
    logs = {s: np.log([scores[u][s] for u in scores]) for s in ("text", "cloze", "cont")}
    z = {s: (v - v.mean()) / v.std() for s, v in logs.items()}
    expected = {u: np.mean([z[s][i] for s in z]) for i, u in enumerate(scores)}
    assert {tuple(r.units): r.z_macro for r in ranked} == pytest.approx(expected)
    assert [tuple(r.units) for r in ranked] == sorted(scores, key=expected.get)
    by_family = rank([row(u, s) for u, s in scores.items()], "reading", families=families)
    # the family's score: its sets' gold_bpb averaged: a 2.5, b 2.35, c 3.05
    assert [r.units for r in by_family] == [["b"], ["a"], ["c"]]
    assert by_family[0].families["reading"]["gold_bpb"] == pytest.approx(2.35)
    with pytest.raises(Exception, match="cannot rank by 'nope'.*a task family \\(reading\\)"):
        rank([row(u, s) for u, s in scores.items()], "nope", families=families)


def test_the_table_shows_gold_bpb_and_choice_accuracy_for_task_sets():
    tasks = {"cloze": {"gold_bpb": 3.0, "choice_accuracy": 0.625, "items": 8}}
    rows = [row(["a"], {"text": 100.0, "cloze": 8.0}, tasks)]
    table = format_table(rank(rows), seed_scores={"text": 200.0, "cloze": 16.0}, seed_tasks={"cloze": tasks["cloze"]})
    head = next(line for line in table.splitlines() if line.startswith("rank "))
    assert head.split()[-4:] == ["cloze", "acc", "text", "macro"]
    first = next(line for line in table.splitlines() if line.strip().startswith("1 "))
    assert "3.000" in first and "0.625" in first and "100.00" in first  # gold_bpb = log2(8)
    assert "gold_bpb" in table and "choice accuracy" in table


def write_task(folder: Path, records: list, family: str | None = "reading") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "items.jsonl").write_text("".join(r if isinstance(r, str) else json.dumps(r) + "\n" for r in records))
    if family:
        (folder / "task.toml").write_text(f'family = "{family}"\n')
    return folder


GOOD = {"context": "The", "choices": ["cat sat", "dog ran"], "gold": 0}


def test_malformed_task_files_are_named_by_file_and_line(tmp_path):
    evals = tmp_path / "evals"
    write_jsonl(evals / "text" / "a.jsonl", demo_docs("satire", 3))
    write_task(evals / "fields", [GOOD, {"context": "x", "choices": ["a", "b"]}, {"choices": ["a", "b"], "gold": 0}])
    write_task(evals / "range", [GOOD, {**GOOD, "gold": 2}, {**GOOD, "gold": True}])
    write_task(evals / "empty", [{**GOOD, "choices": []}, {**GOOD, "choices": ["a", ""]}])
    write_task(evals / "mixed", [GOOD, {"context": "x", "answer": "y"}, "not json\n"])
    (write_task(evals / "toml", [GOOD]) / "task.toml").write_text('family = "qa"\nlabel = 1\n')
    write_task(evals / "ok", [GOOD, {"context": "x", "answer": "y"}][:1], family=None)
    sets, skipped = eval_sets_from_folder(evals)
    assert sorted(sets) == ["ok", "text"] and len(skipped) == 5
    why = {m.split("'")[1]: m for m in skipped}
    f = str(evals / "fields" / "items.jsonl")
    assert f'{f} line 2: "gold" must be an integer' in why["fields"] and f'{f} line 3: no "context"' in why["fields"]
    assert 'line 2: "gold" 2 is out of range for 2 choices' in why["range"] and "line 3" in why["range"]
    assert 'line 1: "choices" must be a list of at least 2' in why["empty"]
    assert 'line 2: "choices" holds an empty' in why["empty"]
    assert "line 2: a gold record in a choice task" in why["mixed"] and "line 3: not valid JSON" in why["mixed"]
    assert "unknown keys ['label']" in why["toml"]


def test_a_malformed_task_is_skipped_with_one_warning_and_no_set_left_ends_in_one_error(settings, corpus, tmp_path):
    toml = write_toml(settings, tmp_path / "c.toml")
    evals = tmp_path / "evals"
    write_task(evals / "bad", [GOOD, {**GOOD, "gold": 7}])
    args = ["--config", str(toml), "rank", str(corpus), "--eval-sets", str(evals), "--k-max", "1"]
    res = run_cli(args, tmp_path)
    assert res.returncode == 2
    errors = [line for line in (res.stdout + res.stderr).splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "no usable evaluation-set subfolders" in errors[0] and "line 2" in errors[0]
    assert not (settings.store / "models").exists(), "nothing was trained"
    write_jsonl(evals / "satire" / "a.jsonl", demo_docs("satire", 5, where="eval"))
    res = run_cli(args, tmp_path, timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr
    warnings = [line for line in res.stderr.splitlines() if "skipped" in line and "'bad'" in line]
    assert len(warnings) == 1 and 'line 2: "gold" 7 is out of range' in warnings[0] and "WARNING" in warnings[0]
    assert "error:" not in res.stdout + res.stderr


def small_tasks(root: Path, n: int = 24) -> Path:
    """The demo's task sets, their first n items, beside one text set."""
    for name in ("cloze", "continuation"):
        with gzip.open(DEMO_TASKS / name / "items.jsonl.gz", "rt", encoding="utf-8") as f:
            records = [json.loads(line) for line in f][:n]
        write_task(root / name, records)
    write_jsonl(root / "satire" / "a.jsonl", demo_docs("satire", 5, where="eval"))
    return root


def test_task_metrics_in_the_ranking_its_json_mlflow_and_fidelity(settings, corpus, tmp_path):
    from prefect.testing.utilities import prefect_test_harness

    from flows.intake import intake

    evals = small_tasks(tmp_path / "evals")
    with prefect_test_harness(server_startup_timeout=120):
        summary = intake(str(corpus), settings.model_dump(mode="json"), str(evals), "t")
    snap = latest(settings)
    assert snap["families"] == {"reading": ["cloze", "continuation"]}
    best = snap["ranking"][0]
    assert set(best["tasks"]) == {"cloze", "continuation"} and "choice_accuracy" in best["tasks"]["cloze"]
    assert best["scores"]["cloze"] == pytest.approx(2 ** best["tasks"]["cloze"]["gold_bpb"])
    assert 0 <= snap["seed_tasks"]["cloze"]["choice_accuracy"] <= 1 and snap["seed_tasks"]["cloze"]["items"] == 24
    client = MlflowClient(embedded_uri(Store(settings.store)))
    run = client.get_run(summary["ranking_run_id"])
    metrics = run.data.metrics
    assert metrics["champion.choice_accuracy.cloze"] == pytest.approx(best["tasks"]["cloze"]["choice_accuracy"])
    assert metrics["champion.gold_bpb.continuation"] == pytest.approx(best["tasks"]["continuation"]["gold_bpb"])
    assert metrics["champion.family.reading.gold_bpb"] == pytest.approx(best["families"]["reading"]["gold_bpb"])
    assert "seed.choice_accuracy.cloze" in run.data.metrics and "champion.ppl.satire" in run.data.metrics
    assert client.get_experiment(run.info.experiment_id).name == RANKINGS_EXPERIMENT

    toml = write_toml(settings, tmp_path / "c.toml")
    for by, value in (("z_macro", lambda r: r["z_macro"]), ("reading", lambda r: r["families"]["reading"]["gold_bpb"])):
        res = CliRunner().invoke(app, ["--config", str(toml), "ranking", "--by", by, "--json"])
        rows = json.loads(res.stdout)["rows"]
        assert [value(r) for r in rows] == sorted(value(r) for r in rows) and len(rows) == len(snap["ranking"])
        table = CliRunner().invoke(app, ["--config", str(toml), "ranking", "--by", by]).stdout
        assert f"re-sorted by {by}" in table and " acc " in table and "gold_bpb" in table

    common = ["--n", "6", "--k-max", "2", "--replicates", "2", "--json", "--no-mlflow", "--eval-sets", str(evals)]
    res = CliRunner().invoke(app, ["--config", str(toml), "fidelity", str(corpus), "--pool", "t", *common])
    assert res.exit_code == 0, res.output
    report = json.loads(res.stdout)
    assert report["set_metric"] == {"cloze": "gold_bpb", "continuation": "gold_bpb", "satire": "perplexity"}
    cloze = report["eval_sets"]["cloze"]
    assert cloze["n_mixtures"] == 6 and -1 <= cloze["spearman"] <= 1 and "resolvable_decision_accuracy" in cloze
    assert set(report["task_figures"]["cloze"]) == {"gold_prob_norm", "choice_accuracy"}
    for r in report["rows"]:  # the rows' task-set values are 2 ** gold_bpb of the proxy and the truth
        assert r["proxy"]["cloze"] == pytest.approx(2 ** r["tasks"]["proxy"]["cloze"]["gold_bpb"])
        assert r["truth"]["cloze"] == pytest.approx(2 ** r["tasks"]["truth"]["cloze"]["gold_bpb"])


def test_the_bundled_tasks_are_in_the_demo_sets():
    sets, skipped = eval_sets_from_folder(DEMO_TASKS)
    assert not skipped and sets["cloze"].kind == "choice" and sets["continuation"].kind == "gold"
    assert sets["cloze"].family == sets["continuation"].family == "reading" and len(sets["cloze"].items) >= 150


@pytest.mark.slow
def test_the_demo_seed_beats_chance_on_the_bundled_cloze_task_by_more_than_3_standard_errors(tmp_path):
    """The demo's own seed (the default tiny one, built here as `make demo` builds it), scored as the demo does."""
    from dataassess.config import Settings
    from dataassess.pipeline import _context_length
    from dataassess.seed import prepare_seed

    settings = Settings(store=tmp_path / "store")
    seed = prepare_seed(settings, Store(settings.store), progress=False)
    sets, _ = eval_sets_from_folder(DEMO_TASKS)
    ctx = min(settings.train.seq_len, _context_length(seed))
    ts = build_task_set(sets["cloze"], seed.load_tokenizer(), ctx, settings.corpus.eval_max_tokens)
    [score] = score_sets(seed.load_model(), [ts], settings.score.batch_size, "cpu", settings.threads)
    standard_error = math.sqrt(score.chance * (1 - score.chance) / score.items)
    assert score.items >= 150 and score.choice_accuracy > score.chance + 3 * standard_error, score


def test_convert_mc_turns_an_lm_eval_style_dataset_into_a_task_folder(tmp_path):
    import subprocess
    import sys

    from dataassess.tasks import read_task_folder

    arc = [
        {"question": "What is 2 + 2?", "choices": {"text": ["3", "4"], "label": ["A", "B"]}, "answerKey": "B"},
        {
            "question": "Which is a gas?",
            "choices": {"text": ["iron", "neon", "salt"], "label": ["1", "2", "3"]},
            "answerKey": "2",
        },
    ]
    write_jsonl(tmp_path / "arc.jsonl", arc)
    script = Path(__file__).resolve().parents[1] / "scripts" / "convert_mc.py"
    args = ["--context", "Question: {question}\nAnswer:", "--choices", "choices.text", "--gold", "answerKey"]
    out = tmp_path / "evals" / "arc"
    run = subprocess.run(
        [
            sys.executable,
            str(script),
            str(tmp_path / "arc.jsonl"),
            str(out),
            *args,
            "--labels",
            "choices.label",
            "--family",
            "qa",
        ],
        capture_output=True,
        text=True,
    )
    assert run.returncode == 0, run.stderr
    src = read_task_folder(out)
    assert src.family == "qa" and src.kind == "choice"
    assert src.items == [
        ("Question: What is 2 + 2?\nAnswer:", ["3", "4"], 1),
        ("Question: Which is a gas?\nAnswer:", ["iron", "neon", "salt"], 1),
    ]
    again = subprocess.run(
        [sys.executable, str(script), str(tmp_path / "arc.jsonl"), str(out), *args], capture_output=True, text=True
    )
    assert again.returncode != 0 and "already exists" in again.stderr
