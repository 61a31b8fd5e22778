"""Away from a terminal, a progress bar writes whole lines: one when a step starts, one when it ends, and at
most one a minute between (a scheduler's log keeps them; no carriage-return redraws)."""

import io
import sys

from dataassess.progress import progress_bar


def test_progress_off_a_terminal_is_a_few_whole_lines(monkeypatch):
    err = io.StringIO()  # not a terminal
    monkeypatch.setattr(sys, "stderr", err)
    with progress_bar(range(5000), desc="train") as bar:
        total = sum(1 for _ in bar)
    lines = err.getvalue().splitlines()
    assert total == 5000 and "\r" not in err.getvalue()
    assert 1 <= len(lines) <= 3, lines
    assert lines[0].startswith("train") and "5000/5000" in lines[-1]


def test_nested_bars_off_a_terminal_write_no_cursor_moves(monkeypatch):
    err = io.StringIO()
    monkeypatch.setattr(sys, "stderr", err)
    with progress_bar(range(3), desc="train") as outer:
        for _ in outer:
            with progress_bar(range(4), desc="unit", leave=False) as inner:
                for _ in inner:
                    pass
    assert "\x1b" not in err.getvalue() and "\r" not in err.getvalue()
    assert all(line.startswith(("train", "unit")) for line in err.getvalue().splitlines()), err.getvalue()
