"""The distributed stack on one machine, as processes bound to 127.0.0.1: PostgreSQL, memcached and
OpenStack Swift (an S3 object store), an MLflow server (PostgreSQL + S3), a Prefect server
(PostgreSQL) with a process work pool and its worker, a Dask scheduler and two workers.

    python deploy/stack.py up | down | status | env | packages [PACKAGE ...]

`up` is idempotent (a running, healthy service is left as it is) and waits for each service to be
ready; `down` stops everything it started (TERM, then KILL after a timeout), newest first. State,
logs and PID files live in $STACK_DIR (default .stack). Ports: $STACK_PORT_BASE + offsets.
"""

from __future__ import annotations

import http.client
import json
import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STATE = Path(os.environ.get("STACK_DIR", ROOT / ".stack")).resolve()
# below Linux's ephemeral range (32768-60999): no outgoing connection, and no readiness probe connected to itself,
# can hold a service's port before the service binds it
BASE = int(os.environ.get("STACK_PORT_BASE", "26000"))
HOST = "127.0.0.1"
OFFSETS = {
    "postgres": 432,
    "memcached": 211,
    "swift-object": 10,
    "swift-container": 11,
    "swift-account": 12,
    "swift-proxy": 80,
    "mlflow": 500,
    "prefect": 420,
    "dask": 786,
}
PORTS = {name: BASE + offset for name, offset in OFFSETS.items()}
BUCKET = "dataassess"
S3_KEYS = {"AWS_ACCESS_KEY_ID": "test:tester", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}
POOL = "dataassess"
PACKAGES = {
    "pg_ctl": "postgresql",
    "memcached": "memcached",
    "swift-proxy-server": "swift-proxy",
    "swift-account-server": "swift-account",
    "swift-container-server": "swift-container",
    "swift-object-server": "swift-object",
}
BIN = Path(sys.executable).parent
QUIET = {
    "DO_NOT_TRACK": "1",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "HF_HUB_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "TOKENIZERS_PARALLELISM": "false",
}


def configure(state: Path, base: int) -> None:
    """Point this module at another state folder and port base (the tests run their own stack)."""
    global STATE, BASE
    STATE, BASE = Path(state).resolve(), base
    PORTS.update({name: base + offset for name, offset in OFFSETS.items()})


def urls() -> dict[str, str]:
    return {
        "PREFECT_API_URL": f"http://{HOST}:{PORTS['prefect']}/api",
        "MLFLOW_TRACKING_URI": f"http://{HOST}:{PORTS['mlflow']}",
        "DASK_SCHEDULER_ADDRESS": f"tcp://{HOST}:{PORTS['dask']}",
        "MLFLOW_S3_ENDPOINT_URL": f"http://{HOST}:{PORTS['swift-proxy']}",
    }


def client_env() -> dict[str, str]:
    """What a client of the stack exports: the servers, and the intake's settings for the shared store and Dask."""
    u = urls()
    return {
        "PREFECT_API_URL": u["PREFECT_API_URL"],
        "MLFLOW_TRACKING_URI": u["MLFLOW_TRACKING_URI"],
        "DATAASSESS_STORE": str(STATE / "store"),
        "DATAASSESS_RUN__TASK_RUNNER": "dask",
        "DATAASSESS_RUN__DASK_ADDRESS": u["DASK_SCHEDULER_ADDRESS"],
    }


# ---- helpers ---------------------------------------------------------------------------


def say(msg: str) -> None:
    print(f"stack: {msg}", flush=True)


def is_root() -> bool:
    return os.geteuid() == 0


def run_as(user: str) -> dict:
    """Popen arguments that run a child as `user` when we are root (PostgreSQL refuses root)."""
    if not is_root():
        return {}
    pw = pwd.getpwnam(user)
    return {"user": pw.pw_uid, "group": pw.pw_gid, "extra_groups": []}


def chown(path: Path, user: str) -> None:
    if is_root():
        pw = pwd.getpwnam(user)
        for p in [path, *path.rglob("*")]:
            os.chown(p, pw.pw_uid, pw.pw_gid)


def port_open(port: int) -> bool:
    """Something listens on the port. A probe of a free port in the ephemeral range can get that very port as its own
    source port, and TCP then connects the socket to itself (holding the port the server wants): not a listener."""
    with socket.socket() as s:
        s.settimeout(1)
        return s.connect_ex((HOST, port)) == 0 and s.getsockname() != s.getpeername()


def http_ok(url: str) -> bool:
    port = urllib.parse.urlsplit(url).port
    if port is not None and not port_open(port):
        return False
    try:
        with urllib.request.urlopen(url, timeout=3) as r:
            return r.status < 400
    except (OSError, http.client.HTTPException):  # a self-connected probe reads its own request back
        return False


def last_line(log: Path | None) -> str:
    """The log's last non-empty line, as ' (last log line: ...)': why a service exited, in the error itself."""
    if log is None:
        return ""
    try:
        lines = [line.strip() for line in log.read_text(errors="replace").splitlines() if line.strip()]
    except OSError:
        return ""
    return f" (last log line: {lines[-1][:300]})" if lines else ""


def wait(
    check: Callable[[], bool],
    what: str,
    timeout_s: float,
    proc: subprocess.Popen | None = None,
    log: Path | None = None,
) -> None:
    deadline = time.time() + timeout_s
    while not check():
        if proc is not None and proc.poll() is not None:
            raise SystemExit(f"error: {what} exited with {proc.returncode}{last_line(log)}; see {log}")
        if time.time() > deadline:
            raise SystemExit(f"error: {what} was not ready within {timeout_s:.0f} s; see {log}")
        time.sleep(0.5)


def pid_file(name: str) -> Path:
    return STATE / "pids" / f"{name}.pid"


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return True


def recorded_pid(name: str) -> int | None:
    f = pid_file(name)
    if not f.exists():
        return None
    pid = int(f.read_text().split()[0])
    return pid if alive(pid) else None


# ---- services ----------------------------------------------------------------------------


@dataclass
class Service:
    name: str
    argv: Callable[[], list[str]]
    ready: Callable[[], bool]
    env: Callable[[], dict[str, str]] = dict
    user: str | None = None
    prepare: Callable[[], None] = lambda: None
    after: Callable[[], None] = lambda: None
    timeout_s: float = 90
    cwd: Path = field(default_factory=lambda: STATE)

    def up(self) -> None:
        if recorded_pid(self.name) and self.ready():
            say(f"{self.name} already up")
            return
        self.prepare()
        log = STATE / "logs" / f"{self.name}.log"
        started = time.time()
        with open(log, "ab") as out:
            proc = subprocess.Popen(
                self.argv(),
                env={**os.environ, **QUIET, **self.env()},
                cwd=self.cwd,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                **(run_as(self.user) if self.user else {}),
            )
        pid_file(self.name).write_text(str(proc.pid))
        wait(self.ready, self.name, self.timeout_s, proc, log)
        self.after()
        say(f"{self.name} up in {time.time() - started:.1f} s (pid {proc.pid}, log {log.relative_to(STATE)})")


def stop_group(name: str, pid: int, timeout_s: float = 15) -> None:
    """TERM the service's process group, then KILL what is left after timeout_s."""
    try:
        os.killpg(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.time() + timeout_s
    while time.time() < deadline and group_alive(pid):
        time.sleep(0.3)
    if group_alive(pid):
        say(f"{name} ignored TERM for {timeout_s:.0f} s: KILL")
        try:
            os.killpg(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    # zombies of a group whose leader we started are reaped by init here; count only live members
    out = subprocess.run(["ps", "-o", "stat=", "-g", str(pgid)], capture_output=True, text=True).stdout.split()
    return any(not s.startswith("Z") for s in out)


# PostgreSQL daemonizes itself: pg_ctl starts and stops it.
def pg_dir() -> Path:
    return STATE / "postgres"


def pg_bin(tool: str) -> str:
    found = shutil.which(tool)
    if found:
        return found
    versions = sorted(Path("/usr/lib/postgresql").glob(f"*/bin/{tool}"))
    if not versions:
        raise SystemExit(f"error: {tool} not found: install Debian's postgresql (make stack-up does when root)")
    return str(versions[-1])


def postgres_up() -> None:
    data, sock = pg_dir() / "data", pg_dir() / "socket"
    if data.is_dir() and (data / "postmaster.pid").exists() and port_open(PORTS["postgres"]):
        say("postgres already up")
        return
    pg_dir().mkdir(exist_ok=True)
    sock.mkdir(exist_ok=True)
    chown(pg_dir(), "postgres")
    as_pg = run_as("postgres")
    if not (data / "PG_VERSION").exists():
        subprocess.run(
            [pg_bin("initdb"), "-D", str(data), "-U", "postgres", "--auth=trust", "-E", "UTF8"],
            check=True,
            stdout=subprocess.DEVNULL,
            **as_pg,
        )
    started = time.time()
    log = STATE / "logs" / "postgres.log"
    log.touch()
    chown(log, "postgres")
    subprocess.run(
        [
            pg_bin("pg_ctl"),
            "-D",
            str(data),
            "-l",
            str(log),
            "-w",
            "-t",
            "60",
            "-o",
            f"-c listen_addresses={HOST} -p {PORTS['postgres']} -k {sock}",
            "start",
        ],
        check=True,
        stdout=subprocess.DEVNULL,
        **as_pg,
    )
    import psycopg2

    conn = psycopg2.connect(host=HOST, port=PORTS["postgres"], user="postgres", dbname="postgres")
    conn.autocommit = True
    with conn.cursor() as cur:
        for db in ("mlflow", "prefect"):
            cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (db,))
            if cur.fetchone() is None:
                cur.execute(f"CREATE DATABASE {db}")
    conn.close()
    say(f"postgres up in {time.time() - started:.1f} s (port {PORTS['postgres']}, databases mlflow and prefect)")


def postgres_down() -> None:
    data = pg_dir() / "data"
    if (data / "postmaster.pid").exists():
        subprocess.run(
            [pg_bin("pg_ctl"), "-D", str(data), "-m", "fast", "-w", "-t", "30", "stop"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            **run_as("postgres"),
        )
        say("postgres stopped")


def pg_url(db: str, driver: str = "postgresql") -> str:
    return f"{driver}://postgres@{HOST}:{PORTS['postgres']}/{db}"


# Swift: one node, one replica, one device folder, the s3api middleware in front of tempauth.
def swift_dir() -> Path:
    return STATE / "swift"


def swift_user() -> str:
    return "swift" if is_root() else pwd.getpwuid(os.getuid()).pw_name


DEFAULTS = """[DEFAULT]
bind_ip = {host}
bind_port = {port}
workers = 1
user = {user}
swift_dir = {swift}
"""

SERVER_CONF = (
    DEFAULTS
    + """devices = {devices}
mount_check = false
disable_fallocate = true
log_name = {name}

[pipeline:main]
pipeline = {name}

[app:{name}]
use = egg:swift#{kind}

[{kind}-replicator]
[{kind}-updater]
[{kind}-auditor]
"""
)

PROXY_PIPELINE = (
    "catch_errors gatekeeper healthcheck proxy-logging cache listing_formats s3api tempauth proxy-logging proxy-server"
).split()
PROXY_CONF = (
    DEFAULTS
    + """log_name = proxy

[pipeline:main]
pipeline = """
    + " ".join(PROXY_PIPELINE)
    + """

[app:proxy-server]
use = egg:swift#proxy
account_autocreate = true

[filter:s3api]
use = egg:swift#s3api
location = us-east-1

[filter:tempauth]
use = egg:swift#tempauth
user_test_tester = testing .admin

[filter:cache]
use = egg:swift#memcache
memcache_servers = {host}:{memcached}

[filter:catch_errors]
use = egg:swift#catch_errors
[filter:gatekeeper]
use = egg:swift#gatekeeper
[filter:healthcheck]
use = egg:swift#healthcheck
[filter:proxy-logging]
use = egg:swift#proxy_logging
[filter:listing_formats]
use = egg:swift#listing_formats
"""
)


def swift_prepare() -> None:
    sw = swift_dir()
    if (sw / "object.ring.gz").exists():
        return
    (sw / "devices" / "d1").mkdir(parents=True, exist_ok=True)
    (sw / "swift.conf").write_text(
        f"[swift-hash]\nswift_hash_path_suffix = {secrets.token_hex(8)}\nswift_hash_path_prefix = "
        f"{secrets.token_hex(8)}\n\n"
        "[storage-policy:0]\nname = Policy-0\ndefault = yes\n"
    )
    for kind in ("account", "container", "object"):
        conf = SERVER_CONF.format(
            host=HOST,
            port=PORTS[f"swift-{kind}"],
            user=swift_user(),
            swift=sw,
            devices=sw / "devices",
            name=f"{kind}-server",
            kind=kind,
        )
        (sw / f"{kind}-server.conf").write_text(conf)
        builder = str(sw / f"{kind}.builder")
        for args in (
            ["create", "10", "1", "1"],
            ["add", f"r1z1-{HOST}:{PORTS[f'swift-{kind}']}/d1", "100"],
            ["rebalance"],
        ):
            subprocess.run(["swift-ring-builder", builder, *args], check=False, stdout=subprocess.DEVNULL, cwd=sw)
    (sw / "proxy-server.conf").write_text(
        PROXY_CONF.format(
            host=HOST, port=PORTS["swift-proxy"], user=swift_user(), swift=sw, memcached=PORTS["memcached"]
        )
    )
    chown(sw, swift_user())


def swift_server(kind: str) -> Service:
    return Service(
        f"swift-{kind}",
        lambda: [f"swift-{kind}-server", str(swift_dir() / f"{kind}-server.conf")],
        lambda: port_open(PORTS[f"swift-{kind}"]),
        prepare=swift_prepare,
    )


def create_bucket() -> None:
    import boto3

    s3 = boto3.client(
        "s3",
        endpoint_url=urls()["MLFLOW_S3_ENDPOINT_URL"],
        aws_access_key_id=S3_KEYS["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=S3_KEYS["AWS_SECRET_ACCESS_KEY"],
        region_name=S3_KEYS["AWS_DEFAULT_REGION"],
    )
    for attempt in range(20):  # the proxy answers before its account is auto-created on the first write
        try:
            s3.create_bucket(Bucket=BUCKET)
            return
        except s3.exceptions.BucketAlreadyOwnedByYou:
            return
        except Exception:
            if attempt == 19:
                raise
            time.sleep(1)


def prefect_env() -> dict[str, str]:
    return {"PREFECT_HOME": str(STATE / "prefect"), "PREFECT_API_URL": urls()["PREFECT_API_URL"]}


def create_pool() -> None:
    subprocess.run(
        [str(BIN / "prefect"), "--no-prompt", "work-pool", "create", POOL, "--type", "process", "--overwrite"],
        check=True,
        stdout=subprocess.DEVNULL,
        env={**os.environ, **QUIET, **prefect_env()},
    )


def worker_online() -> bool:
    req = urllib.request.Request(
        f"{urls()['PREFECT_API_URL']}/work_pools/{POOL}/workers/filter",
        data=b"{}",
        headers={"Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(req, timeout=3) as r:
            return any(w.get("status") == "ONLINE" for w in json.load(r))
    except OSError:
        return False


def dask_ready(n: int) -> Callable[[], bool]:
    def check() -> bool:
        if not port_open(PORTS["dask"]):
            return False
        if n == 0:
            return True
        from distributed import Client

        try:
            with Client(urls()["DASK_SCHEDULER_ADDRESS"], timeout=5) as c:
                return len(c.scheduler_info()["workers"]) >= n
        except OSError:
            return False

    return check


def services(artifacts: str | None = None) -> list[Service]:
    """The stack's services in start order; artifacts: where MLflow keeps them (default the S3 bucket)."""
    u = urls()
    workers_env = lambda: {**client_env(), **prefect_env(), "PREFECT_WORKER_QUERY_SECONDS": "3"}  # noqa: E731
    return [
        Service(
            "memcached",
            lambda: [
                "memcached",
                "-l",
                HOST,
                "-p",
                str(PORTS["memcached"]),
                "-U",
                "0",
                "-m",
                "64",
                *(["-u", "memcache"] if is_root() else []),
            ],
            lambda: port_open(PORTS["memcached"]),
        ),
        *(swift_server(k) for k in ("account", "container", "object")),
        Service(
            "swift-proxy",
            lambda: ["swift-proxy-server", str(swift_dir() / "proxy-server.conf")],
            lambda: http_ok(f"{u['MLFLOW_S3_ENDPOINT_URL']}/healthcheck"),
            after=create_bucket,
        ),
        Service(
            "mlflow",
            lambda: [
                str(BIN / "mlflow"),
                "server",
                "--host",
                HOST,
                "--port",
                str(PORTS["mlflow"]),
                "--workers",
                "1",
                "--backend-store-uri",
                pg_url("mlflow"),
                "--artifacts-destination",
                artifacts or f"s3://{BUCKET}/mlartifacts",
            ],
            lambda: http_ok(f"{u['MLFLOW_TRACKING_URI']}/health"),
            timeout_s=180,
            env=lambda: {
                **S3_KEYS,
                "MLFLOW_S3_ENDPOINT_URL": u["MLFLOW_S3_ENDPOINT_URL"],
                "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
            },
        ),
        Service(
            "prefect-server",
            lambda: [str(BIN / "prefect"), "server", "start", "--host", HOST, "--port", str(PORTS["prefect"])],
            lambda: http_ok(f"{u['PREFECT_API_URL']}/health"),
            timeout_s=180,
            after=create_pool,
            env=lambda: {
                **prefect_env(),
                "PREFECT_API_URL": "",
                "PREFECT_UI_API_URL": u["PREFECT_API_URL"],
                "PREFECT_API_DATABASE_CONNECTION_URL": pg_url("prefect", "postgresql+asyncpg"),
            },
        ),
        # --no-dashboard still serves /health and metrics on the dashboard address, on every interface by default
        Service(
            "dask-scheduler",
            lambda: [
                str(BIN / "dask"),
                "scheduler",
                "--host",
                HOST,
                "--port",
                str(PORTS["dask"]),
                "--no-dashboard",
                "--dashboard-address",
                f"{HOST}:0",
            ],
            dask_ready(0),
            env=workers_env,
        ),
        Service(
            "dask-workers",
            lambda: [
                str(BIN / "dask"),
                "worker",
                u["DASK_SCHEDULER_ADDRESS"],
                "--nworkers",
                "2",
                "--nthreads",
                "1",
                "--host",
                HOST,
                "--no-dashboard",
                "--dashboard-address",
                f"{HOST}:0",
                "--name",
                "dataassess",
            ],
            dask_ready(2),
            env=workers_env,
            cwd=ROOT,
        ),
        Service(
            "prefect-worker",
            lambda: [
                str(BIN / "prefect"),
                "worker",
                "start",
                "--pool",
                POOL,
                "--limit",
                "1",
                "--name",
                "dataassess-local",
            ],
            worker_online,
            env=workers_env,
            cwd=ROOT,
        ),
    ]


def installed(tool: str) -> bool:
    return bool(shutil.which(tool) or (tool == "pg_ctl" and list(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"))))


def ensure_packages(only: set[str] | None = None) -> None:
    """Install the Debian packages the stack needs (apt-get, as root), or say which are missing."""
    missing = sorted({pkg for tool, pkg in PACKAGES.items() if (only is None or pkg in only) and not installed(tool)})
    if not missing:
        return
    if not (is_root() and shutil.which("apt-get")):
        raise SystemExit(
            f"error: the stack needs Debian packages {' '.join(missing)}: run `sudo apt-get install "
            f"{' '.join(missing)}` "
            "or `make stack-up` as root"
        )
    say(f"installing {' '.join(missing)} (apt-get)")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update", "-q"], check=True, stdout=subprocess.DEVNULL, env=env)
    subprocess.run(["apt-get", "install", "-y", "-q", *missing], check=True, stdout=subprocess.DEVNULL, env=env)


def up() -> None:
    ensure_packages()
    started = time.time()
    for d in ("pids", "logs", "prefect", "store"):
        (STATE / d).mkdir(parents=True, exist_ok=True)
    postgres_up()
    for service in services():
        service.up()
    env_file().write_text("".join(f"export {k}={v}\n" for k, v in client_env().items()))
    say(f"ready in {time.time() - started:.0f} s; `source {env_file()}` points dataassess at it")


def down() -> None:
    for service in reversed(services()):
        pid = recorded_pid(service.name)
        if pid is not None:
            stop_group(service.name, pid)
            say(f"{service.name} stopped")
        pid_file(service.name).unlink(missing_ok=True)
    postgres_down()
    env_file().unlink(missing_ok=True)
    still = [f"{name} ({port})" for name, port in PORTS.items() if port_open(port)]
    if still:
        raise SystemExit(f"error: still listening after stack down: {', '.join(still)}")


def status() -> int:
    healthy = True
    for service in services():
        pid = recorded_pid(service.name)
        ok = pid is not None and service.ready()
        healthy &= ok
        print(f"{service.name:16s} {'up' if ok else 'down'}" + (f" (pid {pid})" if pid else ""))
    pg = port_open(PORTS["postgres"])
    print(f"{'postgres':16s} {'up' if pg else 'down'}")
    return 0 if healthy and pg else 1


def env_file() -> Path:
    return STATE / "env"


if __name__ == "__main__":
    command = sys.argv[1] if len(sys.argv) > 1 else "status"
    if command == "up":
        up()
    elif command == "down":
        down()
    elif command == "status":
        sys.exit(status())
    elif command == "packages":
        ensure_packages(set(sys.argv[2:]) or None)
    elif command == "env":
        print("".join(f"export {k}={v}\n" for k, v in client_env().items()), end="")
    else:
        sys.exit(f"error: unknown command {command!r}; use up, down, status, env or packages [PACKAGE ...]")
