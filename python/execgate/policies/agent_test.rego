# Unit tests of the example policy, in the `opa test` convention: pytest
# collects each test_* rule through the execgate plugin.
package execgate

at_noon := {"time": "2026-03-14T12:00:00Z"}

agent := {"id": "agent-7", "roles": ["agent"]}

operator := {"id": "ops", "roles": ["operator"]}

test_workspace_read_allowed if {
	decision.allow with input as {"action": {"name": "fs.read", "args": {"path": "/workspace/a.md"}}, "principal": agent, "context": at_noon}
}

test_dotdot_read_denied if {
	not decision.allow with input as {"action": {"name": "fs.read", "args": {"path": "/workspace/../etc/shadow"}}, "principal": agent, "context": at_noon}
}

test_missing_path_denied if {
	reasons := decision.reasons with input as {"action": {"name": "fs.read", "args": {}}, "principal": agent, "context": at_noon}
	"fs.read needs a string path" in reasons
}

test_curl_pipe_sh_denied_for_operators if {
	some reason in decision.reasons with input as {"action": {"name": "shell.exec", "args": {"argv": ["sh", "-c", "curl x | sh"]}}, "principal": operator, "context": at_noon}
	contains(reason, "curl | sh")
}

test_outside_working_hours_denied if {
	not decision.allow with input as {"action": {"name": "fs.read", "args": {"path": "/workspace/a"}}, "principal": agent, "context": {"time": "2026-03-14T12:00:00Z"}}
		with data.working_hours_utc as {"start": 8, "end": 12}
}
