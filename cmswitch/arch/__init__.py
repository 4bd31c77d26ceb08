"""Dual-mode hardware abstraction (DESIGN.md §1).

The chip is a set of identical arrays; each is in compute mode (holds weights, performs
MVMs) or memory mode (stores activations), and switching costs `switch_cycles`.  A
description is a YAML/JSON document validated by pydantic; named presets ship in
`presets/` with the source of every number.

Energy (issue 16): eight optional per-event energies (`ENERGY_FIELDS`, picojoules per
event, per bit moved, or milliwatts of static power), given all together or not at all.
The simulator counts the events of a flow and multiplies (`cmswitch.sim.simulator`); a
description without them gets cycles only and reports say energy is unknown, rather than
borrowing another chip's figures.
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
MAX_ENERGY = 1e12
"""Bound of every energy field (pJ, pJ/bit, mW): above it a typo, not a chip."""
Energy = Annotated[float | None, Field(ge=0, le=MAX_ENERGY)]

ENERGY_FIELDS = (
    "mvm_pj", "array_access_pj_per_bit", "buffer_pj_per_bit", "dram_pj_per_bit",
    "weight_write_pj_per_bit", "switch_pj", "vector_op_pj", "array_static_mw",
)
"""The energy fields of `Arch`, in declaration order (all given, or none)."""


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
    #: 1: the digital unit sits on the arrays' output path, so an MVM's or a vector op's
    #: output can be handed to the one vector op reading it as a stream, through no port
    #: (element-wise fusion, DESIGN.md §9.13; as in PUMA's and ISAAC's tiles); 0 (the
    #: default, and the frozen presets `dynaplasia` and `prime`): every tensor goes
    #: through memory-mode arrays, the global buffer or DRAM
    stream_fusion: Annotated[int, Field(ge=0, le=1)] = 0
    # -- energy per event (optional, all or none; see the presets for sources) --------
    mvm_pj: Energy = None               #: one input vector through one compute-mode array
    #: (DACs, cells, ADCs, shift-add: every one of its rows x cols), pJ
    array_access_pj_per_bit: Energy = None  #: a bit read or written in a memory-mode array, pJ
    buffer_pj_per_bit: Energy = None    #: a bit read or written in the global buffer, pJ
    dram_pj_per_bit: Energy = None      #: a bit read from or written to DRAM (incl. I/O), pJ
    weight_write_pj_per_bit: Energy = None  #: a bit programmed into a compute-mode array, pJ
    switch_pj: Energy = None            #: one array changing mode (CM.switch), pJ
    vector_op_pj: Energy = None         #: one elementary op of the digital unit, pJ
    array_static_mw: Energy = None      #: leakage / static power of one array and its
    #: share of the periphery (buffer, digital unit), mW: the chip's is arrays x this

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

    @property
    def has_energy(self) -> bool:
        """Whether the description gives the per-event energies (`ENERGY_FIELDS`)."""
        return self.mvm_pj is not None

    @property
    def peak_tops_per_watt(self) -> float | None:
        """MVM-only peak efficiency, TOPS/W = ops per array MVM / `mvm_pj`, with ops =
        2 x rows x `weights_per_row` (a MAC is two ops); None without energy figures or
        with `mvm_pj` = 0.  The default preset's is DynaPlasia's published 56.0 TOPS/W."""
        if not self.mvm_pj:
            return None
        return 2 * self.rows * self.weights_per_row / self.mvm_pj

    def header_fields(self) -> dict[str, Any]:
        """The fields given, in declaration order, for the `.arch` line of a flow (the
        energy fields only when the description has them)."""
        return self.model_dump(exclude_none=True)

    def with_overrides(self, **fields: Any) -> "Arch":
        """A copy with `fields` replaced, validated like a file (a new `name` unless one
        is given: `<name>.<key>-<value>...`, e.g. ``dynaplasia.arrays-48``, so reports
        and caches tell the points of a sweep apart).  Raises CMSwitchError naming the field, as `load_arch` does."""
        if not fields:
            return self
        data = self.model_dump(exclude_none=True)
        changed = {k: v for k, v in fields.items() if data.get(k) != v}
        data.update(fields)
        if "name" not in fields and changed:
            data["name"] = derived_name(self.name, changed)
        return _validate(data, f"{self.name} with {', '.join(sorted(fields))} changed")

    def revalidated(self) -> "Arch":
        """This description checked like a file (`model_copy(update=...)` skips
        pydantic's validation), renamed by `derived_name` when it keeps a preset's name
        but not its numbers (reports, flows and caches key hardware by name).  Raises
        CMSwitchError naming the bad field."""
        data = self.model_dump(exclude_none=True)
        arch = _validate(data, f"hardware '{self.name}'")
        if self.name not in preset_names():
            return arch
        preset = load_arch(self.name).model_dump(exclude_none=True)
        changed = {k: data.get(k, "none") for k in {**preset, **data}
                   if k != "name" and data.get(k) != preset.get(k)}
        if not changed:
            return arch
        return _validate({**data, "name": derived_name(self.name, changed)},
                         f"hardware '{self.name}'")


def _number_text(value: Any) -> str:
    """`value` as it appears in a derived name: 48, 0.5, 1e-06."""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def derived_name(base: str, changed: dict[str, Any]) -> str:
    """The name of hardware `base` with fields `changed`: ``base.key-value...`` in key
    order, e.g. ``dynaplasia.arrays-48.switch_cycles-100`` (flow-safe characters)."""
    return base + "".join(f".{k}-{_number_text(v)}" for k, v in sorted(changed.items()))


def check_spec(spec: str) -> str:
    """`spec` if it names a preset or an existing file, else CMSwitchError with the
    nearest preset name (a usage error for the command lines: exit 2)."""
    if (PRESET_DIR / f"{spec}.yaml").is_file() or Path(spec).is_file():
        return spec
    import difflib

    near = difflib.get_close_matches(spec, preset_names(), n=1)
    hint = f"; did you mean '{near[0]}'?" if near else ""
    raise CMSwitchError(f"unknown hardware '{spec}': not a preset "
                        f"({', '.join(preset_names())}) nor a file{hint}")


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
        if err["type"] == "extra_forbidden":
            import difflib

            near = difflib.get_close_matches(field, list(Arch.model_fields), n=1)
            hint = f" (did you mean '{near[0]}'?)" if near else ""
            raise CMSwitchError(f"{origin}: unknown field '{field}'{hint}") from None
        raise CMSwitchError(f"{origin}: field '{field}': {err['msg']}") from None
    given = [key for key in ENERGY_FIELDS if getattr(arch, key) is not None]
    if given and len(given) != len(ENERGY_FIELDS):
        missing = [key for key in ENERGY_FIELDS if key not in given]
        raise CMSwitchError(
            f"{origin}: field '{missing[0]}': the energy fields are given all or none "
            f"({len(given)} of {len(ENERGY_FIELDS)} given; missing: {', '.join(missing)})")
    if arch.weight_bits % arch.cell_bits:
        raise CMSwitchError(
            f"{origin}: field 'cell_bits': {arch.weight_bits}-bit weights do not fill whole "
            f"{arch.cell_bits}-bit cells (weight_bits must be a multiple of cell_bits; the "
            f"cost model stores a weight in weight_bits / cell_bits cells)")
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


def resolve_hardware(spec: str | dict[str, Any] | None, origin: str = "cim.arch") -> Arch:
    """The `Arch` of what a module records (`cmswitch.dialects.cim.module_hardware`):
    a preset name or file path (`load_arch`), an inline description's fields
    (`arch_from_dict`), or None for the default preset.  Raises CMSwitchError as those
    do."""
    if isinstance(spec, dict):
        return arch_from_dict(spec, origin)
    return load_arch(spec)


def arch_from_dict(data: dict[str, Any], origin: str = "hardware description") -> Arch:
    """Validate a mapping (e.g. a module attribute or a flow header) as an Arch."""
    return _validate(data, origin)
