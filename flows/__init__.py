"""Orchestration: the CLI and the Prefect flows (top layer: flows -> registry -> dataassess)."""
import os
from pathlib import Path

# Offline, embedded defaults; any of these can be overridden from the environment.
os.environ.setdefault("PREFECT_HOME", str(Path(".dataassess/prefect").resolve()))
Path(os.environ["PREFECT_HOME"]).mkdir(parents=True, exist_ok=True)
os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
