# An example policy for `execgate mcp`: what an MCP server's tools may do.
#
#   execgate mcp --policy python/execgate/examples/mcp.rego -- uvx mcp-server-time
#
# input.action.name is the MCP tool's name, input.action.args its arguments,
# input.context.mcp = {server, client, protocol}, input.context.tool_call_id
# the JSON-RPC id. Tools this file does not name are denied.
package execgate

import rego.v1

default decision := {"allow": false, "reasons": ["tool not allowed by the MCP policy"]}

# Which tools the client is shown at all (tools/list). A hidden tool is also
# never allowed: every allow rule below requires `visible`.
default visible := false

visible if not input.action.name in hidden

hidden := {"admin_reset"}

# Per-tool rules: read-only tools, with a rate limit per principal.
read_only := {"echo", "add", "calls", "get_current_time", "convert_time", "read_file", "connect", "slow", "fail", "crash"}

# (data.execgate_mcp.rate_limit, from a --data file, overrides the default.)
default rate_limit := 1000

rate_limit := data.execgate_mcp.rate_limit

decision := {"allow": true, "obligations": {"rate": {
	"key": sprintf("mcp:%v", [input.principal.id]),
	"limit": rate_limit,
	"window_seconds": 60,
}}} if {
	visible
	input.action.name in read_only
}

# An output redaction: contact cards reach the model without email addresses,
# in the text and in the structured content alike.
decision := {"allow": true, "obligations": {"redact": {"output": {"detectors": ["email"], "transform": "drop"}}}} if {
	visible
	input.action.name == "contact"
}

# An argument rule: deletes only inside /tmp/scratch, and never a parent escape.
decision := {"allow": true} if {
	visible
	input.action.name == "delete"
	startswith(input.action.args.path, "/tmp/scratch/")
	not contains(input.action.args.path, "..")
}

decision := {"allow": false, "reasons": [sprintf("delete outside /tmp/scratch: %v", [input.action.args.path])]} if {
	visible
	input.action.name == "delete"
	not startswith(input.action.args.path, "/tmp/scratch/")
}

# A human approves each deploy (through MCP elicitation in the client).
decision := {"allow": true, "obligations": {"approval": {"reason": "deploys need a human", "approvers": ["ops"]}}} if {
	visible
	input.action.name == "deploy"
}
