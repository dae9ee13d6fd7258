# The example agent policy shipped with execgate: the demo runs it, the
# benchmarks measure it. Default deny: an unknown action is refused, and each
# known action has its own set of reasons to refuse, evaluated only for it.
package execgate

# The decision contract: {"allow": bool, "reasons": [string], "obligations": {}}.
decision := {
	"allow": count(deny) == 0,
	"reasons": sort([r | some r in deny]),
	"obligations": obligations,
}

# mail.send: the body is masked before the tool sees it, and each principal
# may send two mails (a budget the gate enforces atomically).
obligations := {
	"redact": {"args": {"transform": "mask", "paths": ["body"]}},
	"budget": {"key": sprintf("mail:%v", [input.principal.id]), "limit": 2, "cost": 1},
} if {
	input.action.name == "mail.send"
} else := {}

deny := action_denials | time_denials

action_denials := fs_read_denials if {
	input.action.name == "fs.read"
} else := http_get_denials if {
	input.action.name == "http.get"
} else := shell_exec_denials if {
	input.action.name == "shell.exec"
} else := set() if {
	input.action.name == "mail.send"
} else := {sprintf("action %q is not allowed by this policy", [input.action.name])}

# --- fs.read: only below /workspace/, never through "..".
fs_read_denials contains "fs.read needs a string path" if not is_string(input.action.args.path)

fs_read_denials contains sprintf("path %q is outside /workspace/", [path]) if {
	path := input.action.args.path
	not startswith(path, "/workspace/")
}

fs_read_denials contains sprintf("path %q contains '..'", [path]) if {
	path := input.action.args.path
	contains(path, "..")
}

# --- http.get: https only, to hosts in data.allowed_hosts.
http_get_denials contains "http.get needs an https:// url" if {
	not startswith(object.get(input.action.args, "url", ""), "https://")
}

http_get_denials contains sprintf("host %q is not in the allowlist", [host]) if {
	host := lower(split(split(input.action.args.url, "/")[2], ":")[0])
	not host in data.allowed_hosts
}

# --- shell.exec: operators only, and never a destructive command. The command
# is a string (tools) or an argv list (gate.run), whose words are joined.
shell_command := input.action.args.command if {
	is_string(input.action.args.command)
} else := concat(" ", input.action.args.argv)

shell_exec_denials contains "shell.exec needs a string command or an argv of strings" if {
	not shell_command
}

shell_exec_denials contains sprintf("%v lacks the operator role for shell.exec", [input.principal.id]) if {
	not "operator" in input.principal.roles
}

shell_exec_denials contains sprintf("command matches forbidden pattern %q", [name]) if {
	some name, pattern in dangerous_commands
	regex.match(pattern, shell_command)
}

dangerous_commands := {
	"rm -rf": `\brm\s+(-[a-zA-Z]*r[a-zA-Z]*f|-[a-zA-Z]*f[a-zA-Z]*r)\b`,
	"curl | sh": `\b(curl|wget)\b[^|]*\|\s*(ba|z)?sh\b`,
	"mkfs": `\bmkfs(\.\w+)?\b`,
	"dd if=": `\bdd\s+if=`,
	"fork bomb": `:\(\)\s*\{\s*:\|:&\s*\};:`,
	"chmod -R 777 /": `\bchmod\s+-R\s+777\s+/`,
}

# --- every action: only inside the UTC working window in data.working_hours_utc.
# A context.time that does not parse is itself a reason to deny.
time_denials contains sprintf("outside working hours (%d:00 UTC)", [utc_hour]) if {
	not within_hours(utc_hour)
}

time_denials contains "context.time is not an RFC 3339 time" if not utc_hour

utc_hour := time.clock([time.parse_rfc3339_ns(input.context.time), "UTC"])[0]

within_hours(hour) if {
	hour >= data.working_hours_utc.start
	hour < data.working_hours_utc.end
}
