"""The flow's name grammar, defined once (docs/cmsasm.md, "Lexical rules").

Tensor, operator, model and hardware names in a `.cmsasm` flow and in the `metaop`
dialect are non-empty runs of ``[A-Za-z0-9_.:/-]``.  The optimizer's graph makes flow
names from the IR's SSA name hints with `flow_name`; the printer writes them, and the
flow parser (`cmswitch.asm.parser`), the dialect verifier (`cmswitch.dialects.metaop`)
and the simulator's reader (`cmswitch.sim.flow`) check them with `is_flow_name`.
(SSA name hints are xDSL's own grammar, which also allows ``$``:
`cmswitch.frontend.onnx_importer.sanitize_name`.)  No dependencies, so the simulator
can import it.
"""

from __future__ import annotations

import re

NAME_CHARS = "A-Za-z0-9_.:/-"
"""The characters of a flow name, as a regular-expression class body."""

NAME_PATTERN = f"[{NAME_CHARS}]+"
"""A flow name, as a regular expression (no anchors)."""

_NAME = re.compile(NAME_PATTERN + r"\Z")
_UNSAFE = re.compile(f"[^{NAME_CHARS}]")


def is_flow_name(text: str) -> bool:
    """Whether `text` is a flow name (non-empty, only `NAME_CHARS`)."""
    return bool(_NAME.match(text))


def flow_name(hint: str) -> str:
    """`hint` with every character outside `NAME_CHARS` replaced by ``_`` (an empty
    hint stays empty: the caller picks a default)."""
    return _UNSAFE.sub("_", hint)
