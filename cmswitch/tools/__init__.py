"""CMSwitch: tools (the command-line entry points)."""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable


def console(main: Callable[..., int]) -> Callable[..., int]:
    """Wrap a CLI entry point: a reader that closes the pipe early (``| head``) ends
    the run quietly with exit 0, and Ctrl-C prints one line and exits 130 — neither
    shows a traceback."""

    @functools.wraps(main)
    def run(*args, **kwargs) -> int:
        try:
            code = main(*args, **kwargs)
            sys.stdout.flush()
            return code
        except BrokenPipeError:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())  # no second error at interpreter exit
            return 0
        except KeyboardInterrupt:
            print("error: interrupted", file=sys.stderr)
            return 130

    return run
