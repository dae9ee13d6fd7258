# The example agent policy shipped with execgate: the demo runs it, the
# benchmarks measure it. Default deny; each rule below adds a reason.
package execgate

# The decision contract: {"allow": bool, "reasons": [string], "obligations": {}}.
decision := {
	"allow": count(deny) == 0,
	"reasons": sort([r | some r in deny]),
	"obligations": {},
}

known_actions := {"fs.read", "http.get", "shell.exec"}

deny contains sprintf("action %q is not allowed by this policy", [input.action.name]) if {
	not input.action.name in known_actions
}

# --- fs.read: only below /workspace/, never through "..".
deny contains "fs.read needs a string path" if {
	input.action.name == "fs.read"
	not is_string(input.action.args.path)
}

deny contains sprintf("path %q is outside /workspace/", [path]) if {
	input.action.name == "fs.read"
	path := input.action.args.path
	not startswith(path, "/workspace/")
}

deny contains sprintf("path %q contains '..'", [path]) if {
	input.action.name == "fs.read"
	path := input.action.args.path
	contains(path, "..")
}

# --- http.get: https only, to hosts in data.allowed_hosts.
deny contains "http.get needs an https:// url" if {
	input.action.name == "http.get"
	not startswith(object.get(input.action.args, "url", ""), "https://")
}

deny contains sprintf("host %q is not in the allowlist", [host]) if {
	input.action.name == "http.get"
	host := url_host(input.action.args.url)
	not host in data.allowed_hosts
}

url_host(url) := lower(split(split(url, "/")[2], ":")[0])

# --- shell.exec: operators only, and never a destructive command.
deny contains "shell.exec needs a string command" if {
	input.action.name == "shell.exec"
	not is_string(input.action.args.command)
}

deny contains sprintf("%v lacks the operator role for shell.exec", [input.principal.id]) if {
	input.action.name == "shell.exec"
	not "operator" in input.principal.roles
}

deny contains sprintf("command matches forbidden pattern %q", [name]) if {
	input.action.name == "shell.exec"
	# One scan with all patterns first: the common, safe command costs one match.
	regex.match(any_dangerous_command, input.action.args.command)
	some name, pattern in dangerous_commands
	regex.match(pattern, input.action.args.command)
}

dangerous_commands := {
	"rm -rf": `\brm\s+(-[a-zA-Z]*r[a-zA-Z]*f|-[a-zA-Z]*f[a-zA-Z]*r)\b`,
	"curl | sh": `\b(curl|wget)\b[^|]*\|\s*(ba|z)?sh\b`,
	"mkfs": `\bmkfs(\.\w+)?\b`,
	"dd if=": `\bdd\s+if=`,
	"fork bomb": `:\(\)\s*\{\s*:\|:&\s*\};:`,
	"chmod -R 777 /": `\bchmod\s+-R\s+777\s+/`,
}

any_dangerous_command := concat("|", [sprintf("(?:%s)", [p]) | some p in dangerous_commands])

# --- every action: only inside the UTC working window in data.working_hours_utc.
# A context.time that does not parse is itself a reason to deny.
deny contains sprintf("outside working hours (%d:00 UTC)", [utc_hour]) if {
	not within_hours(utc_hour)
}

deny contains "context.time is not an RFC 3339 time" if not utc_hour

utc_hour := time.clock([time.parse_rfc3339_ns(input.context.time), "UTC"])[0]

within_hours(hour) if {
	hour >= data.working_hours_utc.start
	hour < data.working_hours_utc.end
}
