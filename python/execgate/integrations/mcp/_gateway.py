"""The transport-independent half of the MCP gateway.

A :class:`Gateway` looks at each JSON-RPC message crossing between an MCP
client and an MCP server and says what to do with it: forward it (perhaps
rewritten), answer it in the server's stead, or hold it for a human's approval.
Every ``tools/call`` is driven through the gate's call pipeline
(:mod:`execgate.pipeline`); the gateway only adapts MCP's calling convention to
it and never interprets an obligation itself.

Strictness, so that no message can invoke a tool undecided:

- Client requests are let through only for the methods of the handshake-era
  protocol (2024-11-05 .. 2025-11-25) listed in :data:`CLIENT_METHODS`;
  ``tools/call`` is gated; anything else (``server/discover`` and the other
  2026 stateless methods, ``tasks/*``, vendor methods) is refused with
  ``-32601``. A refused ``server/discover`` makes SDK clients fall back to the
  ``initialize`` handshake.
- A client notification passes only when its method starts with
  ``notifications/``: a ``tools/call`` without an id is dropped.
- Task-augmented calls (``params.task``) are refused, and the server's
  ``tasks`` capability is removed from its ``initialize`` result, so a result
  can never come back by a path the gateway does not watch.
- JSON-RPC batches from the client are refused as a whole (one error per
  request in them); batches from the server are taken apart and each message
  handled on its own.
- A request whose id is still in flight is refused (``-32600``): a second
  answer must never be matched to the first call's obligations.
- What the server receives from the client is the message as the gateway
  parsed it, encoded again (see :func:`encode`), never the client's bytes: a
  parser differential (duplicate keys, of which Python keeps the last) cannot
  make the server see another method, tool or argument than was decided.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from execgate.errors import ActionDenied, ExecgateError
from execgate.pipeline import Run

if TYPE_CHECKING:
    from execgate._core import Call, Decision
    from execgate.gate import Gate

__all__ = [
    "ASK_PREFIX",
    "CLIENT_METHODS",
    "DEFAULT_MAX_MESSAGE",
    "Forward",
    "Gateway",
    "Hold",
    "Pending",
    "Reply",
    "Session",
    "elicit_result",
    "encode",
]

#: The largest JSON-RPC message (one line on stdio, one body over HTTP) the
#: gateway reads, in bytes. Larger ones are refused (or, from the server,
#: withheld) without being parsed.
DEFAULT_MAX_MESSAGE = 4 << 20

#: Client requests relayed to the server (besides the gated ``tools/call``).
CLIENT_METHODS = frozenset(
    {
        "initialize",
        "ping",
        "tools/list",
        "prompts/list",
        "prompts/get",
        "resources/list",
        "resources/templates/list",
        "resources/read",
        "resources/subscribe",
        "resources/unsubscribe",
        "completion/complete",
        "logging/setLevel",
    }
)

#: The id prefix of the gateway's own ``elicitation/create`` requests.
ASK_PREFIX = "execgate-approval-"

PARSE_ERROR, INVALID_REQUEST, METHOD_NOT_FOUND, INVALID_PARAMS = -32700, -32600, -32601, -32602

_ELICIT_SCHEMA = {
    "type": "object",
    "properties": {
        "approve": {"type": "boolean", "title": "Approve this tool call", "default": False},
        "comment": {"type": "string", "title": "Comment (optional)"},
    },
    "required": ["approve"],
}

# The id of an oversized server message, found without parsing it: SDK servers
# write "jsonrpc" then "id" first.
_HEAD_ID = re.compile(
    rb'^\s*\{\s*(?:"jsonrpc"\s*:\s*"2\.0"\s*,\s*)?"id"\s*:\s*("(?:[^"\\]|\\.){0,200}"|-?\d{1,18})'
)


def encode(msg: Any) -> bytes:
    """``msg`` as compact JSON (UTF-8; escaped where a lone surrogate leaves no
    other way)."""
    try:
        return json.dumps(msg, separators=(",", ":"), ensure_ascii=False).encode()
    except UnicodeEncodeError:
        return json.dumps(msg, separators=(",", ":")).encode()


def error(id_: Any, code: int, message: str) -> dict[str, Any]:
    """A JSON-RPC error response."""
    return {"jsonrpc": "2.0", "id": id_, "error": {"code": code, "message": message}}


def id_key(id_: Any) -> tuple[str, Any] | None:
    """A hashable key for a JSON-RPC id (``1`` and ``"1"`` differ), or None
    when the value is not a valid request id (null, bool, float, object)."""
    if isinstance(id_, bool):
        return None
    if isinstance(id_, int):
        return ("n", id_)
    if isinstance(id_, str):
        return ("s", id_)
    return None


def pending_key(pending: Pending) -> tuple[str, Any]:
    """The key ``pending`` is filed under."""
    key = id_key(pending.id)
    if key is None:
        raise ValueError("a pending call has no usable id")
    return key


def head_id(raw: bytes) -> Any:
    """The id of a message too large to parse, when it names one up front."""
    m = _HEAD_ID.match(raw[:512])
    if m is None:
        return None
    try:
        return json.loads(m.group(1))
    except ValueError:
        return None


@dataclass
class Pending:
    """A client request on its way to the server and back."""

    method: str
    id: Any
    run: Run | None = None  # tools/call: the pipeline's run, entered when forwarded
    name: str = ""


@dataclass
class Session:
    """What the gateway knows of one client-server conversation."""

    principal: Mapping[str, Any] | None = None
    id: str = field(default_factory=lambda: uuid.uuid4().hex)
    client: str | None = None
    server: str | None = None
    protocol: str | None = None
    elicitation: bool = False
    pending: dict[tuple[str, Any], Pending] = field(default_factory=dict)
    # Calls answered, their completion not yet recorded (Gateway.finish).
    answered: list[Run] = field(default_factory=list)

    def context(self, tool_call_id: Any) -> dict[str, Any]:
        """``input.context`` for a call in this session."""
        return {
            "mcp": {"server": self.server, "client": self.client, "protocol": self.protocol},
            "tool_call_id": str(tool_call_id),
            "session": self.id,
        }


@dataclass
class Forward:
    """Send ``message`` on to the server."""

    message: dict[str, Any]


@dataclass
class Reply:
    """Answer the client with ``message`` (nothing reaches the server)."""

    message: dict[str, Any] | list[dict[str, Any]] | None


@dataclass
class Hold:
    """A ``tools/call`` waiting for a human: ask the client with
    ``elicitation`` (an ``elicitation/create`` params object), then
    :meth:`Gateway.answer` it."""

    call: Call
    message: dict[str, Any]
    elicitation: dict[str, Any]
    ask_id: str = field(default_factory=lambda: f"{ASK_PREFIX}{uuid.uuid4().hex}")

    def request(self) -> dict[str, Any]:
        """The ``elicitation/create`` request to put to the client."""
        return {
            "jsonrpc": "2.0",
            "id": self.ask_id,
            "method": "elicitation/create",
            "params": self.elicitation,
        }


def elicit_result(response: Any) -> Any:
    """The ``ElicitResult`` in the client's answer to :meth:`Hold.request`
    (an error or a malformed answer counts as no consent)."""
    result = response.get("result") if isinstance(response, dict) else None
    return result if isinstance(result, dict) else {"action": "error"}


Verdict = Forward | Reply | Hold


def _meta(decision: Decision) -> dict[str, Any]:
    receipt = decision.receipt
    return {
        "execgate": {
            "decision": "allow" if decision.allowed else "deny",
            "reasons": list(decision.reasons),
            "receipt": None if receipt is None else receipt.id,
        }
    }


def denied_result(
    id_: Any, name: str, decision: Decision, reasons: tuple[str, ...]
) -> dict[str, Any]:
    """The ``CallToolResult`` a denied call gets: ``isError`` with the reasons
    as text (so the model can read them), decision and receipt in ``_meta``."""
    text = "; ".join(reasons) or "denied by policy"
    meta = _meta(decision)
    meta["execgate"]["decision"] = "deny"
    meta["execgate"]["reasons"] = list(reasons)
    return {
        "jsonrpc": "2.0",
        "id": id_,
        "result": {
            "content": [
                {
                    "type": "text",
                    "text": f"Tool call {name!r} was denied by policy: {text}. "
                    "It did not run; do not retry it unchanged.",
                }
            ],
            "isError": True,
            "_meta": meta,
        },
    }


def _failed_result(id_: Any, name: str, why: str) -> dict[str, Any]:
    return {
        "jsonrpc": "2.0",
        "id": id_,
        "result": {
            "content": [{"type": "text", "text": f"Tool call {name!r} failed: {why}"}],
            "isError": True,
        },
    }


class Gateway:
    """Decides what happens to each message between one MCP client and server.

    ``gate`` decides every ``tools/call``; ``visible`` (a gate on the rule
    ``data.execgate.visible``, when the policy has one) decides which tools
    ``tools/list`` shows. ``log`` receives one line per refused or dropped
    message (the proxy writes them to stderr).
    """

    def __init__(
        self,
        gate: Gate,
        *,
        visible: Gate | None = None,
        log: Callable[[str], None] | None = None,
    ) -> None:
        self.gate = gate
        self.visible = visible
        self.log = log or (lambda _line: None)

    # -- client -> server ---------------------------------------------------

    def inbound(self, session: Session, msg: Any, *, can_ask: bool = True) -> Verdict:
        """What to do with one parsed message from the client. ``can_ask``
        says whether the transport can put an ``elicitation/create`` to the
        client for this message (a call needing approval is held only then,
        and only when the client declared the capability)."""
        if isinstance(msg, list):
            return self._batch(msg)
        if not isinstance(msg, dict) or msg.get("jsonrpc") != "2.0":
            self.log("refused a message that is not a JSON-RPC 2.0 object")
            return Reply(error(None, INVALID_REQUEST, "not a JSON-RPC 2.0 message"))
        method = msg.get("method")
        if method is None:
            # A response to a request the server made (sampling, roots, ...).
            return Forward(msg)
        if not isinstance(method, str):
            return Reply(error(msg.get("id"), INVALID_REQUEST, "method must be a string"))
        if "id" not in msg:
            if method.startswith("notifications/"):
                return Forward(msg)
            self.log(f"dropped a {method!r} notification (only notifications/* pass)")
            return Reply(None)
        id_ = msg["id"]
        key = id_key(id_)
        if key is None:
            return Reply(
                error(None, INVALID_REQUEST, "a request id must be a string or an integer")
            )
        if key in session.pending:
            self.log(f"refused {method} with id {id_!r}: that id is still in flight")
            return Reply(
                error(id_, INVALID_REQUEST, f"id {id_!r} is already in use by a request in flight")
            )
        if method == "tools/call":
            return self._tools_call(session, msg, key, can_ask)
        if method not in CLIENT_METHODS:
            self.log(f"refused method {method!r}: not relayed by the execgate MCP gateway")
            return Reply(
                error(
                    id_,
                    METHOD_NOT_FOUND,
                    f"method {method!r} is not available through the execgate gateway",
                )
            )
        if method == "initialize":
            raw = msg.get("params")
            params: dict[str, Any] = raw if isinstance(raw, dict) else {}
            info = params.get("clientInfo")
            session.client = str(info.get("name")) if isinstance(info, dict) else None
            version = params.get("protocolVersion")
            session.protocol = version if isinstance(version, str) else None
            caps = params.get("capabilities")
            session.elicitation = isinstance(caps, dict) and isinstance(
                caps.get("elicitation"), dict
            )
        if method in ("initialize", "tools/list"):
            session.pending[key] = Pending(method, id_)
        return Forward(msg)

    def _batch(self, batch: list[Any]) -> Reply:
        self.log(f"refused a JSON-RPC batch of {len(batch)} messages")
        if not batch:
            return Reply(error(None, INVALID_REQUEST, "an empty batch"))
        out = [
            error(
                m.get("id"),
                INVALID_REQUEST,
                "JSON-RPC batches are not accepted by the execgate gateway; "
                "send each message on its own",
            )
            for m in batch
            if isinstance(m, dict) and m.get("id") is not None
        ]
        return Reply(out or None)

    def _tools_call(
        self, session: Session, msg: dict[str, Any], key: tuple[str, Any], can_ask: bool
    ) -> Verdict:
        id_ = msg["id"]
        params = msg.get("params")
        if not isinstance(params, dict) or not isinstance(params.get("name"), str):
            return Reply(error(id_, INVALID_PARAMS, "tools/call needs params.name (a string)"))
        arguments = params.get("arguments", {})
        if arguments is None:
            arguments = {}
        if not isinstance(arguments, dict):
            return Reply(
                error(id_, INVALID_PARAMS, "tools/call params.arguments must be an object")
            )
        if "task" in params:
            self.log(f"refused a task-augmented tools/call of {params['name']!r}")
            return Reply(
                error(
                    id_,
                    INVALID_PARAMS,
                    "task-augmented tools/call is not supported through the execgate gateway",
                )
            )
        name = params["name"]
        call = self.gate.pipeline.start(name, arguments, session.principal, session.context(id_))
        if self.visible is not None and not self.is_visible(session, name):
            # A tool the policy's visibility rule hides is refused like any deny.
            call.refuse(f"the tool {name!r} is hidden by policy")
            return self._authorized(session, msg, key, call, self.gate.pipeline.authorize(call))
        if call.approval is not None and session.elicitation and can_ask:
            # Held: the id stays taken until the human answers.
            session.pending[key] = Pending("held", id_, None, name)
            return Hold(call, msg, self._elicitation(name, call, call.approval))
        return self._authorized(session, msg, key, call, self.gate.pipeline.authorize(call))

    def _elicitation(self, name: str, call: Call, approval: Mapping[str, Any]) -> dict[str, Any]:
        try:
            shown = json.dumps(call.arguments(), sort_keys=True)
        except ExecgateError:
            shown = "(withheld)"
        if len(shown) > 2000:
            shown = shown[:2000] + " ..."
        return {
            "mode": "form",
            "message": f"Approve the tool call {name!r}?\n"
            f"Why approval is needed: {approval.get('reason') or '-'}\n"
            f"Approvers: {', '.join(map(str, approval.get('approvers') or [])) or '-'}\n"
            f"Arguments: {shown}",
            "requestedSchema": _ELICIT_SCHEMA,
        }

    def answer(self, session: Session, hold: Hold, result: Any) -> Forward | Reply:
        """Gives a held call the client's answer to the elicitation (a parsed
        ``ElicitResult``, or None when there was none), then decides it."""
        content = result.get("content") if isinstance(result, dict) else None
        approved = (
            isinstance(result, dict)
            and result.get("action") == "accept"
            and isinstance(content, dict)
            and content.get("approve") is True
        )
        if result is None:
            hold.call.answer(
                approved=False, approver="", comment="no answer to the elicitation", timed_out=True
            )
        else:
            comment = content.get("comment") if isinstance(content, dict) else None
            action = result.get("action") if isinstance(result, dict) else None
            hold.call.answer(
                approved=approved,
                approver=f"mcp-elicitation:{session.client or 'client'}",
                comment=str(comment) if comment else f"elicitation {action or 'malformed'}",
            )
        msg = hold.message
        key = id_key(msg["id"])
        if key is None:
            raise ValueError("a held call has no usable id")
        session.pending.pop(key, None)
        return self._authorized(
            session, msg, key, hold.call, self.gate.pipeline.authorize(hold.call)
        )

    def _authorized(
        self,
        session: Session,
        msg: dict[str, Any],
        key: tuple[str, Any],
        call: Call,
        decision: Decision,
    ) -> Forward | Reply:
        params = msg["params"]
        name = params["name"]
        if decision.blocked:
            return Reply(denied_result(msg["id"], name, decision, decision.reasons))
        arguments = call.arguments()
        run = Run(call, decision).__enter__()
        session.pending[key] = Pending("tools/call", msg["id"], run, name)
        if arguments != params.get("arguments"):
            msg = {**msg, "params": {**params, "arguments": arguments}}
        return Forward(msg)

    # -- server -> client ---------------------------------------------------

    def outbound(self, session: Session, msg: Any) -> list[Any]:
        """What the client gets for one parsed message from the server (then
        :meth:`finish` records the completions)."""
        if isinstance(msg, list):
            out: list[Any] = []
            for item in msg:
                out.extend(self.outbound(session, item))
            return out
        if not isinstance(msg, dict) or "method" in msg or not session.pending:
            return [msg]
        key = id_key(msg.get("id"))
        pending = session.pending.pop(key, None) if key is not None else None
        if pending is None:
            return [msg]
        if pending.method == "held":  # the server cannot answer what it never got
            session.pending[pending_key(pending)] = pending
            self.log(f"dropped a server answer to id {pending.id!r}, which it was never sent")
            return []
        if pending.method == "tools/call":
            return [self._result(session, pending, msg)]
        result = msg.get("result")
        if not isinstance(result, dict):
            return [msg]
        if pending.method == "initialize":
            info = result.get("serverInfo")
            session.server = str(info.get("name")) if isinstance(info, dict) else None
            version = result.get("protocolVersion")
            if isinstance(version, str):
                session.protocol = version
            caps = result.get("capabilities")
            if isinstance(caps, dict) and "tasks" in caps:
                caps = {k: v for k, v in caps.items() if k != "tasks"}
                msg = {**msg, "result": {**result, "capabilities": caps}}
        elif pending.method == "tools/list" and self.visible is not None:
            tools = result.get("tools")
            if isinstance(tools, list):
                shown = [
                    t
                    for t in tools
                    if isinstance(t, dict) and self.is_visible(session, t.get("name"))
                ]
                msg = {**msg, "result": {**result, "tools": shown}}
        return [msg]

    def oversized(self, session: Session, raw: bytes, cap: int) -> list[Any]:
        """A server message over the cap: withheld; the call it answers fails."""
        id_ = head_id(raw)
        key = id_key(id_)
        pending = session.pending.pop(key, None) if key is not None else None
        self.log(f"withheld a server message of {len(raw)} bytes (over the {cap}-byte cap)")
        if pending is None:
            return (
                []
                if id_ is None
                else [error(id_, INVALID_REQUEST, f"the server's answer exceeded {cap} bytes")]
            )
        why = f"the server's answer exceeded the gateway's {cap}-byte message cap"
        if pending.run is not None:
            pending.run.error = "oversized"
            pending.run.__exit__(None, None, None)
            return [_failed_result(id_, pending.name, why)]
        return [error(id_, INVALID_REQUEST, why)]

    def finish(self, session: Session) -> None:
        """Records the completion of every call answered by :meth:`outbound`.
        Transports call it once they have handed the answers on, so that
        writing the record is not on the round trip."""
        while session.answered:
            session.answered.pop().__exit__(None, None, None)

    def fail_pending(self, session: Session, why: str, error_type: str) -> list[dict[str, Any]]:
        """Closes every call still in flight as failed (the server died, the
        client went away); returns what the client should be told."""
        self.finish(session)
        out: list[dict[str, Any]] = []
        for pending in session.pending.values():
            if pending.run is not None:
                pending.run.error = error_type
                pending.run.__exit__(None, None, None)
                out.append(_failed_result(pending.id, pending.name, why))
            else:
                out.append(error(pending.id, INVALID_REQUEST, why))
        session.pending.clear()
        return out

    def _result(self, session: Session, pending: Pending, msg: dict[str, Any]) -> dict[str, Any]:
        """What the client gets for the server's answer to an allowed call;
        its completion is recorded by :meth:`finish`."""
        run = pending.run
        if run is None:
            raise RuntimeError("an answer for a call that never started to run")
        result = msg.get("result")
        if "error" in msg or not isinstance(result, dict):
            err = msg.get("error")
            run.error = "jsonrpc_error" if isinstance(err, dict) else "malformed_result"
            run.result = err
            session.answered.append(run)
            if not isinstance(err, dict):
                return _failed_result(
                    pending.id, pending.name, "the server sent a malformed result"
                )
            try:
                message = run.output(str(err.get("message", "")))
            except ActionDenied:
                message = "(withheld)"
            return {**msg, "error": {"code": err.get("code", -32603), "message": message}}
        run.result = {
            "content": result.get("content"),
            "structuredContent": result.get("structuredContent"),
        }
        if result.get("isError") is True:
            run.error = "isError"
        session.answered.append(run)
        try:
            shown = self._redacted(run, result)
        except ActionDenied as refusal:
            return denied_result(pending.id, pending.name, run.decision, refusal.reasons)
        meta = dict(shown.get("_meta") or {}) if isinstance(shown.get("_meta"), dict) else {}
        meta.update(_meta(run.decision))
        shown["_meta"] = meta
        return {**msg, "result": shown}

    @staticmethod
    def _redacted(run: Run, result: dict[str, Any]) -> dict[str, Any]:
        """``result`` with every text it carries passed through the output
        redaction; binary content cannot be redacted, so it is withheld."""
        shown = dict(result)
        if not run.call.redacts_output:
            return shown
        content = result.get("content")
        if isinstance(content, list):
            items = []
            for item in content:
                if not isinstance(item, dict):
                    raise ActionDenied(
                        run.decision, ("the output was withheld: a malformed content item",)
                    )
                kind = item.get("type")
                item = dict(item)
                if kind == "text":
                    item["text"] = run.output(item.get("text"))
                elif kind == "resource" and isinstance(item.get("resource"), dict):
                    resource = dict(item["resource"])
                    if "blob" in resource:
                        raise ActionDenied(
                            run.decision,
                            ("the output was withheld: a binary resource cannot be redacted",),
                        )
                    resource["text"] = run.output(resource.get("text"))
                    item["resource"] = resource
                elif kind == "resource_link":
                    item = run.output(item)
                else:
                    raise ActionDenied(
                        run.decision,
                        (f"the output was withheld: {kind!r} content cannot be redacted",),
                    )
                items.append(item)
            shown["content"] = items
        if "structuredContent" in result:
            shown["structuredContent"] = run.output(result["structuredContent"])
        return shown

    # -- visibility ----------------------------------------------------------

    def is_visible(self, session: Session, name: Any) -> bool:
        """Whether the visibility rule lets this session see tool ``name``
        (undefined, an error or anything but true hides it)."""
        if self.visible is None:
            return True
        if not isinstance(name, str):
            return False
        decision = self.visible.pipeline.check(name, {}, session.principal, session.context(None))
        return decision.allowed
