"""Progress bars that a scheduler's log can keep: on a terminal, tqdm as usual; elsewhere (scheduled intakes,
`serve`, CI) one plain line when a step starts, at most one a minute while it runs, and one when it ends."""

from __future__ import annotations

import sys

from tqdm.auto import tqdm


class LineWriter:
    """A file for tqdm that turns its carriage-return redraws into whole lines."""

    def __init__(self, stream=None):
        self.stream = stream or sys.stderr

    def write(self, text: str) -> None:
        line = text.replace("\r", "").strip()
        if line:
            self.stream.write(line + "\n")

    def flush(self) -> None:
        self.stream.flush()


def progress_bar(iterable=None, **options) -> tqdm:
    """tqdm(iterable, **options), or its log-friendly form when stderr is not a terminal."""
    if not sys.stderr.isatty():
        options = {"file": LineWriter(), "mininterval": 60, "ascii": True, **options, "leave": True}
    return tqdm(iterable, **options)
