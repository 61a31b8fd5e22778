"""Faults a store meets in real use: corrupted files, links out of the corpus, pools sharing units, a dead tracking
server."""

import hashlib
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from mlflow import MlflowClient
from safetensors.torch import load

from dataassess.corpus import discover
from dataassess.steps import materialize
from dataassess.store import Store
from registry.publish import register_models
from registry.tracking import embedded_uri
from tests.conftest import DEMO, demo_docs, free_port, latest, run_pipeline, small_settings, write_jsonl, write_toml


def test_corrupt_unit_weights_are_reported_and_retrained_not_reused(settings, corpus, caplog):
    first = run_pipeline(corpus, settings, progress=False)
    store = Store(settings.store)
    truncated, flipped = (store.weights(first.models[u].key) for u in sorted(first.models)[:2])
    size, original = truncated.stat().st_size, truncated.read_bytes()
    with open(truncated, "r+b") as f:
        f.truncate(1000)
    flipped_original = flipped.read_bytes()
    data = bytearray(flipped_original)
    data[-5] ^= 0xFF  # same size, one byte of a tensor changed
    flipped.write_bytes(bytes(data))
    with caplog.at_level(logging.WARNING, logger="dataassess"):
        second = run_pipeline(corpus, settings, progress=False)
    assert sorted(second.trained) == sorted(first.models)[:2]
    assert sum("does not match the digest recorded" in r.getMessage() for r in caplog.records) == 2
    assert truncated.stat().st_size == size
    # retrained from the same recipe: the same model up to float summation order (bits depend on the CPU's threads)
    for path, before in ((truncated, original), (flipped, flipped_original)):
        now, before = load(path.read_bytes()), load(before)
        assert before.keys() == now.keys()
        assert all(torch.allclose(before[k], now[k], rtol=0, atol=1e-4) for k in now)
    for u in sorted(first.models)[:2]:
        model = second.models[u]
        assert store.finished(model.key) is not None, "the new weights match the digest recorded for them"
        assert hashlib.sha256(store.weights(model.key).read_bytes()).hexdigest() == model.weights_digest
    # scores are keyed by the weights' digests: reused for the same bytes, recomputed for new ones, and close
    unchanged = truncated.read_bytes() == original and flipped.read_bytes() == flipped_original
    assert (second.counts["scored"] == 0) == unchanged
    again = {tuple(r.units): r.scores for r in second.ranking}
    assert sorted(again) == sorted(tuple(r.units) for r in first.ranking)
    for before in first.ranking:
        assert all(abs(again[tuple(before.units)][n] / ppl - 1) < 1e-3 for n, ppl in before.scores.items())


def test_corrupt_merges_scores_and_unit_tokens_are_rebuilt(settings, corpus):
    result = run_pipeline(corpus, settings, progress=False)
    store = Store(settings.store)
    pair = result.pool.mixture(sorted(result.models)[:2])
    merged = materialize(store, result.pool.seed, pair)
    good = merged.read_bytes()
    merged.write_bytes(good[: len(good) // 2])
    assert materialize(store, result.pool.seed, pair).read_bytes() == good

    score_file = store.score(pair.key, next(iter(result.pool.eval_sets.values())), settings.score.digest())
    score_file.write_text("{")
    unit = result.pool.units[0]
    store.unit_tokens(unit.digest).write_bytes(b"not tensors")
    again = run_pipeline(corpus, settings, progress=False)
    assert again.counts["scored"] == 1 and again.trained == []
    assert [r.scores for r in again.ranking] == [r.scores for r in result.ranking]


def test_links_out_of_the_corpus_are_refused_before_reading(tmp_path):
    root = tmp_path / "corpus"
    write_jsonl(root / "good" / "a.jsonl", demo_docs("satire", 5))
    outside = write_jsonl(tmp_path / "secret" / "s.jsonl", demo_docs("jargon", 5))
    (root / "leaky").mkdir()
    (root / "leaky" / "a.jsonl").symlink_to(outside)
    (root / "linked-dir").symlink_to(outside.parent, target_is_directory=True)
    write_jsonl(root / "inside" / "b.jsonl", demo_docs("jargon", 3))
    (root / "inside" / "c.jsonl").symlink_to(root / "good" / "a.jsonl")  # inside the root: followed
    good, bad = discover(root)
    assert sorted(p.name for p in good) == ["good", "inside"]
    assert sorted(e.partition for e in bad) == ["leaky", "linked-dir"]
    assert all("a link out of the corpus root" in str(e) or "is a link out of the corpus root" in str(e) for e in bad)


def test_links_out_of_eval_sets_added_partitions_and_seed_text_are_refused(tmp_path):
    from typer.testing import CliRunner

    from dataassess.corpus import eval_sets_from_folder
    from dataassess.errors import UserError
    from dataassess.seed import read_texts
    from flows.cli import app

    outside = write_jsonl(tmp_path / "secret" / "s.jsonl", demo_docs("jargon", 5))
    for folder in ("evals/leaky", "incoming", "seedtext"):
        write_jsonl(tmp_path / folder / "a.jsonl", demo_docs("satire", 5))
        (tmp_path / folder / "b.jsonl").symlink_to(outside)
    with pytest.raises(UserError, match="evaluation set 'leaky': .*a link out of the evaluation sets' folder"):
        eval_sets_from_folder(tmp_path / "evals")
    with pytest.raises(UserError, match="is a link out of"):
        read_texts(tmp_path / "seedtext")
    (tmp_path / "corpus").mkdir()
    res = CliRunner().invoke(
        app,
        [
            "--store",
            str(tmp_path / "store"),
            "add-partition",
            str(tmp_path / "incoming"),
            "--corpus",
            str(tmp_path / "corpus"),
        ],
    )
    assert res.exit_code == 2 and "a link out of the corpus root" in res.stderr and str(outside) in res.stderr
    assert not list((tmp_path / "corpus").iterdir()), "nothing copied"


def test_pools_sharing_units_each_register_their_own_versions(settings, corpus, tmp_path):
    copy = tmp_path / "corpusB"
    shutil.copytree(corpus, copy)
    write_jsonl(copy / "wisdom" / "a.jsonl", [{**d, "domain": "wisdom"} for d in demo_docs("scripture-wisdom", 40)])
    client = MlflowClient(embedded_uri(Store(settings.store)))
    Path(settings.store).mkdir(parents=True, exist_ok=True)
    a = run_pipeline(corpus, settings, progress=False)
    versions_a, _ = register_models(client, a)
    b = run_pipeline(copy, settings, progress=False)  # a superset under another name: shares every unit of the first
    versions_b, new_b = register_models(client, b)
    assert set(a.models) < set(b.models) and sorted(new_b) == sorted(b.models)
    for pool, versions in (("corpus", versions_a), ("corpusB", versions_b)):
        for unit, version in versions.items():
            mv = client.get_model_version(f"{pool}.{unit}", version)
            assert mv.tags["dataassess.model_key"] == (a if pool == "corpus" else b).models[unit].key
    again, new = register_models(client, b)
    assert again == versions_b and new == [], "registered once per pool"


def test_an_experiment_or_model_created_by_another_process_first_is_found_not_an_error(tmp_path):
    """Between looking an experiment or registered model up and creating it, another command may create it."""
    from mlflow.exceptions import MlflowException

    from registry.tracking import connect, created_or_found

    client = connect(Store(tmp_path / "store"))
    other = MlflowClient(embedded_uri(Store(tmp_path / "store")))  # another process's client, as the database sees it
    made = other.create_experiment("dataassess-rankings")
    found = created_or_found(
        lambda: client.create_experiment("dataassess-rankings"),
        lambda: client.get_experiment_by_name("dataassess-rankings").experiment_id,
    )
    assert found == made
    other.create_registered_model("pool.u0")
    assert created_or_found(lambda: client.create_registered_model("pool.u0"), lambda: "found") == "found"
    with pytest.raises(MlflowException):  # any other failure is not taken for "already there"
        created_or_found(lambda: client.create_experiment(""), lambda: "found")


@pytest.mark.faults  # a minute or more: `make test-faults`
def test_two_intake_commands_on_one_store_from_roots_sharing_units_wait_and_register_per_pool(
    settings, corpus, tmp_path
):
    """Two `dataassess intake` processes started while the store is locked (as by a running intake): both
    say they wait, both start MLflow and Prefect on the store at once, then run one after the other."""
    import re
    import time

    from filelock import FileLock

    renamed = tmp_path / "renamed"
    shutil.copytree(corpus, renamed)  # every unit shared with the first root
    toml = write_toml(settings, tmp_path / "dataassess.toml")
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("DATAASSESS_", "PREFECT_")) and k != "MLFLOW_TRACKING_URI"
    }
    env["PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"] = "120"
    waiting = "another intake is running on the store"
    held = FileLock(str(Store(settings.store).lock()))
    held.acquire()
    procs, logs = [], [tmp_path / f"{root.name}.err" for root in (corpus, renamed)]
    try:
        for root, log in zip((corpus, renamed), logs):
            with open(log, "w") as err:
                procs.append(
                    subprocess.Popen(
                        [str(Path(sys.executable).with_name("dataassess")), "--config", str(toml), "intake", str(root)],
                        cwd=tmp_path,
                        env=env,
                        stdout=subprocess.PIPE,
                        stderr=err,
                        text=True,
                    )
                )
        deadline = time.monotonic() + 300
        try:
            while not all(waiting in log.read_text() for log in logs):
                assert time.monotonic() < deadline and all(p.poll() is None for p in procs), [
                    log.read_text()[-2000:] for log in logs
                ]
                time.sleep(0.5)
        finally:
            held.release()
        outs = [p.communicate(timeout=600)[0] for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    for p, log in zip(procs, logs):
        assert p.returncode == 0, log.read_text()[-3000:]
        assert sum(waiting in line for line in log.read_text().splitlines()) == 1
    trained = sorted(int(re.search(r"^trained (\d+), skipped", out, re.M).group(1)) for out in outs)
    n_units = len(list(Store(settings.store).root.glob("models/*/meta.json")))
    assert trained == [0, n_units] and n_units >= 4, (trained, outs)
    names = [
        v.name
        for v in MlflowClient(embedded_uri(Store(settings.store))).search_model_versions()
        if "." in v.name and not v.name.endswith(("-seed", "-champion"))
    ]
    assert len(names) == len(set(names)) == 2 * n_units, "one version per unit per pool"
    assert {n.split(".")[0] for n in names} == {"corpus", "renamed"}


@pytest.mark.faults  # a minute or more: `make test-faults`
def test_a_down_tracking_server_fails_before_training_in_one_line(tmp_path):
    store = tmp_path / "store"
    env = {k: v for k, v in os.environ.items() if not k.startswith("DATAASSESS_")}
    env["MLFLOW_TRACKING_URI"] = f"http://127.0.0.1:{free_port()}"
    for command in ("intake", "serve", "fidelity", "optimize"):
        res = subprocess.run(
            [str(Path(sys.executable).with_name("dataassess")), "--store", str(store), command, str(DEMO / "corpus")],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        lines = res.stderr.strip().splitlines()
        assert res.returncode == 2 and len(lines) == 1, (command, res.stderr)
        assert "unreachable" in lines[0] and "Nothing was registered" in lines[0], (command, res.stderr)
        assert not (store / "seeds").exists() and not (store / "models").exists(), command


def test_a_store_this_user_cannot_write_fails_in_one_line_before_any_work(tmp_path):
    """As root, dropping the capabilities that bypass file modes makes root a user like any other."""
    store = tmp_path / "store"
    store.mkdir()
    store.chmod(0o555)
    as_user = []
    if os.geteuid() == 0:
        if not shutil.which("setpriv"):
            pytest.skip("root without setpriv can write anywhere")
        as_user = ["setpriv", "--bounding-set", "-dac_override,-dac_read_search,-fowner"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("DATAASSESS_") and k != "MLFLOW_TRACKING_URI"}
    dataassess = str(Path(sys.executable).with_name("dataassess"))
    try:
        for args in (["intake", str(DEMO / "corpus")], ["seed"]):
            res = subprocess.run(
                as_user + [dataassess, "--store", str(store), *args],
                cwd=tmp_path,
                env=env,
                capture_output=True,
                text=True,
                timeout=120,
            )
            lines = res.stderr.strip().splitlines()
            assert res.returncode == 2 and len(lines) == 1, res.stderr[-2000:]
            assert (
                lines[0] == f"error: cannot write the store {store}: Permission denied; "
                "run as a user who can write it, or pass --store DIR"
            )
        assert not list(store.iterdir())
        res = subprocess.run(
            as_user + [dataassess, "--store", str(store), "config"],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert res.returncode == 0 and str(store) in res.stdout, "reading the config needs no write"
    finally:
        store.chmod(0o755)


def test_a_removed_partition_drops_its_mixtures_and_the_ranking_says_so(settings, corpus):
    from typer.testing import CliRunner

    from flows.cli import app

    before = run_pipeline(corpus, settings, progress=False).ranking
    shutil.rmtree(corpus / "drama")
    after = run_pipeline(corpus, settings, progress=False).ranking
    changes = latest(settings)["changes"]
    with_drama = sorted(r.units for r in before if any(u.startswith("drama.") for u in r.units))
    assert with_drama and sorted(changes["dropped"]) == with_drama
    assert not any(u.startswith("drama.") for r in after for u in r.units)
    res = CliRunner().invoke(app, ["--store", str(settings.store), "ranking"])
    assert res.exit_code == 0 and f"{len(with_drama)} dropped (units no longer in the corpus: drama." in res.stdout


@pytest.mark.faults  # a minute or more: `make test-faults`
def test_a_full_disk_ends_in_one_line_leaves_nothing_half_written_and_the_next_run_resumes(tmp_path, corpus):
    """The store on a small tmpfs: full while the seed is written, then while the second unit model is."""
    store = tmp_path / "store"
    store.mkdir()
    if (
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(store)], capture_output=True).returncode
        != 0
    ):
        pytest.skip("cannot mount a small tmpfs here (needs root)")
    toml = write_toml(small_settings(store), tmp_path / "dataassess.toml")
    env = {k: v for k, v in os.environ.items() if not k.startswith("DATAASSESS_") and k != "MLFLOW_TRACKING_URI"}

    def dataassess(*args):
        return subprocess.run(
            [str(Path(sys.executable).with_name("dataassess")), "--config", str(toml), *args],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )

    def assert_one_full_disk_line(res):
        lines = [line for line in res.stderr.splitlines() if line.startswith("error:")]
        assert res.returncode == 2 and len(lines) == 1 and "No space left on device" in lines[0], res.stderr[-2000:]
        assert "Traceback" not in res.stderr
        assert not list(store.rglob("*.tmp")), "temporary files are removed"

    def resize(size: int):
        subprocess.run(["mount", "-o", f"remount,size={size}", str(store)], check=True)

    try:
        assert_one_full_disk_line(dataassess("seed"))
        assert not [p for p in (store / "seeds").glob("*") if not p.name.startswith(".")], (
            "no half-built seed under its final name"
        )

        resize(64 << 20)
        assert dataassess("units", str(corpus)).returncode == 0
        model_bytes = next(store.glob("seeds/*/model.safetensors")).stat().st_size
        resize(shutil.disk_usage(store).used + model_bytes * 3 // 2)  # room for one unit model, not two
        assert_one_full_disk_line(dataassess("train", str(corpus)))
        finished = {p.parent: p.stat().st_mtime_ns for p in store.glob("models/*/meta.json")}
        assert len(finished) == 1
        assert {p.parent for p in store.glob("models/*/model.safetensors")} == set(finished), (
            "no weights without their meta.json"
        )

        resize(64 << 20)
        res = dataassess("train", str(corpus))
        assert res.returncode == 0, res.stderr[-2000:]
        after = {p.parent: p.stat().st_mtime_ns for p in store.glob("models/*/meta.json")}
        assert len(after) == res.stdout.count("final loss") > 1
        assert all(after[d] == t for d, t in finished.items()), "the model finished before the disk filled is reused"
    finally:
        subprocess.run(["umount", str(store)], check=True)


PREPARE = """
import resource, sys
from dataassess import pipeline
from dataassess.config import Settings
from dataassess.store import Store
settings = Settings.model_validate_json(sys.argv[2])
inputs = pipeline.prepare(Store(settings.store), sys.argv[1], settings, progress=False)
print(sorted({u.partition for u in inputs.units}), "|", "; ".join(inputs.quarantined))
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024)  # MiB
"""


def test_a_20_mb_single_line_document_is_cut_in_bounded_memory_beside_latin1_text(settings, tmp_path):
    root = tmp_path / "corpus"
    write_jsonl(root / "good" / "a.jsonl", demo_docs("satire", 40))
    text = " ".join(d["text"].replace("\n", " ") for d in demo_docs("jargon"))
    (root / "long").mkdir()
    (root / "long" / "one-line.txt").write_text((text + " ") * (20_000_000 // (len(text) + 1) + 1))
    (root / "latin1").mkdir()
    (root / "latin1" / "a.txt").write_bytes(("café naïve déjà vu. " * 2000).encode("latin-1"))
    done = subprocess.run(
        [sys.executable, "-c", PREPARE, str(root), settings.model_dump_json()],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    partitions, peak_mib = done.stdout.strip().splitlines()
    assert partitions.startswith("['good', 'long'] |") and "latin1" in partitions and "not valid UTF-8" in partitions
    # torch and transformers take about 450 MiB; tokenizing 20 MB in one call took over 3 GiB
    assert int(peak_mib) < 1200, f"peak {peak_mib} MiB"


def children_running(pid: int, marker: str) -> list[int]:
    """The processes started by `pid` whose command line holds `marker`."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
            cmdline = (stat.parent / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except (OSError, IndexError, ValueError):
            continue
        if ppid == pid and marker in cmdline:
            found.append(int(stat.parent.name))
    return found


def start_intake_until_a_model_finished(tmp_path: Path, corpus: Path, api_restarts: int = 3):
    """An intake on a fresh store with the embedded Prefect API, run until its first unit model is finished.
    Returns the process, its command, its environment, the store and the API server's PID."""
    store = tmp_path / "store"
    toml = write_toml(
        small_settings(store, units={"tokens": 32768}, run={"api_restarts": api_restarts}), tmp_path / "dataassess.toml"
    )
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("DATAASSESS_") and k not in ("MLFLOW_TRACKING_URI", "PREFECT_API_URL")
    }
    args = [str(Path(sys.executable).with_name("dataassess")), "--config", str(toml), "intake", str(corpus)]
    proc = subprocess.Popen(args, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 600
    while not list(store.glob("models/*/meta.json")):
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        assert time.time() < deadline, "no unit model finished in time"
        time.sleep(0.1)
    servers = children_running(proc.pid, "prefect.server.api.server:create_app")
    assert len(servers) == 1, servers
    return proc, args, env, store, servers[0]


@pytest.mark.faults  # a minute or more: `make test-faults`
def test_an_orchestration_api_lost_mid_training_ends_in_one_line_and_the_rerun_resumes(tmp_path, corpus):
    """The embedded Prefect API server is killed while the intake trains: one `error:` line that says so and that a
    rerun resumes, promptly (not after Prefect's queued events each wait out their retries); the rerun trains only
    what had not finished. (No restarts allowed: what a command meets once its restarts are spent.)"""
    proc, args, env, store, server = start_intake_until_a_model_finished(tmp_path, corpus, api_restarts=0)
    try:
        os.kill(server, signal.SIGKILL)
        killed = time.monotonic()
        _, err = proc.communicate(timeout=600)
        waited = time.monotonic() - killed
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert proc.returncode == 2 and len(lines) == 1, err[-3000:]
    assert "orchestration API (Prefect) stopped answering" in lines[0] and "a rerun" in lines[0], lines[0]
    assert err.rstrip().endswith(lines[0]), "nothing after the error line"
    assert waited < 300, f"{waited:.0f} s from the API's loss to the exit"
    assert not list(store.rglob("*.tmp")), "nothing half-written"
    finished = {p: p.stat().st_mtime_ns for p in store.glob("models/*/meta.json")}
    rerun = subprocess.run(args, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert all(p.stat().st_mtime_ns == t for p, t in finished.items()), "a finished unit model is not trained again"
    units = len(list(store.glob("models/*/meta.json")))
    assert f"trained {units - len(finished)}, skipped {len(finished)}" in rerun.stdout, rerun.stdout[-2000:]


@pytest.mark.faults  # a minute or more: `make test-faults`
def test_an_orchestration_api_that_stalls_mid_training_is_waited_for(tmp_path, corpus):
    """The embedded Prefect API server is stopped (SIGSTOP) for 20 s while the intake trains, then continued: the
    intake waits for it and finishes as if nothing had happened."""
    proc, args, env, store, server = start_intake_until_a_model_finished(tmp_path, corpus)
    try:
        os.kill(server, signal.SIGSTOP)
        time.sleep(20)
        os.kill(server, signal.SIGCONT)
        out, err = proc.communicate(timeout=900)
    finally:
        if proc.poll() is None:
            os.kill(server, signal.SIGCONT)
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err[-3000:]
    assert not [line for line in err.splitlines() if line.startswith("error:")], err[-3000:]
    units = len(list(store.glob("models/*/meta.json")))
    assert f"trained {units}, skipped 0" in out, out[-2000:]


@pytest.mark.faults  # a minute or more: `make test-faults`
def test_an_orchestration_api_killed_mid_training_is_restarted_and_the_intake_finishes(tmp_path, corpus):
    """The embedded Prefect API server is killed while the intake trains: it is restarted on its port, said in
    one warning, and the intake finishes with every unit trained once; no server is left after it."""
    proc, args, env, store, server = start_intake_until_a_model_finished(tmp_path, corpus)
    try:
        os.kill(server, signal.SIGKILL)
        out, err = proc.communicate(timeout=900)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err[-3000:]
    assert not [line for line in err.splitlines() if line.startswith("error:")], err[-3000:]
    assert sum("restarted it on port" in line for line in err.splitlines()) == 1, err[-3000:]
    units = len(list(store.glob("models/*/meta.json")))
    assert f"trained {units}, skipped 0" in out, out[-2000:]
    assert not children_running(proc.pid, "prefect.server.api.server:create_app")


@pytest.mark.faults  # a minute or more: `make test-faults`
def test_sigterm_mid_training_stops_the_intake_and_its_embedded_api_server(tmp_path, corpus):
    """A scheduler's stop (SIGTERM) while the intake trains: one error line that a rerun resumes, and the
    embedded Prefect API server stops with the command instead of living on with no parent."""
    proc, args, env, store, server = start_intake_until_a_model_finished(tmp_path, corpus)
    try:
        proc.terminate()
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert proc.returncode == 130 and len(lines) == 1 and "interrupted" in lines[0], err[-3000:]
    deadline = time.time() + 15
    while Path(f"/proc/{server}").exists() and time.time() < deadline:
        time.sleep(0.2)
    alive = Path(f"/proc/{server}/stat").exists() and Path(f"/proc/{server}/stat").read_text().split()[2] != "Z"
    assert not alive, f"the API server {server} outlived the intake"
    assert not list(store.rglob("*.tmp")), "nothing half-written"
