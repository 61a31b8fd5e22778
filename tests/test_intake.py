"""The Prefect intake over a real sqlite-backed MLflow: incremental, idempotent, safe."""

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import mlflow
import pytest
from mlflow import MlflowClient
from prefect.testing.utilities import prefect_test_harness

from dataassess.evalsets import EvalSets
from dataassess.scoring import score_model
from dataassess.store import Store
from dataassess.train import resolve_device
from flows.intake import intake
from registry.tracking import RANKINGS_EXPERIMENT, embedded_uri
from tests.conftest import demo_docs, latest, run_pipeline, write_jsonl

TAGS = ["partition", "unit", "unit_digest", "seed_digest", "train_config_hash", "tokens", "code_version", "final_loss"]


@pytest.fixture(scope="module", autouse=True)
def harness():
    with prefect_test_harness(server_startup_timeout=120):
        yield


def client_for(settings) -> MlflowClient:
    return MlflowClient(embedded_uri(Store(settings.store)), embedded_uri(Store(settings.store)))


def unit_versions(settings):
    return [
        v
        for v in client_for(settings).search_model_versions()
        if "." in v.name and not v.name.endswith(("-seed", "-champion"))
    ]


def run(corpus, settings, **kw):
    return intake(str(corpus), settings.model_dump(mode="json"), **kw)


def test_intake_trains_only_new_units_and_is_idempotent(settings, corpus, tmp_path):
    first = run(corpus, settings, pool="t")
    n = first["trained"]
    assert first["skipped"] == 0 and first["registered"] == n and first["rescored"] == first["mixtures"]
    versions = unit_versions(settings)
    assert len(versions) == n
    client = client_for(settings)
    for v in versions:
        for tag in TAGS:
            assert f"dataassess.{tag}" in v.tags, (v.name, tag)
        assert client.get_model_version_by_alias(v.name, "current").version == v.version

    write_jsonl(corpus / "wisdom" / "a.jsonl", demo_docs("scripture-wisdom", 12))
    second = run(corpus, settings, pool="t")
    new_units = second["trained_units"]
    assert new_units and all(u.startswith("wisdom.") for u in new_units)
    assert second["skipped"] == n and second["registered"] == len(new_units)
    assert len(unit_versions(settings)) == n + len(new_units)  # cross-checked against the registry
    touching = [r for r in latest(settings)["ranking"] if any(u in new_units for u in r["units"])]
    assert second["rescored"] == len(touching) and second["reused"] == second["mixtures"] - len(touching)

    third = run(corpus, settings, pool="t")
    assert third["trained"] == 0 and third["registered"] == 0 and third["rescored"] == 0
    assert len(unit_versions(settings)) == n + len(new_units)

    write_jsonl(corpus / "drama" / "a.jsonl", demo_docs("drama-comedy", 4))  # a changed partition
    fourth = run(corpus, settings, pool="t")
    changed = fourth["trained_units"]
    assert changed and all(u.startswith("drama.") for u in changed)
    before = {v.name for v in versions}
    for unit in changed:
        current = client.get_model_version_by_alias(f"t.{unit}", "current")
        assert (
            int(current.version) == (2 if f"t.{unit}" in before else 1)
            and current.tags["dataassess.partition"] == "drama"
            and "dataassess.superseded_by" not in current.tags
        )
        if f"t.{unit}" in before:  # the old version is kept, pointing at its successor
            assert client.get_model_version(f"t.{unit}", "1").tags["dataassess.superseded_by"] == "2"
    assert any(f"t.{u}" in before for u in changed)
    touching = [r for r in latest(settings)["ranking"] if any(u in changed for u in r["units"])]
    assert fourth["rescored"] == len(touching) and fourth["trained"] == len(changed)


def test_the_demo_on_a_corpus_of_ones_own_trains_exactly_the_late_partitions_in_wave_2(settings, corpus):
    from flows.demo import run_demo

    said = []
    first, second = run_demo(
        settings, Store(settings.store), False, said.append, source=corpus, eval_sets=None, late=("satire",), pool="own"
    )
    assert first["trained"] and not any(u.startswith("satire.") for u in first["trained_units"])
    assert second["trained_units"] and all(u.startswith("satire.") for u in second["trained_units"])
    assert second["skipped"] == first["trained"] and second["registered"] == second["trained"]
    assert sorted(p.name for p in (settings.store / "demo-corpus" / "own").iterdir()) == sorted(
        p.name for p in corpus.iterdir()
    )
    assert (
        latest(settings, "own")["pool"] == "own"
        and len(unit_versions(settings)) == first["trained"] + second["trained"]
    )
    assert not any("warning" in line for line in said), said


def test_ranking_run_and_champion_in_mlflow(settings, corpus, tmp_path):
    summary = run(corpus, settings, pool="c")
    client = client_for(settings)
    exp = client.get_experiment_by_name(RANKINGS_EXPERIMENT)
    runs = client.search_runs([exp.experiment_id], order_by=["attributes.start_time DESC"])
    ranking_run = runs[0]
    assert ranking_run.info.run_id == summary["ranking_run_id"]
    artifacts = {a.path for a in client.list_artifacts(ranking_run.info.run_id)}
    assert {"ranking.json", "top_mixtures.png"} <= artifacts
    snapshot = latest(settings)
    best = snapshot["ranking"][0]
    assert ranking_run.data.metrics["champion.macro"] == pytest.approx(best["macro"])
    for name, ppl in best["scores"].items():
        assert ranking_run.data.metrics[f"champion.ppl.{name}"] == pytest.approx(ppl)
        assert ranking_run.data.metrics[f"lowest_any_mixture.ppl.{name}"] == pytest.approx(
            min(r["scores"][name] for r in snapshot["ranking"])
        )
    assert any(k.startswith("unit.") for k in ranking_run.data.params)
    assert ranking_run.data.tags["dataassess.fidelity"].startswith("not measured")  # until `dataassess fidelity` runs
    description = ranking_run.data.tags["mlflow.note.content"]
    version = ranking_run.data.tags["dataassess.champion_version"]
    assert (
        f"**Champion:** {' + '.join(best['units'])}" in description
        and f"#/models/c-champion/versions/{version}" in description
    )
    assert "**Fidelity:** not measured" in description and "**Top 5**" in description
    champion_version = client.get_model_version("c-champion", version)
    assert champion_version.tags["dataassess.ranking_run_id"] == ranking_run.info.run_id
    assert (
        champion_version.tags["dataassess.mixture"] == " + ".join(best["units"])
        and ranking_run.info.run_id in champion_version.description
    )

    unit = next(iter(snapshot["units"]))
    unit_version = client.get_model_version(f"c.{unit}", "1")
    unit_run = client.get_run(unit_version.run_id)
    meta = json.loads((Store(settings.store).meta(snapshot["units"][unit]["key"])).read_text())
    losses = client.get_metric_history(unit_run.info.run_id, "train_loss")
    assert [m.step for m in losses] == list(range(1, meta["steps"] + 1)) and [m.value for m in losses] == pytest.approx(
        meta["losses"]
    )
    assert (unit_run.info.end_time - unit_run.info.start_time) / 1000 == pytest.approx(meta["wall_s"], abs=0.01)
    seed_line = client.get_metric_history(unit_run.info.run_id, "seed_loss")
    first = client.get_metric_history(unit_run.info.run_id, "first_sequences_loss")
    assert [(m.step, m.value) for m in seed_line] == [(1, meta["seed_loss"]), (meta["steps"], meta["seed_loss"])]
    assert [(m.step, m.value) for m in first] == [(0, meta["seed_loss"]), (meta["steps"], meta["end_loss"])]
    assert meta["end_loss"] < meta["seed_loss"], "the unit model learned its unit"
    [training] = unit_run.inputs.dataset_inputs
    assert training.dataset.name == unit and training.tags[0].value == "training"
    assert (
        f"of partition **{meta['partition']}**" in unit_version.description and "seed tiny" in unit_version.description
    )
    assert ranking_run.data.tags["dataassess.budget"] == "fixed" == latest(settings)["budget"]["mode"]
    assert ranking_run.data.params["budget_tokens"] == str(settings.units.tokens)
    inputs = ranking_run.inputs.dataset_inputs
    assert {d.dataset.name for d in inputs} == set(snapshot["eval_sets"])
    table = json.loads(open(client.download_artifacts(ranking_run.info.run_id, "ranking.json", str(tmp_path))).read())
    assert len(table["data"]) == len(snapshot["ranking"])
    assert {"rank", "mixture", "macro", "rank_change"} <= set(table["columns"])

    mlflow.set_tracking_uri(embedded_uri(Store(settings.store)))
    champion = mlflow.pyfunc.load_model("models:/c-champion@champion", dst_path=str(tmp_path))
    model = champion.unwrap_python_model().model
    evalsets = EvalSets(Store(settings.store))
    for name, digest in snapshot["eval_sets"].items():
        score = score_model(model, evalsets.load(digest), settings.score.batch_size, resolve_device("cpu"))
        assert score.perplexity == pytest.approx(best["scores"][name], rel=1e-5)


def test_bad_partitions_are_quarantined_and_the_rest_proceed(settings, corpus):
    (corpus / "empty").mkdir()
    (corpus / "empty" / "a.txt").write_text("   \n")
    (corpus / "binary").mkdir()
    (corpus / "binary" / "a.txt").write_bytes(os.urandom(2048))
    (corpus / "latin1").mkdir()
    (corpus / "latin1" / "a.txt").write_bytes("d\u00e9j\u00e0 vu ".encode("latin-1") * 400)
    summary = run(corpus, settings, pool="q")
    assert summary["quarantined"] == 3 and summary["trained"] >= 4
    reasons = " | ".join(summary["quarantined_partitions"])
    for name in ("empty", "binary", "latin1"):
        assert f"partition '{name}'" in reasons
    run_ = client_for(settings).get_run(summary["ranking_run_id"])
    assert "latin1" in run_.data.tags["dataassess.quarantined"]
    assert not any(v.tags["dataassess.partition"] in ("empty", "binary", "latin1") for v in unit_versions(settings))


def test_two_concurrent_intakes_leave_one_version_per_unit(settings, corpus):
    results, errors = [], []

    def go():
        try:
            results.append(run(corpus, settings, pool="x"))
        except Exception as e:  # pragma: no cover - surfaced below
            errors.append(e)

    threads = [threading.Thread(target=go) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert sorted(r["trained"] for r in results)[0] == 0  # the second found the work done
    names = [v.name for v in unit_versions(settings)]
    assert len(names) == len(set(names)) == max(r["trained"] for r in results)


def test_two_intakes_of_two_roots_sharing_units_register_one_version_per_unit_per_pool(settings, corpus, tmp_path):
    copy = tmp_path / "renamed"
    shutil.copytree(corpus, copy)  # a renamed corpus root: every unit shared with the first
    results, errors = {}, []

    def go(root):
        try:
            results[root.name] = run(root, settings)
        except Exception as e:  # pragma: no cover - surfaced below
            errors.append(e)

    threads = [threading.Thread(target=go, args=(root,)) for root in (corpus, copy)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    assert sorted(r["trained"] for r in results.values())[0] == 0, "the second found every unit trained"
    assert results["corpus"]["registered"] == results["renamed"]["registered"] > 0, (
        "each pool registers its own versions"
    )
    names = [v.name for v in unit_versions(settings)]
    assert len(names) == len(set(names)) == 2 * results["corpus"]["registered"]
    assert {n.split(".")[0] for n in names} == {"corpus", "renamed"}


def killable_env(tmp_path: Path) -> dict[str, str]:
    """The environment of an intake the test kills: its Prefect home and temporary folders (which a
    SIGKILL leaves behind) under tmp_path."""
    (tmp_path / "tmp").mkdir(exist_ok=True)
    return {
        **os.environ,
        "PREFECT_HOME": str(tmp_path / "ph"),
        "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120",
        "TMPDIR": str(tmp_path / "tmp"),
    }


KILL_IN_SECOND_TRAINING = """
import json, os, signal, sys
import dataassess.steps as steps
from flows.intake import intake

trainings, train_lm = [], steps.train_lm

def train_then_die(*args, **kwargs):  # the second training is killed after its third optimizer step
    trainings.append(1)
    if len(trainings) == 2:
        kwargs["on_step"] = lambda step, loss: step == 2 and os.kill(os.getpid(), signal.SIGKILL)
    return train_lm(*args, **kwargs)

steps.train_lm = train_then_die
intake(sys.argv[1], json.loads(sys.argv[2]), pool="k")
"""


def test_resume_after_intake_is_killed_mid_training(settings, corpus, tmp_path):
    env = killable_env(tmp_path)
    log = tmp_path / "killed.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-c", KILL_IN_SECOND_TRAINING, str(corpus), settings.model_dump_json()],
            env=env,
            stdout=out,
            stderr=out,
            start_new_session=True,
        )
        try:
            returncode = proc.wait(timeout=300)
        finally:
            try:
                os.killpg(proc.pid, signal.SIGKILL)  # what it started (Prefect's temporary server) goes too
            except ProcessLookupError:
                pass
    assert returncode == -signal.SIGKILL, log.read_text()[-2000:]
    models = settings.store / "models"
    assert len(list(models.glob("*/meta.json"))) == 1, "killed during the second training: one model finished"
    summary = run(corpus, settings, pool="k")
    assert summary["skipped"] == 1 and summary["trained"] >= 1  # nothing finished was trained again
    assert summary["trained"] + summary["skipped"] == len(list(models.glob("*/meta.json")))
    names = [v.name for v in unit_versions(settings)]
    assert len(names) == len(set(names)) == len(list(models.glob("*/meta.json")))
    assert not list(settings.store.rglob("*.tmp"))


KILL_AT = """
import json, os, signal, sys
point, calls = sys.argv[3], []

def dies_on(call, original):  # the wrapped function kills the process after its call number `call` returns
    def wrapped(*args, **kwargs):
        out = original(*args, **kwargs)
        calls.append(1)
        if len(calls) == call:
            os.kill(os.getpid(), signal.SIGKILL)
        return out
    return wrapped

if point == "scoring":  # after the first mixture's scores are written
    import dataassess.steps as steps
    steps.Steps.score_weights = dies_on(1, steps.Steps.score_weights)
elif point == "registration":  # after the first unit's version (the seed's is the first version made)
    from mlflow import MlflowClient
    MlflowClient.create_model_version = dies_on(2, MlflowClient.create_model_version)
elif point == "publish":  # after the ranking run is logged, before the champion is registered
    import registry.publish as publish
    publish.log_snapshot = dies_on(1, publish.log_snapshot)
from flows.intake import intake
intake(sys.argv[1], json.loads(sys.argv[2]), pool="k")
"""


@pytest.mark.faults
@pytest.mark.parametrize("point", ["scoring", "registration", "publish"])
def test_killed_during_scoring_registration_or_publish_the_rerun_finishes_without_duplicates(
    point, settings, corpus, tmp_path
):
    env = killable_env(tmp_path)
    log = tmp_path / "killed.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-c", KILL_AT, str(corpus), settings.model_dump_json(), point],
            env=env,
            stdout=out,
            stderr=out,
            start_new_session=True,
        )
        try:
            returncode = proc.wait(timeout=300)
        finally:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    assert returncode == -signal.SIGKILL, log.read_text()[-2000:]
    models = settings.store / "models"
    finished = len(list(models.glob("*/meta.json")))
    before = unit_versions(settings)
    assert len(before) == {"scoring": 0, "registration": 1, "publish": finished}[point]
    summary = run(corpus, settings, pool="k")
    assert summary["trained"] == 0 and summary["skipped"] == finished, "every unit finished before the kill is reused"
    if point == "scoring":
        assert summary["reused"] >= 1, "the scores written before the kill are reused"
    assert summary["registered"] == finished - len(before)
    names = [v.name for v in unit_versions(settings)]
    assert len(names) == len(set(names)) == finished, "one version per unit"
    client = client_for(settings)
    assert str(client.get_model_version_by_alias("k-champion", "champion").version) == "1"
    exp = client.get_experiment_by_name(RANKINGS_EXPERIMENT)
    assert len(client.search_runs([exp.experiment_id])) == (2 if point == "publish" else 1)
    assert not list(settings.store.rglob("*.tmp")), "no half-written file"
    for score in settings.store.glob("scores/*/score.json"):
        json.loads(score.read_text())


def test_prefect_yaml_declares_the_intake_on_a_schedule_and_the_partition_event():
    import fnmatch
    from pathlib import Path

    import yaml
    from prefect.events.schemas.deployment_triggers import DeploymentEventTrigger
    from prefect.flows import load_flow_from_entrypoint

    from flows.serve import EVENT, corpus_resource

    root = Path(__file__).resolve().parents[1]
    deployments = {d["name"]: d for d in yaml.safe_load((root / "prefect.yaml").read_text())["deployments"]}
    assert set(deployments) == {"intake", "on-demand"}
    assert "schedules" not in deployments["on-demand"] and "triggers" not in deployments["on-demand"]
    deployment = deployments["intake"]
    for d in deployments.values():  # a module path: Dask workers import the flow's tasks by module name
        assert load_flow_from_entrypoint(d["entrypoint"]).name == intake.name
    assert deployment["schedules"][0]["interval"] > 0 and deployment["concurrency_limit"] == 1
    trigger = DeploymentEventTrigger.model_validate({k: v for k, v in deployment["triggers"][0].items() if k != "type"})
    assert trigger.expect == {EVENT}
    assert fnmatch.fnmatch(corpus_resource("/data/corpus"), trigger.match.root["prefect.resource.id"])
    assert trigger.parameters == {"corpus_root": "{{ event.payload.corpus_root }}"}


def test_screened_intake_scores_slices_then_the_best_on_the_full_sets(settings, corpus):
    screen = settings.rank.model_copy(
        update={"screen": True, "screen_keep": 3, "screen_eta": 2, "screen_min_fraction": 0.25}
    )
    s = settings.model_copy(update={"rank": screen})
    summary = run(corpus, s, pool="s")
    info = summary["screening"]
    assert [g["fraction"] for g in info["rungs"]] == [0.25, 0.5, 1.0] and 0 < info["cost"] < 1
    ranking = latest(s)["ranking"]
    full = [r for r in ranking if "evaluated_fraction" not in r]
    assert len(full) == info["rungs"][-1]["scored"] >= 3 and ranking[: len(full)] == full
    again = run(corpus, s, pool="s")
    assert again["rescored"] == 0 and [r["units"] for r in latest(s)["ranking"]] == [r["units"] for r in ranking]


HEARTBEAT = """
from flows.runtime import embedded_prefect
from prefect.settings import get_current_settings
with embedded_prefect():
    inside = get_current_settings().flows.heartbeat_frequency
print(inside, get_current_settings().flows.heartbeat_frequency)
"""


def test_heartbeats_are_off_only_for_the_in_process_ephemeral_api():
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}

    def heartbeat(**extra):
        out = subprocess.run(
            [sys.executable, "-c", HEARTBEAT], env={**env, **extra}, capture_output=True, text=True, check=True
        )
        return out.stdout.split()[-2:]

    inside, after = heartbeat()
    assert inside == "None" and after != "None"  # ephemeral: no one can read them; the setting is restored after
    assert heartbeat(PREFECT_API_URL="http://127.0.0.1:4200/api")[0] != "None"
    assert heartbeat(PREFECT_FLOWS_HEARTBEAT_FREQUENCY="60")[0] == "60"
    assert heartbeat(PREFECT_RUNNER_HEARTBEAT_FREQUENCY="90")[0] == "90"  # Prefect's legacy name


def test_cli_rank_and_intake_score_one_corpus_against_the_same_sets(settings, corpus):

    ranked = run_pipeline(corpus, settings, progress=False)  # what `dataassess rank` runs
    summary = run(corpus, settings)
    assert summary["trained"] == 0 and summary["rescored"] == 0  # same pool, same pinned sets, same cache
    assert latest(settings)["eval_sets"] == ranked.pool.eval_sets


def test_the_champion_pyfunc_predicts_perplexity(settings, corpus, tmp_path):
    from dataassess.corpus import Document
    from dataassess.evalsets import build_eval_set

    run(corpus, settings, pool="p")
    mlflow.set_tracking_uri(embedded_uri(Store(settings.store)))
    champion = mlflow.pyfunc.load_model("models:/p-champion@champion", dst_path=str(tmp_path))
    model = champion.unwrap_python_model().model
    texts = [d["text"][:300] for d in demo_docs("satire", 2)]
    predicted = champion.predict(texts)
    tokenizer = champion.unwrap_python_model().tokenizer
    for text, ppl in zip(texts, predicted):
        es = build_eval_set("t", [Document(text, "t")], tokenizer, ctx=128, stride=None, max_tokens=10_000)
        assert len(es.windows) == 1, "one window: the comparison is exact"
        assert ppl == pytest.approx(score_model(model, es, 4, "cpu").perplexity, rel=1e-5)


def test_serve_runs_the_intake_on_its_schedule(settings, corpus, tmp_path):
    from tests.conftest import write_toml

    toml = write_toml(settings, tmp_path / "c.toml")
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(
        PREFECT_HOME=str(tmp_path / "ph"),
        PREFECT_SERVER_SERVICES_SCHEDULER_LOOP_SECONDS="2",
        PREFECT_RUNNER_POLL_FREQUENCY="1",
    )
    cli = [sys.executable, "-c", "from flows.cli import main; main()"]
    log = tmp_path / "serve.log"
    latest = settings.store / "rankings" / "corpus" / "latest.json"
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [*cli, "--config", str(toml), "serve", str(corpus), "--interval", "5"],
            env=env,
            stdout=out,
            stderr=out,
            start_new_session=True,
        )
        try:
            deadline = time.time() + 300
            while not latest.exists() and proc.poll() is None and time.time() < deadline:
                time.sleep(1)
            assert latest.exists(), log.read_text()[-3000:]
            assert json.loads(latest.read_text())["pool"] == "corpus"
        finally:
            proc.send_signal(
                signal.SIGINT
            )  # Ctrl-C: serve lets the intake in flight end, then stops the Prefect server it started
            try:
                proc.wait(timeout=150)  # an intake runs every 5 s, and a loaded machine slows the one in flight
            finally:
                os.killpg(proc.pid, signal.SIGKILL) if proc.poll() is None else None
    assert not (settings.store / "prefect-api-url").exists(), "the Prefect server was stopped and forgotten"
