"""Print a `metaop` flow as `.cmsasm` text (grammar: docs/cmsasm.md).

Also an xDSL target, so ``cmswitch-opt ... --cim-to-metaop -t cmsasm`` (or
``--emit=asm``) writes the assembly instead of MLIR.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import IO, ClassVar

from xdsl.context import Context
from xdsl.dialects.builtin import ArrayAttr, DictionaryAttr, ModuleOp, StringAttr
from xdsl.ir import Operation
from xdsl.utils.exceptions import VerifyException
from xdsl.utils.target import Target

from cmswitch.arch import resolve_hardware
from cmswitch.dialects import metaop
from cmswitch.errors import CMSwitchError
from cmswitch.dialects.metaop import INPUTS_ATTR, OUTPUTS_ATTR, TENSORS_ATTR
from cmswitch.dialects.cim import module_hardware


def _arr(lo_hi) -> str:
    lo, hi = lo_hi.get_values()
    return f"a[{lo}:{hi}]"


def _refs(refs: ArrayAttr) -> str:
    """Tensor references as the `.cmsasm` text writes them: ``x@gb,y@a[0:4]``."""
    return ",".join(str(ref) for ref in refs.data)


def _window(op: Operation) -> str:
    w = op.properties.get("window")
    return f" window={w.value.data}" if w is not None else ""


def statement(op: Operation) -> str:
    """One flow statement (without indentation).  Raises CMSwitchError for an op that
    is not a `metaop` statement."""
    if isinstance(op, metaop.SwitchOp):
        return f"CM.switch {op.mode.data.value} {_arr(op.arrays)}"
    if isinstance(op, metaop.LoadWeightOp):
        tk, tn = op.tiles.get_values()
        return (f"CIM.load_weight {op.op.data} tiles={tk}x{tn} copies={op.copies.value.data} "
                f"bytes={op.bytes.value.data} -> {_arr(op.arrays)}")
    if isinstance(op, metaop.WriteOperandOp):
        tk, tn = op.tiles.get_values()
        return (f"CIM.write_operand {op.op.data} in={op.input} tiles={tk}x{tn} "
                f"copies={op.copies.value.data} bytes={op.bytes.value.data} "
                f"instances={op.instances.value.data} -> {_arr(op.arrays)}")
    if isinstance(op, metaop.MvmOp):
        return (f"CIM.mvm {op.op.data} {_arr(op.arrays)} vectors={op.vectors.value.data} "
                f"k={op.k.value.data} n={op.n.value.data} in={op.input} "
                f"out={op.output}{_window(op)}")
    if isinstance(op, metaop.VecOp):
        ins = f" in={_refs(op.inputs)}" if op.inputs is not None else ""
        return (f"VEC.{op.kind.data} {op.label.data} ops={op.ops.value.data}{ins} "
                f"out={_refs(op.outputs)}{_window(op)}")
    kinds = {metaop.MemLoadOp: "MEM.load", metaop.MemStoreOp: "MEM.store",
             metaop.MemMoveOp: "MEM.move"}
    if type(op) in kinds:
        return (f"{kinds[type(op)]} {op.tensor.data}@{op.source} -> {op.dest} "
                f"bytes={op.bytes.value.data}{_window(op)}")
    raise CMSwitchError(f"'{op.name}' is not a meta-operator statement")


def print_flow(module: ModuleOp, out: IO[str]) -> None:
    """Write the `.cmsasm` text of a lowered module (after `cim-to-metaop`)."""
    tensors = module.attributes.get(TENSORS_ATTR)
    if not isinstance(tensors, DictionaryAttr):
        raise CMSwitchError("no meta-operator flow in the module: run cim-to-metaop first")
    try:
        arch = resolve_hardware(module_hardware(module))
    except VerifyException as e:
        raise CMSwitchError(str(e)) from None
    model = module.attributes.get("cim.model")
    inputs = {a.data for a in module.attributes.get(INPUTS_ATTR, ArrayAttr([]))}
    outputs = {a.data for a in module.attributes.get(OUTPUTS_ATTR, ArrayAttr([]))}
    out.write("; CMSwitch meta-operator flow (grammar: docs/cmsasm.md)\n")
    out.write(".arch " + " ".join(
        [arch.name] + [f"{k}={_number(v)}" if isinstance(v, float) else f"{k}={v}"
                       for k, v in arch.header_fields().items() if k != "name"]) + "\n")
    out.write(f".model {model.data if isinstance(model, StringAttr) else 'model'}\n")
    for name, size in tensors.data.items():
        flags = (" input" if name in inputs else "") + (" output" if name in outputs else "")
        out.write(f".tensor {name} bytes={size.value.data}{flags}\n")
    for seg in module.ops:
        if not isinstance(seg, metaop.SegmentOp):
            continue
        out.write(f".segment {seg.id.value.data} ops={seg.ops.data} "
                  f"predicted={seg.predicted.value.data}\n")
        for op in seg.body.block.ops:
            if isinstance(op, metaop.ParallelOp):
                out.write("  parallel {\n")
                for inner in op.body.block.ops:
                    out.write(f"    {statement(inner)}\n")
                out.write("  }\n")
            else:
                out.write(f"  {statement(op)}\n")
        out.write(".end\n")


@dataclass(frozen=True)
class CmsasmTarget(Target):
    """xDSL target `cmsasm`: print the module as a `.cmsasm` flow."""

    name: ClassVar[str] = "cmsasm"

    def emit(self, ctx: Context, module: ModuleOp, output: IO[str]) -> None:
        print_flow(module, output)


def _number(value: float) -> str:
    """A hardware rate exactly as given: an integer-valued float without ``.0``, any
    other with every digit (`repr`), so a flow never misstates its hardware."""
    return str(int(value)) if value.is_integer() else repr(value)
