"""Orchestration: the CLI and the Prefect flows (top layer: flows -> registry -> dataassess)."""
