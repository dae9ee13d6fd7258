"""The execgate exception hierarchy.

Every exception carries structured facts (the decision, the file and line, the
argument at fault) as attributes, not only a message.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from execgate._core import Decision

__all__ = [
    "ActionDenied",
    "ApprovalRequired",
    "ArgumentError",
    "AuditLogError",
    "ConfigurationError",
    "ExecgateError",
    "IsolatedError",
    "PolicyError",
    "SandboxError",
    "SignatureError",
    "StateError",
]


class ExecgateError(Exception):
    """Base class of every execgate error."""


class ActionDenied(ExecgateError, PermissionError):
    """The gate denied an action. ``decision`` holds the full Decision."""

    def __init__(self, decision: Decision, reasons: tuple[str, ...] | None = None) -> None:
        self.decision = decision
        self.action = decision.action
        self.reasons: tuple[str, ...] = decision.reasons if reasons is None else reasons
        super().__init__(f"{self.action} denied: " + "; ".join(self.reasons))


class PolicyError(ExecgateError):
    """A policy or data document could not be loaded or compiled.

    ``file``, ``line`` and ``column`` locate the fault when it is known;
    ``message`` is the description without the location.
    """

    def __init__(
        self,
        text: str,
        *,
        message: str | None = None,
        file: str | None = None,
        line: int | None = None,
        column: int | None = None,
    ) -> None:
        super().__init__(text)
        self.message = message if message is not None else text
        self.file = file
        self.line = line
        self.column = column


class ConfigurationError(ExecgateError, ValueError):
    """An option or value execgate cannot accept (a mode, a timeout, a limit,
    a sandbox setting), or an API used out of order. The message names it."""


class StateError(ExecgateError):
    """The shared state store (Redis) cannot be reached, answered too late, or
    lost its data. Calls that need it are denied with ``error="state"``; this
    is raised by operations on the store itself (``rebuild_state``)."""


class ArgumentError(ExecgateError, TypeError):
    """A call argument cannot be turned into policy input; the tool did not run.

    ``argument`` is the dotted path of the offending value, e.g. ``args.items[2]``.
    """

    def __init__(self, message: str, *, argument: str) -> None:
        super().__init__(message)
        self.argument = argument


class SignatureError(ExecgateError):
    """A receipt or log signature is invalid, or a key cannot be used.

    ``path`` names the key file when the problem is with one.
    """

    def __init__(self, message: str, *, path: str | None = None) -> None:
        super().__init__(message)
        self.path = path


class AuditLogError(ExecgateError):
    """The audit log cannot be opened, read or written. ``path`` names it."""

    def __init__(self, message: str, *, path: str | None = None) -> None:
        super().__init__(message)
        self.path = path


class SandboxError(ExecgateError):
    """A sandboxed run could not be set up as requested, or an isolated
    function did not finish; ``completed`` holds the run's result when there is one."""

    def __init__(self, message: str, *, completed: object | None = None) -> None:
        super().__init__(message)
        self.completed = completed


class IsolatedError(SandboxError):
    """An isolated tool's body raised an exception the parent does not rebuild.

    ``type_name`` and ``module`` name the child's exception class, ``message``
    is its text; nothing else crosses from the child.
    """

    def __init__(self, type_name: str, module: str, message: str) -> None:
        super().__init__(f"isolated call raised {module}.{type_name}: {message}")
        self.type_name = type_name
        self.module = module
        self.message = message


class ApprovalRequired(ExecgateError):
    """The policy requires human approval and the gate has no approver.

    ``request`` is the :class:`~execgate.approval.ApprovalRequest`; ``decision``
    the decision that asked for it.
    """

    def __init__(self, request: Any) -> None:
        self.request = request
        self.decision = request.decision
        reason = f": {request.reason}" if request.reason else ""
        super().__init__(f"{request.action} needs approval{reason}")
