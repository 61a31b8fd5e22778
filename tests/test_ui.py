"""The MLflow and Prefect UIs over a store made by one small intake, clicked through in a real browser.

Playwright drives Debian's Chromium (`make setup` installs both); without Chromium the tests are
skipped with the reason. Screenshots go to ui-screenshots/ (or $DATAASSESS_UI_SCREENSHOTS).
"""

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import demo_docs, free_port, local_server, small_settings, write_jsonl, write_toml

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="no Chromium: `apt-get install chromium` (make setup does, as root)"
)
SHOTS = Path(os.environ.get("DATAASSESS_UI_SCREENSHOTS", Path(__file__).resolve().parents[1] / "ui-screenshots"))
BIN = Path(sys.executable).parent
# the closed network here refuses Chromium's background connections; these flags stop it trying
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture(scope="module")
def intake_store(tmp_path_factory):
    """A store after one `dataassess intake` of three small partitions, run as a user runs it."""
    root = tmp_path_factory.mktemp("ui")
    corpus = root / "corpus"
    write_jsonl(corpus / "scripture" / "a.jsonl", demo_docs("scripture-law", 16))
    write_jsonl(corpus / "satire" / "a.jsonl", demo_docs("satire", 60))
    write_jsonl(corpus / "jargon" / "a.jsonl", demo_docs("jargon", 50))
    store = root / "store"
    toml = write_toml(small_settings(store), root / "dataassess.toml")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DATAASSESS_", "PREFECT_", "MLFLOW_TRACKING"))}
    res = subprocess.run(
        [str(BIN / "dataassess"), "--config", str(toml), "intake", str(corpus)],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    return store, env, res.stdout


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    SHOTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield b
        b.close()


@pytest.fixture(scope="module")
def mlflow_ui(intake_store):
    store, env, _ = intake_store
    port = free_port()
    with local_server(
        [
            str(BIN / "mlflow"),
            "ui",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "1",
            "--backend-store-uri",
            f"sqlite:///{store / 'mlflow.db'}",
            "--default-artifact-root",
            str(store / "mlartifacts"),
        ],
        {**env, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"},
        f"http://127.0.0.1:{port}/health",
    ):
        yield f"http://127.0.0.1:{port}"


def test_mlflow_ui_answers_the_four_questions(mlflow_ui, intake_store, browser):
    store, _, printed = intake_store
    best = re.search(r"^\s+1\s+\d+\s+1\s+new\s+(\S+(?: \+ \S+)*)", printed, re.M).group(1)  # the CLI table's top row
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.set_default_timeout(30_000)

    # landing page -> the one click into model training -> the rankings experiment -> its latest run
    page.goto(mlflow_ui + "/")
    page.get_by_text("Model training", exact=True).first.click()
    page.get_by_role("link", name="dataassess-rankings").first.click()
    page.get_by_role("link", name=re.compile(r"^corpus ranking ")).first.click()
    page.get_by_text("Ranking of pool corpus").wait_for()
    if page.get_by_text("Show more").count():
        page.get_by_text("Show more").first.click()
    body = page.inner_text("body")
    assert f"Champion: {best}" in body and "Top 5" in body
    assert "Fidelity: not measured for this pool" in body and "dataassess fidelity CORPUS" in body
    assert "champion.macro" in body and "lowest_any_mixture.ppl." in body
    page.screenshot(path=str(SHOTS / "ranking-run.png"), full_page=True)
    ranking_url = page.url

    # the champion's version, linked from the run (a new tab), links back to it
    with page.context.expect_page() as opened:
        page.get_by_role("link", name=re.compile(r"corpus-champion version \d+")).click()
    version = opened.value
    version.get_by_text(f"Mixture {best}").wait_for()
    version.screenshot(path=str(SHOTS / "champion-version.png"), full_page=True)
    with version.context.expect_page() as opened:
        version.get_by_role("link", name=re.compile(r"^[0-9a-f]{8}$")).first.click()
    back = opened.value
    back.get_by_text("Ranking of pool corpus").wait_for()
    assert back.url.split("#")[1].split("?")[0] == ranking_url.split("#")[1].split("?")[0]
    version.close()
    back.close()

    # a unit version shows its partition and seed
    page.goto(mlflow_ui + "/#/models/corpus.satire.u0/versions/1")
    page.get_by_text("of partition satire").wait_for()
    body = page.inner_text("body")
    assert "Unit satire.u0 of partition satire" in body and "seed tiny" in body
    page.screenshot(path=str(SHOTS / "unit-version.png"), full_page=True)
    page.close()


def test_prefect_ui_lists_the_intake_run_with_its_tasks(intake_store, browser):
    store, env, _ = intake_store
    port = free_port()
    api = f"http://127.0.0.1:{port}/api"
    with local_server(
        [str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
        {
            **env,
            "PREFECT_HOME": str(store / "prefect"),
            "PREFECT_UI_API_URL": api,
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        },
        f"{api}/health",
    ):
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.set_default_timeout(30_000)
        page.goto(f"http://127.0.0.1:{port}/runs")
        page.get_by_text(re.compile(r"intake corpus \d{4}-\d\d-\d\d")).first.click()
        page.get_by_text(
            re.compile(r"units: \d+ trained")
        ).first.wait_for()  # the flow's own log line, in the run's log pane
        page.screenshot(path=str(SHOTS / "prefect-flow-run.png"), full_page=True)
        page.get_by_text("Task Runs", exact=True).first.click()
        page.get_by_text(re.compile(r"train satire\.u0")).first.wait_for()
        assert "score " in page.inner_text("body")
        page.close()
