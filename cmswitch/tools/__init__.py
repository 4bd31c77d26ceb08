"""CMSwitch: tools (the command-line entry points)."""

from __future__ import annotations

import functools
import os
import signal
import sys
from collections.abc import Callable


class Terminated(KeyboardInterrupt):
    """SIGTERM or SIGHUP arrived: unwinds like Ctrl-C, so a running solver subprocess
    is killed by `subprocess.run` on the way out instead of being left running."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


def _terminate(signum: int, _frame) -> None:
    raise Terminated(signum)


def _quiet_stdout() -> None:
    """Point file descriptor 1 at /dev/null: no second error at interpreter exit."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 1)
    except OSError:
        pass


def console(main: Callable[..., int]) -> Callable[..., int]:
    """Wrap a CLI entry point: a reader that closes the pipe early (``| head``) ends
    the run quietly with exit 0; a closed or full stdout is one error line and exit 1;
    Ctrl-C prints one line and exits 130, SIGTERM / SIGHUP 128 + the signal (after
    stopping any solver subprocess) — none shows a traceback."""

    @functools.wraps(main)
    def run(*args, **kwargs) -> int:
        if sys.stdout is None:  # started with stdout closed (`>&-`)
            print("error: standard output is closed", file=sys.stderr)
            return 1
        for signum in (signal.SIGTERM, signal.SIGHUP):
            if signal.getsignal(signum) is signal.SIG_DFL:
                signal.signal(signum, _terminate)
        try:
            code = main(*args, **kwargs)
            sys.stdout.flush()
            return code
        except BrokenPipeError:
            _quiet_stdout()
            return 0
        except RecursionError:
            print("error: the input is nested too deeply to read", file=sys.stderr)
            return 1
        except Terminated as e:
            print(f"error: stopped by {signal.Signals(e.signum).name}", file=sys.stderr)
            return 128 + e.signum
        except KeyboardInterrupt:
            print("error: interrupted", file=sys.stderr)
            return 130
        except OSError as e:  # writing the report to stdout: disk full, device error
            _quiet_stdout()
            print(f"error: {e.filename or 'standard output'}: {e.strerror or e}",
                  file=sys.stderr)
            return 1

    return run


def arch_spec(text: str) -> str:
    """argparse type of ``--arch``: a preset name or an existing file.  An unknown name
    is a usage error (exit 2, with the nearest preset), like an unknown ``--strategy``;
    a file whose contents are wrong is an input error, found when it is read (exit 1)."""
    import argparse

    from cmswitch.arch import check_spec
    from cmswitch.errors import CMSwitchError

    try:
        return check_spec(text)
    except CMSwitchError as error:
        raise argparse.ArgumentTypeError(str(error)) from None
