"""The one exception type the tools turn into a one-line diagnostic and exit code 1."""

from xdsl.utils.exceptions import DiagnosticException


class CMSwitchError(DiagnosticException):
    """A diagnosed error in the user's input (model, IR, hardware file, flow).

    The message is one line that names the file, operator, node or field at fault.
    Command-line tools print ``error: <message>`` to stderr and exit with code 1; as a
    DiagnosticException, `xdsl-opt --verify-diagnostics` prints it too.
    """
