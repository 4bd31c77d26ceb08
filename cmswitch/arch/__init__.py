"""Dual-mode hardware abstraction (DESIGN.md §1).

The chip is a set of identical arrays; each is in compute mode (holds weights, performs
MVMs) or memory mode (stores activations), and switching costs `switch_cycles`.  A
description is a YAML/JSON document validated by pydantic; named presets ship in
`presets/` with the source of every number.
"""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Annotated, Any

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
)

from cmswitch.errors import CMSwitchError

PRESET_DIR = Path(__file__).parent / "presets"
DEFAULT_ARCH = "dynaplasia"

#: Sanity limits of a hardware description.  The compiler and simulator keep per-array
#: state, so an absurd array count (a typo such as 99999999999) would exhaust memory
#: instead of being reported; the largest real CIM chips have thousands of arrays.
MAX_ARRAYS = 1 << 20
MAX_FILE_BYTES = 1 << 20
"""Largest hardware description file read (the presets are under 1 KB): a 10 MB file
took YAML 47 s to refuse."""
MAX_ARRAY_SIDE = 1 << 16  #: rows or cols of one array
MAX_BITS = 64             #: cell, weight and activation precision
MIN_RATE, MAX_RATE = 1e-6, 1e12
"""Bounds of every rate (bytes/cycle, ops/cycle, MHz): a denormal bandwidth would turn
cycle counts into infinities, not a slow chip."""
MAX_COUNT = 10 ** 12
"""Bound of the other integer fields (cycles, bits/cycle, buffer bytes)."""
Rate = Annotated[float, Field(ge=MIN_RATE, le=MAX_RATE)]
Count = Annotated[int, Field(gt=0, le=MAX_COUNT)]


class Arch(BaseModel):
    """A dual-mode CIM chip.  Sizes in bytes or bits as named, times in cycles."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, allow_inf_nan=False)

    name: Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_.-]+$")]  #: flow-safe name
    arrays: Annotated[int, Field(gt=0, le=MAX_ARRAYS)]   #: number of dual-mode arrays
    rows: Annotated[int, Field(gt=0, le=MAX_ARRAY_SIDE)]  #: cells per array column (K direction)
    cols: Annotated[int, Field(gt=0, le=MAX_ARRAY_SIDE)]  #: cells per array row
    cell_bits: Annotated[int, Field(gt=0, le=MAX_BITS)]   #: bits stored per cell
    weight_bits: Annotated[int, Field(gt=0, le=MAX_BITS)]  #: weight precision, bits
    act_bits: Annotated[int, Field(gt=0, le=MAX_BITS)]    #: activation precision, bits
    mvm_cycles: Count                   #: cycles for one input vector through one array
    internal_bw_bits: Count             #: bits/cycle a memory-mode array reads or writes
    external_bw_bytes: Rate             #: bytes/cycle between chip and DRAM
    global_buffer_bytes: Count          #: fixed (not switchable) on-chip buffer, bytes
    global_buffer_bw_bytes: Rate        #: bytes/cycle of the global buffer
    switch_cycles: Annotated[int, Field(ge=0, le=MAX_COUNT)]  #: one CM.switch, cycles
    weight_write_bw_bytes: Rate         #: bytes/cycle to program weights into arrays
    vector_ops_per_cycle: Rate          #: digital-unit elementary ops per cycle
    clock_mhz: Rate                     #: clock, for reporting seconds

    @property
    def weights_per_row(self) -> int:
        """Weights one array row holds: ``cols*cell_bits // weight_bits`` (40 at default)."""
        return self.cols * self.cell_bits // self.weight_bits

    @property
    def array_bytes(self) -> int:
        """Bytes one memory-mode array stores: ``rows*cols*cell_bits/8`` (12,800 at default)."""
        return self.rows * self.cols * self.cell_bits // 8

    @property
    def act_bytes(self) -> float:
        """Bytes per activation element: ``act_bits/8``."""
        return self.act_bits / 8

    def header_fields(self) -> dict[str, Any]:
        """All fields, in declaration order, for the `.arch` line of a flow."""
        return self.model_dump()


def preset_names() -> list[str]:
    """Names of the shipped presets, sorted."""
    return sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))


def _validate(data: Any, origin: str) -> Arch:
    if not isinstance(data, dict):
        raise CMSwitchError(f"{origin}: a hardware description must be a mapping of fields")
    try:
        arch = Arch.model_validate(data)
    except ValidationError as e:
        # An unknown key first: a misspelt key also shows up as a missing field.
        err = sorted(e.errors(), key=lambda x: x["type"] != "extra_forbidden")[0]
        field = ".".join(str(p) for p in err["loc"]) or "<root>"
        raise CMSwitchError(f"{origin}: field '{field}': {err['msg']}") from None
    if arch.weights_per_row == 0:
        raise CMSwitchError(
            f"{origin}: field 'weight_bits': {arch.weight_bits}-bit weights do not fit "
            f"in a row of {arch.cols} {arch.cell_bits}-bit cells"
        )
    return arch


class _UniqueKeyLoader(yaml.SafeLoader):
    """yaml.SafeLoader that refuses a key given twice (plain YAML keeps the last one, so
    a pasted duplicate line would silently override a value)."""

    def construct_mapping(self, node, deep=False):
        seen: set = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise ValueError(f"field '{key}' is given twice "
                                 f"(line {key_node.start_mark.line + 1})")
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def _unique_json_keys(pairs: list) -> dict:
    """`json.loads` hook: the object, refusing a key given twice."""
    keys = [k for k, _ in pairs]
    for key in keys:
        if keys.count(key) > 1:
            raise ValueError(f"field '{key}' is given twice")
    return dict(pairs)


@cache
def load_arch(spec: str | None = None) -> Arch:
    """Load a preset by name (``dynaplasia``, ``prime``) or a YAML/JSON file path.

    ``None`` gives the default preset.  Raises CMSwitchError (one line naming the file
    and field) for an unknown preset, unreadable file, unknown key, missing field, or a
    zero/negative size, a key given twice, a value above the sanity limits
    (`MAX_ARRAYS`, `MAX_ARRAY_SIDE`, `MAX_BITS`), an infinite/NaN rate, or a file that
    takes a preset's name with other numbers.
    """
    spec = spec or DEFAULT_ARCH
    preset = PRESET_DIR / f"{spec}.yaml"
    path = preset if preset.is_file() else Path(spec)
    if not path.is_file():
        raise CMSwitchError(
            f"unknown hardware '{spec}': not a preset ({', '.join(preset_names())}) "
            "nor a file"
        )
    try:
        size = path.stat().st_size
        if size > MAX_FILE_BYTES:
            raise CMSwitchError(f"{path}: a hardware description is at most "
                                f"{MAX_FILE_BYTES} bytes; this file has {size}")
        text = path.read_text()
        data = (json.loads(text, object_pairs_hook=_unique_json_keys) if path.suffix == ".json"
                else yaml.load(text, Loader=_UniqueKeyLoader))
    except RecursionError:
        raise CMSwitchError(f"{path}: cannot read hardware description: nested too "
                            "deeply (it is a flat mapping of fields)") from None
    except TypeError as e:  # a list or mapping as a key: "unhashable type"
        raise CMSwitchError(f"{path}: cannot read hardware description: a key is not a "
                            f"field name ({e})") from None
    except (OSError, ValueError, yaml.YAMLError) as e:
        raise CMSwitchError(f"{path}: cannot read hardware description: "
                            f"{str(e).splitlines()[0]}") from None
    arch = _validate(data, str(path))
    if path != preset and arch.name in preset_names() and arch != load_arch(arch.name):
        raise CMSwitchError(f"{path}: name '{arch.name}' is a preset's but the numbers differ; "
                            f"give this hardware its own name (reports and flows use it)")
    return arch


def arch_from_dict(data: dict[str, Any], origin: str = "hardware description") -> Arch:
    """Validate a mapping (e.g. a module attribute or a flow header) as an Arch."""
    return _validate(data, origin)
