"""`cmswitch-opt`: the mlir-opt style driver (DESIGN.md §8).

``cmswitch-opt [--PASS[=OPTIONS]]... [-p PIPELINE] [-o OUT] [--emit=asm] INPUT``

Pass flags run in the order given (after any ``-p`` pipeline); options are
``--cim-allocate=solver=highs,time-limit=5``.  INPUT is `.mlir`, `.onnx` (imported on
the fly), `.cmsasm` (a flow, parsed back to `metaop`) or `-`/absent (stdin, MLIR).
``--emit=asm`` prints the `.cmsasm` flow.
Exit codes: 0 success, 1 a diagnosed input error (one message, no traceback),
2 usage error.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import IO

from xdsl.utils.exceptions import ArgSpecParseError, DiagnosticException, ParseError
from xdsl.xdsl_opt_main import xDSLOptMain

from cmswitch.tools import console
from cmswitch.errors import CMSwitchError
from cmswitch.universe import ALL_PASSES


def _pass_summary(name: str) -> str:
    doc = (ALL_PASSES[name]().__doc__ or "").strip()
    return " ".join(doc.split("\n\n")[0].split())


def _pass_options(name: str) -> str:
    """The pass's options as they are spelled on the command line, with defaults."""
    import dataclasses

    cls = ALL_PASSES[name]()
    opts = [f"{f.name.replace('_', '-')}={'' if f.default is None else str(f.default).lower()}"
            for f in dataclasses.fields(cls) if f.name != "name"]
    return "options: " + ", ".join(opts) if opts else ""


class CMSwitchOptMain(xDSLOptMain):
    """xDSL's opt driver with `.onnx` and `.cmsasm` frontends and an epilog listing our
    passes."""

    def register_all_frontends(self) -> None:
        super().register_all_frontends()

        def parse_onnx(io: IO[bytes]):
            from cmswitch.frontend.onnx_importer import import_onnx

            return import_onnx(io.read(), name=_model_name(self.args.input_file),
                               filename=self.args.input_file)

        self.available_frontends["onnx"] = parse_onnx

        def parse_cmsasm(io: IO[bytes]):
            from cmswitch.asm.parser import parse_flow

            return parse_flow(io.read(), filename=self.args.input_file or "<stdin>")

        self.available_frontends["cmsasm"] = parse_cmsasm

    TARGETS = ("mlir", "cmsasm")
    """Output targets: the IR and the flow.  xDSL's hardware backends (llvm, riscv-asm,
    x86-asm, ...) expect their own dialects, which no CMSwitch module holds."""

    def register_all_targets(self) -> None:
        super().register_all_targets()
        for name in list(self.available_targets):
            if name not in self.TARGETS:
                del self.available_targets[name]

    def register_all_arguments(self, arg_parser: argparse.ArgumentParser) -> None:
        super().register_all_arguments(arg_parser)
        arg_parser.prog = "cmswitch-opt"
        arg_parser.usage = ("cmswitch-opt [--PASS[=OPTION=VALUE,...]]... [--emit=asm] "
                            "[-o OUT] [options] [INPUT.mlir|.onnx|.cmsasm]")
        arg_parser.formatter_class = argparse.RawDescriptionHelpFormatter
        lines = ["CMSwitch passes (give them as --NAME[=option=value,...], run in order;",
                 "options are spelt as below):"]
        for n in ALL_PASSES:
            lines.append(f"  --{n:<16} {_pass_summary(n)}")
            if _pass_options(n):
                lines.append(f"  {'':<18} {_pass_options(n)}")
        lines += ["", "  --emit=asm         print the .cmsasm flow (same as -t cmsasm)", "",
                  "xDSL's own options follow (-p also takes xDSL's generic passes)."]
        arg_parser.description = "\n".join(lines)


def _model_name(path: str | None) -> str:
    if not path:
        return "model"
    from pathlib import Path

    return Path(path).stem


def check_pass_options(name: str, opts: str) -> None:
    """``--NAME=k=v,...``: every option a field of the pass (kebab-case, as the help
    spells it) with a value of its type.  Raises ValueError naming the option, with
    the nearest name for a typo (a usage error, exit 2)."""
    import dataclasses
    import difflib

    fields = {f.name.replace("_", "-"): f for f in dataclasses.fields(ALL_PASSES[name]())
              if f.name != "name"}
    for item in filter(None, opts.split(",")):
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"--{name}: option '{item}' needs a value ({key}=VALUE)")
        if key not in fields:
            near = difflib.get_close_matches(key.replace("_", "-"), list(fields), n=1)
            hint = f"; did you mean '{near[0]}'?" if near else ""
            raise ValueError(f"--{name}: unknown option '{key}' (options: "
                             f"{', '.join(fields)}){hint}")
        kind = str(fields[key].type)
        text = value.strip('"')
        if key == "arch":
            from cmswitch.arch import check_spec
            from cmswitch.errors import CMSwitchError

            try:
                check_spec(text)
            except CMSwitchError as error:
                raise ValueError(f"--{name}: option arch: {error}") from None
        if "bool" in kind:
            if text not in ("true", "false"):
                raise ValueError(f"--{name}: option {key} is true or false, got '{value}'")
        elif "float" in kind:
            try:
                float(text)
            except ValueError:
                raise ValueError(f"--{name}: option {key} needs a number, got '{value}'") from None
        elif "int" in kind and not text.lstrip("-").isdigit():
            raise ValueError(f"--{name}: option {key} needs an integer, got '{value}'")


def nearest_pass(name: str) -> str | None:
    """The registered pass nearest to a misspelt `name` (ours first, then xDSL's), or
    None when nothing is close."""
    import difflib

    from xdsl.transforms import get_all_passes

    for names in (list(ALL_PASSES), list(get_all_passes())):
        near = difflib.get_close_matches(name, names, n=1, cutoff=0.75)
        if near:
            return near[0]
    return None


def _unknown_pass_flag(arg: str) -> str | None:
    """The error for ``--NAME`` when NAME is no option of the driver but looks like
    one of our passes (``cim-...`` or close to one), else None."""
    name = arg[2:].partition("=")[0]
    near = nearest_pass(name)
    if not (name.startswith("cim-") or (near or "").startswith("cim-")):
        return None
    return f"unknown pass --{name}" + (f"; did you mean '--{near}'?" if near else "")


def split_pass_flags(argv: Sequence[str]) -> list[str]:
    """Turn mlir-opt style ``--PASS[=OPTS]`` and ``--emit=asm`` flags into xDSL's
    ``-p``/``-t`` before argparse sees them (its optional-value options would swallow
    the input file)."""
    rest: list[str] = []
    flags: list[str] = []
    pipeline = ""
    args = list(argv)
    i = 0
    while i < len(args):
        arg = args[i]
        name, _, opts = arg[2:].partition("=") if arg.startswith("--") else ("", "", "")
        if name in ALL_PASSES:
            check_pass_options(name, opts)
            flags.append(f"{name}{{{opts.replace(',', ' ')}}}" if opts else name)
        elif arg == "--emit=asm":
            rest += ["-t", "cmsasm"]
        elif arg in ("-p", "--passes") and i + 1 < len(args):
            pipeline = args[i + 1]
            i += 1
        elif arg.startswith("--passes="):
            pipeline = arg.split("=", 1)[1]
        elif arg.startswith("--") and (unknown := _unknown_pass_flag(arg)):
            raise ValueError(unknown)
        else:
            rest.append(arg)
        i += 1
    full = ",".join(p for p in [pipeline, *flags] if p)
    return (["-p", full] if full else []) + ["-" if a == "-" else a for a in rest]


def _pipeline_hint(message: str) -> str:
    """The nearest pass name for xDSL's ``Unrecognized passes: ['NAME']``, or ''."""
    import re

    found = re.search(r"Unrecognized passes: \['([^']+)'", message)
    near = nearest_pass(found.group(1)) if found else None
    return f"; did you mean '{near}'?" if near else ""


@console
def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of `cmswitch-opt`; returns the exit code."""
    try:
        args = split_pass_flags(sys.argv[1:] if argv is None else argv)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    args = [a for a in args if a != "-"]  # stdin is the default input
    try:
        driver = CMSwitchOptMain(description="CMSwitch modular optimizer driver", args=args)
    except SystemExit as e:
        return int(e.code or 0)
    except (ArgSpecParseError, ValueError, TypeError) as e:  # bad pipeline or pass option
        print(f"error: bad pass pipeline: {e}{_pipeline_hint(str(e))}", file=sys.stderr)
        return 2
    try:
        driver.run()
    except SystemExit as e:
        return int(e.code or 0)
    except CMSwitchError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except (ParseError, DiagnosticException) as e:
        print(str(e).rstrip(), file=sys.stderr)
        return 1
    except OSError:
        raise  # `console` names the file (or standard output) in one line
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
