"""The docs hold no figure typed by hand: every generated page is regenerated from its committed source and
compared, and the README stays a five-minute read."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

from dataassess.config import BUILT_SEED_LR, Settings

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("script", ["write_config_doc.py", "write_bench_doc.py", "write_fidelity_doc.py"])
def test_generated_docs_are_current(script):
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / script), "--check"], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_readme_is_short_and_links_only_to_docs_that_exist():
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 250
    for name in ("architecture", "benchmarks", "fidelity", "cluster", "configuration", "usage"):
        assert f"docs/{name}.md" in readme and (ROOT / "docs" / f"{name}.md").is_file(), name


def test_the_configured_defaults_are_the_ones_the_fidelity_study_chose():
    doc = (ROOT / "docs" / "fidelity.md").read_text()
    chosen = re.search(
        r"Defaults chosen by this study: `units.tokens = (\d+)`, `train.lr = ([0-9.e-]+)` and "
        r'`train.schedule = "(\w+)"` for a built seed, '
        r'`merge.method = "(\w+)"`, `optimize.samples = (\d+)`, `optimize.samples_per_partition = (\d+)`, '
        r"`optimize.warm_samples = (\d+)`, `optimize.rounds = (\d+)`",
        doc,
    )
    assert chosen, "docs/fidelity.md names no chosen defaults"
    defaults = Settings()
    search = defaults.optimize
    assert (defaults.units.tokens, BUILT_SEED_LR, defaults.train.schedule, defaults.merge.method) == (
        int(chosen[1]),
        float(chosen[2]),
        chosen[3],
        chosen[4],
    )
    assert (search.samples, search.samples_per_partition, search.warm_samples, search.rounds) == tuple(
        map(int, chosen.groups()[4:])
    )
