"""The intake on Dask workers against an MLflow server on PostgreSQL, started by deploy/stack.py
in a folder and on ports of its own (`make test-distributed`)."""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from mlflow import MlflowClient

from tests.conftest import small_settings, write_toml

pytestmark = pytest.mark.distributed
ROOT = Path(__file__).resolve().parents[1]
DA = str(Path(sys.executable).with_name("dataassess"))


def load_stack():
    spec = importlib.util.spec_from_file_location("dataassess_test_stack", ROOT / "deploy" / "stack.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def free_base(stack) -> int:
    """A port base whose every offset is free on 127.0.0.1, below the ephemeral range (32768-60999), where a
    client's source port, or a probe connected to itself, could take a service's port before it binds."""
    for base in range(20000, 32000, 1000):
        with socket.socket() as s:
            if all(s.connect_ex(("127.0.0.1", base + o)) != 0 for o in stack.OFFSETS.values()):
                return base
    pytest.fail("no free port range for the test stack")


@pytest.fixture(scope="module")
def stack():
    """PostgreSQL, an MLflow server on it, a Prefect server on it, a Dask scheduler and two workers."""
    st = load_stack()
    state = Path(tempfile.mkdtemp(prefix="dataassess-stack-"))
    state.chmod(0o755)  # PostgreSQL runs as its own user and must reach its folder
    st.configure(state, free_base(st))
    for d in ("pids", "logs", "prefect", "store"):
        (state / d).mkdir()
    wanted = {"mlflow", "prefect-server", "dask-scheduler", "dask-workers"}
    services = [s for s in st.services(artifacts=str(state / "artifacts")) if s.name in wanted]
    try:
        st.postgres_up()
        for service in services:
            service.up()
        yield st
    finally:
        for service in reversed(services):
            if (pid := st.recorded_pid(service.name)) is not None:
                st.stop_group(service.name, pid)
        st.postgres_down()
        for port in st.PORTS.values():
            with socket.socket() as s:
                assert s.connect_ex(("127.0.0.1", port)) != 0, f"port {port} still open after the stack stopped"
        subprocess.run(["rm", "-rf", str(state)], check=False)


def intake_env(stack, settings, tmp_path, **extra) -> dict:
    config = write_toml(settings, tmp_path / "dataassess.toml")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DATAASSESS_", "PREFECT_API_URL"))}
    return {
        **env,
        "DATAASSESS_CONFIG": str(config),
        "MLFLOW_TRACKING_URI": stack.urls()["MLFLOW_TRACKING_URI"],
        "PREFECT_HOME": str(tmp_path / "prefect"),
        **extra,
    }


def versions_by_unit(stack, pool: str) -> dict[str, list[str]]:
    client = MlflowClient(stack.urls()["MLFLOW_TRACKING_URI"])
    out: dict[str, list[str]] = {}
    for v in client.search_model_versions(f"name LIKE '{pool}.%'"):
        out.setdefault(v.name.removeprefix(pool + "."), []).append(v.version)
    return out


def ranking_runs(stack, pool: str) -> list:
    client = MlflowClient(stack.urls()["MLFLOW_TRACKING_URI"])
    exp = client.get_experiment_by_name("dataassess-rankings")
    return client.search_runs([exp.experiment_id], f"tags.`dataassess.pool` = '{pool}'") if exp else []


def test_intake_on_a_local_dask_cluster_of_two_workers_against_mlflow_on_postgres(stack, settings, corpus, tmp_path):
    # no PREFECT_API_URL: the command starts a local Prefect server for the cluster's workers to report to
    env = intake_env(stack, settings, tmp_path, DATAASSESS_RUN__TASK_RUNNER="dask", DATAASSESS_RUN__DASK_WORKERS="2")
    done = subprocess.run(
        [DA, "intake", str(corpus), "--pool", "local"], env=env, capture_output=True, text=True, timeout=900
    )
    assert done.returncode == 0, done.stderr[-3000:]
    trained = {p.name for p in (settings.store / "models").iterdir() if (p / "meta.json").exists()}
    versions = versions_by_unit(stack, "local")
    assert len(trained) >= 4 and len(versions) == len(trained)
    assert all(v == ["1"] for v in versions.values()), versions
    (run,) = ranking_runs(stack, "local")
    assert {k.removeprefix("unit.") for k in run.data.params if k.startswith("unit.")} == set(versions)
    assert run.data.tags["dataassess.champion_version"] == "1"
    assert not (settings.store / "mlflow.db").exists(), "everything went to the server"


def executing_training(client) -> dict[str, list[str]]:
    """The train tasks each Dask worker is executing now, by worker address."""
    return client.run(
        lambda dask_worker: [
            str(k)
            for k, ts in dask_worker.state.tasks.items()
            if ts.state == "executing" and str(k).startswith("train")
        ]
    )


def test_a_worker_killed_during_training_loses_no_unit_and_adds_no_version(stack, settings, corpus, tmp_path):
    from distributed import Client

    slow = settings.model_copy(
        update={"units": settings.units.model_copy(update={"tokens": 24576})}
    )  # trainings of seconds
    env = intake_env(
        stack,
        slow,
        tmp_path,
        DATAASSESS_RUN__TASK_RUNNER="dask",
        PREFECT_API_URL=stack.urls()["PREFECT_API_URL"],
        DATAASSESS_RUN__DASK_ADDRESS=stack.urls()["DASK_SCHEDULER_ADDRESS"],
    )
    log = tmp_path / "intake.log"
    with open(log, "w") as out, Client(stack.urls()["DASK_SCHEDULER_ADDRESS"], timeout=30) as client:
        proc = subprocess.Popen([DA, "intake", str(corpus), "--pool", "killed"], env=env, stdout=out, stderr=out)
        victim = None
        deadline = time.time() + 600
        while victim is None and proc.poll() is None and time.time() < deadline:
            busy = {addr: keys for addr, keys in executing_training(client).items() if keys}
            if busy:
                addr = sorted(busy)[0]
                victim = (addr, client.run(os.getpid, workers=[addr])[addr])
            else:
                time.sleep(0.2)
        assert victim is not None, "no training was seen running on a Dask worker:\n" + log.read_text()[-2000:]
        os.kill(victim[1], signal.SIGKILL)
        assert proc.wait(timeout=900) == 0, log.read_text()[-3000:]
    trained = {p.name for p in (slow.store / "models").iterdir() if (p / "meta.json").exists()}
    versions = versions_by_unit(stack, "killed")
    assert len(versions) == len(trained) >= 2 and all(v == ["1"] for v in versions.values()), versions
    again = subprocess.run(
        [DA, "intake", str(corpus), "--pool", "killed"], env=env, capture_output=True, text=True, timeout=600
    )
    assert again.returncode == 0, again.stderr[-3000:]
    assert "trained 0," in again.stdout, again.stdout[-1500:]
    assert versions_by_unit(stack, "killed") == versions, "the rerun registered nothing new"
    assert len(ranking_runs(stack, "killed")) == 2
    assert not list(slow.store.rglob("*.tmp")), "no half-written file"


def listening_addresses(pids: set[int]) -> set[tuple[str, int]]:
    """(address, port) of every TCP socket these processes listen on, from /proc."""
    inodes = set()
    for pid in pids:
        try:
            for fd in os.listdir(f"/proc/{pid}/fd"):
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
                if target.startswith("socket:["):
                    inodes.add(target[8:-1])
        except (FileNotFoundError, PermissionError):
            continue
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A" and fields[9] in inodes:  # 0A: LISTEN
                addr, port = fields[1].split(":")
                raw = bytes.fromhex(addr)
                ip = socket.inet_ntop(
                    socket.AF_INET if len(raw) == 4 else socket.AF_INET6,
                    b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4)),
                )
                found.add((ip, int(port, 16)))
    return found


def test_the_default_ports_are_below_the_ephemeral_range_and_an_exit_says_why(tmp_path):
    st = load_stack()
    ephemeral = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    if "STACK_PORT_BASE" not in os.environ:
        assert max(st.PORTS.values()) < ephemeral, st.PORTS
    log = tmp_path / "service.log"
    with log.open("w") as out:
        why = "OSError: [Errno 98] Address already in use"
        proc = subprocess.Popen(
            [sys.executable, "-c", f"print('starting'); print({why!r}); raise SystemExit(3)"], stdout=out
        )
        with pytest.raises(SystemExit) as exited:
            st.wait(lambda: False, "service", 60, proc, log)
    assert str(exited.value) == f"error: service exited with 3 (last log line: {why}); see {log}"


def test_every_server_of_the_stack_listens_on_loopback_only(stack):
    leaders = {stack.recorded_pid(name) for name in ("mlflow", "prefect-server", "dask-scheduler", "dask-workers")}
    postmaster = int((stack.pg_dir() / "data" / "postmaster.pid").read_text().split()[0])
    pids = {postmaster}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (FileNotFoundError, ProcessLookupError):
            continue
        if int(fields[2]) in leaders or int(fields[1]) == postmaster:  # same process group, or a child of PostgreSQL
            pids.add(int(stat.parent.name))
    addresses = listening_addresses(pids)
    ports = {port for _, port in addresses}
    assert {stack.PORTS[n] for n in ("postgres", "mlflow", "prefect", "dask")} <= ports, addresses
    assert {ip for ip, _ in addresses} == {"127.0.0.1"}, addresses


def stack_processes(state: Path, ports: list[int]) -> list[str]:
    """Processes whose command line or environment names the stack's folder or one of its ports."""
    marks = [str(state).encode(), *(f"127.0.0.1:{p}".encode() for p in ports), *(f"--port {p}".encode() for p in ports)]
    found = []
    for proc in Path("/proc").glob("[0-9]*"):
        if int(proc.name) == os.getpid():
            continue
        try:
            seen = (proc / "cmdline").read_bytes().replace(b"\0", b" ") + b" " + (proc / "environ").read_bytes()
        except OSError:
            continue
        if any(m in seen for m in marks):
            found.append(f"{proc.name}: {seen[:200].decode(errors='replace')}")
    return found


def test_stack_up_a_deployment_from_the_work_pool_artifacts_in_s3_and_stack_down_leaves_nothing(
    seed_store, seed, corpus, tmp_path
):
    """The whole stack (PostgreSQL, Swift's S3 API, MLflow and Prefect servers, a process work pool and its worker,
    Dask) brought up by `stack.py up` in a folder and on ports of its own; the intake deployed from prefect.yaml and
    run by the worker from the work pool on the Dask workers; checked from the servers (the flow run's work pool on
    the Prefect server, one version per unit on the MLflow server, weights and ranking files as objects in the S3
    bucket); then `stack.py down` leaves no port listening and no process of the stack."""
    st = load_stack()
    state = Path(tempfile.mkdtemp(prefix="dataassess-stack-"))
    state.chmod(0o755)
    base = free_base(st)
    ports = [base + offset for offset in st.OFFSETS.values()]
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("DATAASSESS_", "PREFECT_", "MLFLOW_"))},
        "STACK_DIR": str(state),
        "STACK_PORT_BASE": str(base),
    }
    store = tmp_path / "store"
    (store / "seeds").mkdir(parents=True)
    for d in (seed_store / "seeds").iterdir():
        (store / "seeds" / d.name).symlink_to(d)
    small = small_settings(store).model_dump(mode="json", exclude={"run"})  # the demo's Dask settings stay
    (tmp_path / "small.json").write_text(json.dumps(small))
    python = [sys.executable]
    try:
        up = subprocess.run([*python, "deploy/stack.py", "up"], cwd=ROOT, env=env, capture_output=True, text=True)
        assert up.returncode == 0, up.stdout[-2000:] + up.stderr[-3000:]
        demo = subprocess.run(
            [
                *python,
                "deploy/distributed_demo.py",
                "--corpus",
                str(corpus),
                "--settings",
                str(tmp_path / "small.json"),
            ],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=1800,
        )
        assert demo.returncode == 0, demo.stdout[-2000:] + demo.stderr[-3000:]
        assert f"from work pool '{st.POOL}' Completed" in demo.stdout, demo.stdout
        assert f"checked on the MLflow server and in s3://{st.BUCKET}" in demo.stdout, demo.stdout
        assert (state / "swift").exists() and not (state / "artifacts").exists(), "artifacts went to the bucket"
    finally:
        down = subprocess.run([*python, "deploy/stack.py", "down"], cwd=ROOT, env=env, capture_output=True, text=True)
        left = stack_processes(state, ports)
        subprocess.run(["rm", "-rf", str(state)], check=False)
    assert down.returncode == 0, down.stdout[-2000:] + down.stderr[-3000:]
    for port in ports:
        with socket.socket() as s:
            assert s.connect_ex(("127.0.0.1", port)) != 0, f"port {port} still open after stack down"
    assert not left, f"processes of the stack left after stack down: {left}"
