"""xDSL plugin entry point: makes the `cim` and `metaop` dialects, CMSwitch's passes and
the `cmsasm` target visible to `xdsl-opt` and `cmswitch-opt`.  Everything is registered
lazily (name -> function that imports), so startup stays cheap.

Plain `xdsl-opt` re-raises a pass's diagnostic unless ``--verify-diagnostics`` is given;
loading this plugin installs an exception hook that prints a `CMSwitchError` as one
``error:`` line instead of a traceback (the exit status stays 1), and says how to
read an ``.onnx`` file, which xdsl-opt has no frontend for.  Other exceptions go to
the hook that was there before."""

from __future__ import annotations

import sys
from collections.abc import Callable

from xdsl.ir import Dialect
from xdsl.passes import ModulePass
from xdsl.universe import Universe


def _cim() -> Dialect:
    from cmswitch.dialects.cim import CIM

    return CIM


def _metaop() -> Dialect:
    from cmswitch.dialects.metaop import METAOP

    return METAOP


def _partition() -> type[ModulePass]:
    from cmswitch.transforms.cim_partition import CimPartitionPass

    return CimPartitionPass


def _segment() -> type[ModulePass]:
    from cmswitch.transforms.cim_segment import CimSegmentPass

    return CimSegmentPass


def _allocate() -> type[ModulePass]:
    from cmswitch.transforms.cim_allocate import CimAllocatePass

    return CimAllocatePass


def _to_metaop() -> type[ModulePass]:
    from cmswitch.transforms.cim_to_metaop import CimToMetaopPass

    return CimToMetaopPass


def _cmsasm_target():
    from cmswitch.asm.printer import CmsasmTarget

    return CmsasmTarget


ALL_DIALECTS: dict[str, Callable[[], Dialect]] = {"cim": _cim, "metaop": _metaop}
ALL_PASSES: dict[str, Callable[[], type[ModulePass]]] = {
    "cim-partition": _partition,
    "cim-segment": _segment,
    "cim-allocate": _allocate,
    "cim-to-metaop": _to_metaop,
}

def _diagnose(kind, error, trace, previous=sys.excepthook) -> None:
    """`sys.excepthook`: one line for CMSwitch's diagnostics (see the module docstring)."""
    from cmswitch.errors import CMSwitchError

    if isinstance(error, CMSwitchError):
        print(f"error: {error}", file=sys.stderr)
        return
    if isinstance(error, ValueError) and "file extension 'onnx'" in str(error):
        print("error: xdsl-opt has no ONNX frontend; import the model with "
              "`cmswitch-opt MODEL.onnx -o MODEL.mlir`, or run cmswitch-opt, which takes "
              "the same passes and reads .onnx directly", file=sys.stderr)
        return
    text = str(error)
    ours = tuple(f"{name}:" for name in ALL_PASSES)
    if isinstance(error, ValueError) and (text.startswith(ours) or
                                          text.startswith("Provided arguments")):
        print(f"error: bad pass option: {text}", file=sys.stderr)  # a pass's own check,
        return                                                     # or xDSL's spec parser
    if isinstance(error, ValueError) and text.startswith("Unrecognized passes"):
        from cmswitch.tools.opt import _pipeline_hint

        print(f"error: {text}{_pipeline_hint(text)}", file=sys.stderr)
        return
    previous(kind, error, trace)


if sys.excepthook is sys.__excepthook__:
    sys.excepthook = _diagnose

CMSWITCH_UNIVERSE = Universe(
    all_dialects=ALL_DIALECTS,
    all_passes=ALL_PASSES,
    all_targets={"cmsasm": _cmsasm_target},
)
