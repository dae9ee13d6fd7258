# A sequence rule over input.history: once a session has read a secret, it
# may not send anything out. Reads and posts in the other order are fine.
package execgate

default decision := {"allow": false, "reasons": ["action not allowed"]}

decision := {"allow": true} if {
	input.action.name in {"secrets.read", "fs.read"}
}

decision := {"allow": false, "reasons": ["no http.post after secrets.read in the same session"]} if {
	input.action.name == "http.post"
	read_a_secret
}

decision := {"allow": true} if {
	input.action.name == "http.post"
	not read_a_secret
}

read_a_secret if {
	some past in input.history
	past.action == "secrets.read"
	past.decision == "allow"
}
