"""The compile progress bar: shown on a terminal after its delay, silent under
`quiet` and when stderr is not a terminal (CI logs, pipes)."""

import io
import sys

from cmswitch import progress as prog


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def _run(monkeypatch, stream, silent: bool) -> str:
    monkeypatch.setattr(sys, "stderr", stream)
    monkeypatch.setattr(prog, "DELAY_SECONDS", 0.0)
    with prog.quiet(silent):
        bar = prog.progress(range(3), "cim-segment", "start")
        for _ in bar:
            bar.set_postfix_str("7 segments priced")
        bar.close()
    return stream.getvalue()


def test_bar_on_a_terminal(monkeypatch):
    text = _run(monkeypatch, _Terminal(), silent=False)
    assert "cim-segment" in text and "start" in text


def test_quiet_and_pipes_print_nothing(monkeypatch):
    assert _run(monkeypatch, _Terminal(), silent=True) == ""
    assert _run(monkeypatch, io.StringIO(), silent=False) == ""
