"""execgate: action-level authorization for AI agents.

Decorate a tool with ``@gate.guard`` and every call is evaluated against Rego
policies natively, then blocked with reasons or allowed.
"""

from execgate._core import (
    AuditLog,
    BundleKey,
    Decision,
    Receipt,
    SigningKey,
    VerifyKey,
    VerifyReport,
    __version__,
)
from execgate.approval import Approval, ApprovalRequest
from execgate.context import context, current_context, current_principal, principal, purpose
from execgate.errors import (
    ActionDenied,
    ApprovalRequired,
    ArgumentError,
    AuditLogError,
    ConfigurationError,
    ExecgateError,
    IsolatedError,
    PolicyError,
    SandboxError,
    SignatureError,
    StateError,
)
from execgate.gate import DEFAULT_ENTRYPOINT, Gate
from execgate.redact import redact
from execgate.sandbox import Completed, Egress, Limits, Sandbox, Secret
from execgate.verify import verify_log

__all__ = [
    "DEFAULT_ENTRYPOINT",
    "ActionDenied",
    "Approval",
    "ApprovalRequest",
    "ApprovalRequired",
    "ArgumentError",
    "AuditLog",
    "AuditLogError",
    "BundleKey",
    "Completed",
    "ConfigurationError",
    "Decision",
    "Egress",
    "ExecgateError",
    "Gate",
    "IsolatedError",
    "Limits",
    "PolicyError",
    "Receipt",
    "Sandbox",
    "SandboxError",
    "Secret",
    "SignatureError",
    "SigningKey",
    "StateError",
    "VerifyKey",
    "VerifyReport",
    "__version__",
    "context",
    "current_context",
    "current_principal",
    "principal",
    "purpose",
    "redact",
    "verify_log",
]
