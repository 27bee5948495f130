"""Terminal output for the CLI: tables and progress, with `rich` when it is installed (the
`cli` extra) and plain text otherwise. Only CLI modules import this; the Lambda layer never
needs `rich`."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any, TextIO


def _rich_console(stderr: bool = False) -> Any | None:
    try:
        from rich.console import Console
    except ImportError:
        return None
    return Console(stderr=stderr, soft_wrap=True)


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]], title: str | None = None) -> None:
    """Rows as a table on stdout: rich on a terminal, tab-separated when piped (for scripts)."""
    text_rows = [["" if v is None else str(v) for v in row] for row in rows]
    console = _rich_console() if sys.stdout.isatty() else None
    if console is not None:
        from rich.table import Table

        t = Table(title=title)
        for h in headers:
            t.add_column(h, overflow="fold")  # ids must stay whole to be copied
        for row in text_rows:
            t.add_row(*row)
        console.print(t)
        return
    if title:
        print(title)
    print("\t".join(headers))
    for row in text_rows:
        print("\t".join(row))


class StatusLine:
    """A line of progress on stderr: rewritten in place on a terminal; in a log file, a new
    line when it changed, at most every `every` seconds, so updates never run together."""

    def __init__(self, every: float = 5.0, stream: TextIO | None = None) -> None:
        self.every = every
        self.stream = stream if stream is not None else sys.stderr
        self._tty = self.stream.isatty()
        self._last: str | None = None
        self._at = 0.0

    def show(self, line: str, final: bool = False) -> None:
        if self._tty:
            print(f"\r{line}", end="", file=self.stream, flush=True)
            self._last = line
            return
        now = time.monotonic()
        if line == self._last or (not final and self._last and now - self._at < self.every):
            return
        print(line, file=self.stream, flush=True)
        self._last, self._at = line, now

    def close(self) -> None:
        """Ends a terminal's line; a log's lines are already whole."""
        if self._tty and self._last is not None:
            print(file=self.stream, flush=True)


class Progress:
    """A one-line progress display on stderr (rich's when available)."""

    def __init__(self, description: str, total: int | None = None) -> None:
        self.description = description
        self.total = total
        self._rich: Any = None
        self._task: Any = None
        self._line = StatusLine()
        self._shown = ""

    def update(self, completed: int, note: str = "") -> None:
        if self._rich is not None:
            self._rich.update(
                self._task, completed=completed, description=f"{self.description} {note}"
            )
            return
        of = f"/{self.total}" if self.total else ""
        self._shown = f"{self.description}: {completed}{of} {note}".rstrip()
        self._line.show(self._shown)


@contextmanager
def progress(description: str, total: int | None = None) -> Iterator[Progress]:
    shown = Progress(description, total)
    console = _rich_console(stderr=True) if sys.stderr.isatty() else None
    if console is None:
        try:
            yield shown
        finally:
            if shown._shown:
                shown._line.show(shown._shown, final=True)
            shown._line.close()
        return
    from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn
    from rich.progress import Progress as RichProgress

    columns: list[Any] = [
        TextColumn("{task.description}"),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
    ]
    if total:
        columns.insert(1, BarColumn())
    with RichProgress(*columns, console=console, transient=False) as bar:
        shown._rich = bar
        shown._task = bar.add_task(description, total=total)
        yield shown
