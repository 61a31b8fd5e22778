"""Time `dataassess demo` on a fresh store under each given setting, one after the other in one run, and write
OUT_DIR/NAME.json per setting (the settings that matter, wall seconds, units and mixtures ranked). The fidelity
study's "Defaults" section reads them: a default must keep `make demo` within 10 minutes.

    python scripts/time_demo.py OUT_DIR default units-32k:DATAASSESS_UNITS__TOKENS=32768
"""

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from dataassess.files import write_json

DA = Path(sys.executable).with_name("dataassess")
# what the weight search on intake costs: the demo searches twice (optimize.on_intake)
SEARCH = ("samples", "samples_per_partition", "warm_samples", "rounds", "round_samples", "eval_fraction")


def dataassess(store: Path, env: dict[str, str], *args: str) -> str:
    run = subprocess.run(
        [str(DA), "--store", str(store), *args],
        env={**os.environ, **env},
        check=True,
        stdout=subprocess.PIPE,
        text=True,
    )
    return run.stdout


def time_demo(name: str, env: dict[str, str], out: Path) -> dict:
    store = Path(tempfile.mkdtemp(prefix=f"demo-time-{name}-"))
    try:
        config = json.loads(dataassess(store, env, "config"))
        start = time.perf_counter()
        dataassess(store, env, "demo")
        wall_s = time.perf_counter() - start
        rows = json.loads(dataassess(store, env, "ranking", "--pool", "demo", "--json"))["rows"]
    finally:
        shutil.rmtree(store, ignore_errors=True)
    report = {
        "name": name,
        "env": env,
        "base_model": config["base_model"],
        "unit_tokens": config["units"]["tokens"],
        "merge": config["merge"]["method"],
        "k_max": config["rank"]["k_max"],
        "search": {k: config["optimize"][k] for k in SEARCH},
        "wall_s": round(wall_s, 1),
        "cpu_count": os.cpu_count(),
        "n_units": len({u for row in rows for u in row["units"]}),
        "n_mixtures": len(rows),
        "date": time.strftime("%Y-%m-%d", time.gmtime()),
    }
    write_json(out / f"{name}.json", report)
    print(f"{name}: {wall_s / 60:.1f} min, {report['n_units']} units, {report['n_mixtures']} mixtures", flush=True)
    return report


def main(out_dir: str, *settings: str) -> None:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for setting in settings:
        name, _, assignments = setting.partition(":")
        env = dict(a.split("=", 1) for a in assignments.split(",") if a)
        time_demo(name, env, out)


if __name__ == "__main__":
    main(*sys.argv[1:])
