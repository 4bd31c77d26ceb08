"""The one exception type the tools turn into a one-line diagnostic and exit code 1."""

from xdsl.utils.exceptions import DiagnosticException


class CMSwitchError(DiagnosticException):
    """A diagnosed error in the user's input (model, IR, hardware file, flow).

    The message is one line that names the file, operator, node or field at fault.
    Command-line tools print ``error: <message>`` to stderr and exit with code 1; as a
    DiagnosticException, `xdsl-opt --verify-diagnostics` prints it too.
    """


class ModelTooLargeError(CMSwitchError):
    """The model cannot run on the chip at all: an operator that `cim-partition` cannot
    split (a dynamic matmul's run-time operand, a grouped convolution's packed groups)
    needs more arrays than the chip has.  A diagnosed refusal, exit code 1."""
