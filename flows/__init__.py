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


def _no_heartbeats_when_embedded() -> None:
    """Prefect emits a flow-run heartbeat every 180 s by default, for a server that watches
    for crashed runs, and its heartbeat thread (1 s sleeps) holds each flow run up to 1 s at
    its end. An ephemeral API lives only as long as this process, so no one can read them:
    off unless an API URL names a server or PREFECT_FLOWS_HEARTBEAT_FREQUENCY is set."""
    import prefect.context

    root = prefect.context.GLOBAL_SETTINGS_CONTEXT  # process-wide; set at `import prefect`
    chosen = ("PREFECT_FLOWS_HEARTBEAT_FREQUENCY", "PREFECT_RUNNER_HEARTBEAT_FREQUENCY")  # the second: legacy name
    if root.settings.api.url or os.environ.get("PREFECT_API_URL") or any(os.environ.get(n) for n in chosen):
        return
    settings = root.settings.copy_with_update(updates={"flows.heartbeat_frequency": None})
    prefect.context.GLOBAL_SETTINGS_CONTEXT = prefect.context.SettingsContext(profile=root.profile, settings=settings)


_no_heartbeats_when_embedded()
