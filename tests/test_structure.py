"""The layout's promises: imports without side effects, one pipeline sequence."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

SIDE_EFFECTS = """
import json, logging, os, sys, warnings
sys.path.insert(0, sys.argv[1])
# theirs first: what importing them does is theirs to answer for
import datasets, matplotlib, matplotlib.figure, mlflow, mlflow.data, pandas, prefect, prefect.context, scipy.stats
import torch, transformers
import filelock, pydantic_settings, safetensors.torch, tqdm.auto, typer
from prefect import flow, task
from prefect.cache_policies import NO_CACHE
from prefect.events import DeploymentEventTrigger
from prefect.task_runners import ThreadPoolTaskRunner
from transformers import AutoModelForCausalLM, AutoTokenizer, GPT2Config, LlamaConfig, PreTrainedTokenizerFast
import mlflow.tracking._tracking_service.utils as tracking

def state():
    return {
        "env": dict(os.environ),
        "torch flushes denormals": (torch.tensor([1e-39]) * 1.0).item() == 0.0,
        "torch threads": torch.get_num_threads(),
        "prefect settings": id(prefect.context.GLOBAL_SETTINGS_CONTEXT),
        "warning filters": len(warnings.filters),
        "log levels": {
            n: logging.getLogger(n).level for n in ("", "mlflow", "prefect", "transformers", "datasets", "httpx")
        },
        "matplotlib backend": matplotlib.rcParams._get_backend_or_none(),
        "mlflow tracking uri": tracking._tracking_uri,
        "progress bars": [
            datasets.utils.logging.is_progress_bar_enabled(),
            transformers.utils.logging.is_progress_bar_enabled(),
        ],
        "transformers verbosity": transformers.utils.logging.get_verbosity(),
    }

before = state()
import dataassess, dataassess.pipeline, dataassess.fidelity, dataassess.scoring, dataassess.merge
import registry, registry.publish, registry.models, registry.rankings, registry.fidelity, registry.tracking
import flows, flows.intake, flows.serve, flows.demo, flows.cli, flows.runtime
after = state()
print(json.dumps({k: [before[k], after[k]] for k in before if before[k] != after[k]}, default=str))
"""


def test_importing_the_packages_creates_no_file_and_changes_no_global_setting(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    out = subprocess.run(
        [sys.executable, "-c", SIDE_EFFECTS, str(ROOT)], cwd=empty, capture_output=True, text=True, check=True
    )
    changed = json.loads(out.stdout.strip().splitlines()[-1])
    assert changed == {}, changed
    assert list(empty.iterdir()) == []
