"""Progress bars that a scheduler's log can keep: on a terminal, tqdm as usual; elsewhere (scheduled intakes,
`serve`, CI) one plain line when a step starts, at most one a minute while it runs, and one when it ends."""

from __future__ import annotations

import re
import sys
import time

from tqdm.auto import tqdm

ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")  # the cursor moves of nested bars


class LineWriter:
    """A file for one tqdm bar that turns its carriage-return redraws into whole lines: the first, then at most one
    a minute (redraws between are dropped, whatever asked for them), and the last when the bar closes."""

    def __init__(self, stream=None, every_s: float = 60.0):
        self.stream, self.every_s = stream or sys.stderr, every_s
        self.last: float | None = None  # when a line was last written
        self.pending: str | None = None  # the newest redraw not written yet

    def write(self, text: str) -> None:
        line = ANSI.sub("", text.replace("\r", "")).strip()
        if line:
            self.pending = line
            if self.last is None or time.monotonic() - self.last >= self.every_s:
                self._emit()
        elif "\n" in text and self.pending:  # the bar closed: its final state
            self._emit()

    def _emit(self) -> None:
        self.stream.write(self.pending + "\n")
        self.last, self.pending = time.monotonic(), None

    def flush(self) -> None:
        self.stream.flush()


def progress_bar(iterable=None, **options) -> tqdm:
    """tqdm(iterable, **options), or its log-friendly form when stderr is not a terminal."""
    if not sys.stderr.isatty():
        options = {"file": LineWriter(), "mininterval": 60, "ascii": True, **options, "leave": True}
    return tqdm(iterable, **options)
