"""Orchestration: the CLI and the Prefect flows (top layer: flows -> registry -> dataassess).

Importing it sets nothing; flows.runtime configures Prefect for a command when it runs.
"""
