"""Progress on stderr for long compiles (issue 13): a `tqdm` bar that appears only
after two seconds, only when stderr is a terminal, and never under `quiet`."""

from __future__ import annotations

import sys
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar

_QUIET: ContextVar[bool] = ContextVar("cmswitch_quiet", default=False)

DELAY_SECONDS = 2.0
"""A stage shorter than this shows nothing."""


@contextmanager
def quiet(on: bool = True) -> Iterator[None]:
    """Silence progress bars inside the block (`cmswitch compile --quiet`)."""
    token = _QUIET.set(on)
    try:
        yield
    finally:
        _QUIET.reset(token)


def progress(items: Iterable, stage: str, unit: str, total: int | None = None):
    """`items` wrapped in a progress bar named `stage` counting `unit`s; the bar's
    ``set_postfix_str`` adds a live counter (e.g. segments priced)."""
    from tqdm import tqdm

    return tqdm(items, desc=stage, unit=unit, total=total, delay=DELAY_SECONDS, ncols=100,
                leave=False, file=sys.stderr,
                disable=_QUIET.get() or not sys.stderr.isatty())
