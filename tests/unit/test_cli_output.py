"""Progress lines: rewritten in place on a terminal, whole lines in a log file."""

from __future__ import annotations

import io

from promptrun.cli_output import StatusLine, progress


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_log_gets_whole_lines_no_more_often_than_asked() -> None:
    log = io.StringIO()
    line = StatusLine(every=3600, stream=log)
    for done in range(5):
        line.show(f"poller: {done} done")
    line.show("poller: 5 done", final=True)
    line.show("poller: 5 done", final=True)  # unchanged: not repeated
    line.close()
    assert log.getvalue() == "poller: 0 done\npoller: 5 done\n"


def test_a_log_gets_every_change_when_the_interval_has_passed() -> None:
    log = io.StringIO()
    line = StatusLine(every=0, stream=log)
    for done in range(3):
        line.show(f"{done} done")
    assert log.getvalue().splitlines() == ["0 done", "1 done", "2 done"]
    assert "\r" not in log.getvalue()


def test_a_terminal_line_is_rewritten_in_place_and_ended_once() -> None:
    tty = Terminal()
    line = StatusLine(stream=tty)
    line.show("1 done")
    line.show("2 done")
    line.close()
    assert tty.getvalue() == "\r1 done\r2 done\n"


def test_progress_without_a_terminal_ends_with_the_last_count(capsys: object) -> None:
    with progress("pruning", total=3) as shown:
        for done in range(1, 4):
            shown.update(done)
    err = capsys.readouterr().err  # type: ignore[attr-defined]
    assert "\r" not in err
    assert err.splitlines()[-1] == "pruning: 3/3"
