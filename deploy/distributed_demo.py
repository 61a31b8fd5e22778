"""The two-wave demo through the stack (deploy/stack.py up): the intake deployed from prefect.yaml,
run by the Prefect worker from the work pool, its trainings and scorings on the Dask workers; then everything
checked from the servers (the flow runs' work pool on the Prefect server, models and rankings on the MLflow server,
their files in the S3 bucket), not from local files.

    python deploy/distributed_demo.py [--corpus DIR] [--settings FILE.json]

--corpus: one wave of that corpus (pool named after its folder) instead of the bundled demo's two;
--settings: dataassess settings (JSON) merged over the demo's (`make test-distributed` passes small ones)."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import stack  # noqa: E402

DEPLOYMENT = "dataassess-intake/on-demand"
POOL = "demo"


def deploy() -> None:
    env = {**os.environ, **stack.QUIET, **stack.prefect_env()}
    subprocess.run(
        [str(stack.BIN / "prefect"), "--no-prompt", "deploy", "--name", "on-demand"],
        cwd=stack.ROOT,
        env=env,
        check=True,
        stdout=subprocess.DEVNULL,
    )
    print(f"deployed {DEPLOYMENT} to work pool '{stack.POOL}' from prefect.yaml", flush=True)


def run_wave(wave: int, corpus: Path, config: dict, pool: str, eval_sets: str | None) -> None:
    from prefect.deployments import run_deployment

    started = time.time()
    run = run_deployment(
        DEPLOYMENT,
        parameters={"corpus_root": str(corpus), "config": config, "eval_sets": eval_sets, "pool": pool},
        timeout=3600,
        flow_run_name=f"distributed demo wave {wave}",
    )
    if run.work_pool_name != stack.POOL:  # as the Prefect server recorded it
        raise SystemExit(f"error: wave {wave}: flow run {run.name} ran from work pool {run.work_pool_name!r}")
    if not run.state.is_completed():
        raise SystemExit(
            f"error: wave {wave}: flow run {run.name} ended {run.state.name}: {run.state.message}; "
            f"see {stack.STATE / 'logs' / 'prefect-worker.log'}"
        )
    print(
        f"wave {wave}: flow run '{run.name}' from work pool '{run.work_pool_name}' {run.state.name} in "
        f"{time.time() - started:.0f} s",
        flush=True,
    )


def check(waves: int, pool: str) -> None:
    """Every unit of the latest ranking is registered once, with its weights in the bucket; one ranking run per wave."""
    import boto3
    from mlflow import MlflowClient

    from registry.tracking import RANKINGS_EXPERIMENT

    client = MlflowClient(os.environ["MLFLOW_TRACKING_URI"])
    s3 = boto3.client(
        "s3",
        endpoint_url=stack.urls()["MLFLOW_S3_ENDPOINT_URL"],
        **{
            "aws_access_key_id": stack.S3_KEYS["AWS_ACCESS_KEY_ID"],
            "aws_secret_access_key": stack.S3_KEYS["AWS_SECRET_ACCESS_KEY"],
            "region_name": stack.S3_KEYS["AWS_DEFAULT_REGION"],
        },
    )
    exp = client.get_experiment_by_name(RANKINGS_EXPERIMENT)
    runs = client.search_runs(
        [exp.experiment_id], f"tags.`dataassess.pool` = '{pool}'", order_by=["attributes.start_time DESC"]
    )
    problems = [] if len(runs) == waves else [f"{len(runs)} ranking runs of pool '{pool}', expected {waves}"]
    latest = runs[0]
    units = {k.removeprefix("unit."): v for k, v in latest.data.params.items() if k.startswith("unit.")}
    in_bucket = 0
    for unit, version in sorted(units.items()):
        versions = client.search_model_versions(f"name = '{pool}.{unit}'")
        if [v.version for v in versions] != [version]:
            problems.append(f"{pool}.{unit}: versions {[v.version for v in versions]}, expected exactly [{version}]")
            continue
        if has_object(s3, versions[0].run_id, "model/artifacts/model.safetensors", client):
            in_bucket += 1
        else:
            problems.append(f"{pool}.{unit} v{version}: its model.safetensors is not in s3://{stack.BUCKET}")
    for artifact in ("ranking.json", "top_mixtures.png"):
        if not has_object(s3, latest.info.run_id, artifact, client):
            problems.append(f"ranking run {latest.info.run_id}: {artifact} is not in s3://{stack.BUCKET}")
    champion = client.get_model_version_by_alias(f"{pool}-champion", "champion")
    if champion.tags.get("dataassess.ranking_run_id") != latest.info.run_id:
        problems.append(f"the champion (v{champion.version}) does not name the latest ranking run")
    if problems:
        raise SystemExit("error: distributed demo check failed: " + "; ".join(problems))
    print(
        f"checked on the MLflow server and in s3://{stack.BUCKET}: {len(units)} unit models, one version each, weights "
        f"in the bucket ({in_bucket}/{len(units)}); {len(runs)} ranking runs with their table and plot; champion "
        f"{champion.name} v{champion.version} ({champion.tags.get('dataassess.mixture')})",
        flush=True,
    )


def has_object(s3, run_id: str, path: str, client) -> bool:
    """Is the run's artifact `path` an object in the bucket (the server proxies mlflow-artifacts:/ to s3://BUCKET/mlartifacts)?"""
    uri = client.get_run(run_id).info.artifact_uri  # mlflow-artifacts:/<experiment>/<run>/artifacts
    key = "mlartifacts/" + uri.split(":", 1)[1].lstrip("/") + "/" + path
    try:
        return s3.head_object(Bucket=stack.BUCKET, Key=key)["ContentLength"] > 0
    except s3.exceptions.ClientError:
        return False


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--corpus", type=Path, help="one wave of this corpus instead of the bundled demo's two")
    parser.add_argument("--settings", type=Path, help="dataassess settings (JSON) merged over the demo's")
    args = parser.parse_args(argv)
    for name, value in {**stack.QUIET, **stack.client_env()}.items():
        os.environ[name] = value
    from flows.demo import DATA, LATE_PARTITIONS, stage

    deploy()
    config = {
        "store": str(stack.STATE / "store"),
        "optimize": {"on_intake": False},
        "run": {"task_runner": "dask", "dask_address": stack.urls()["DASK_SCHEDULER_ADDRESS"]},
        **(json.loads(args.settings.read_text()) if args.settings else {}),
    }
    if args.corpus:
        pool = args.corpus.name
        run_wave(1, args.corpus.resolve(), config, pool, None)
        check(1, pool)
    else:
        corpus = stack.STATE / "demo-corpus" / POOL
        bundled = sorted(p for p in (DATA / "corpus").iterdir() if p.is_dir())
        waves = [[p for p in bundled if p.name not in LATE_PARTITIONS], bundled]
        for wave, partitions in enumerate(waves, 1):
            stage(corpus, partitions)
            print(f"== wave {wave}: {len(partitions)} partitions in {corpus}", flush=True)
            run_wave(wave, corpus, config, POOL, str(DATA / "eval"))
        check(len(waves), POOL)
    print(
        f"MLflow UI: {os.environ['MLFLOW_TRACKING_URI']}  Prefect UI: "
        f"{os.environ['PREFECT_API_URL'].removesuffix('/api')}  "
        "(both stop with the stack)"
    )


if __name__ == "__main__":
    main()
