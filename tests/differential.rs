//! Differential test: the compiled RVM program (the hot path) against
//! regorus's tree-walking interpreter, over a corpus of policies and inputs
//! that includes hostile argument types.
//!
//! Where both engines produce a verdict, the verdicts must be identical. Where
//! the interpreter fails (an error, a conflict), the RVM must not allow: the
//! gate fails closed either way. The RVM must never allow what the
//! interpreter denies.

#![allow(
    clippy::expect_used,
    clippy::unwrap_used,
    clippy::panic,
    reason = "a test crate"
)]

use execgate::core::policy::{Policy, PolicyOptions, PolicySet};
use regorus::Value;

const AGENT: &str = include_str!("../python/execgate/policies/agent.rego");
const AGENT_DATA: &str = include_str!("../python/execgate/policies/agent_data.json");

fn corpus() -> Vec<(&'static str, String, &'static str)> {
    vec![
        ("agent", AGENT.to_string(), AGENT_DATA),
        (
            "boolean",
            "package execgate\ndefault decision := false\ndecision if input.principal.id == \"alice\"\n"
                .into(),
            "{}",
        ),
        (
            "roles and every",
            r#"package execgate
default decision := {"allow": false, "reasons": ["missing role"]}
decision := {"allow": true, "reasons": []} if {
    every r in data.required { r in input.principal.roles }
}"#
            .into(),
            r#"{"required": ["agent", "reader"]}"#,
        ),
        (
            "partial set reasons with obligations",
            r#"package execgate
deny contains "too large" if input.action.args.size > 10
deny contains sprintf("bad name %v", [input.action.args.name]) if not regex.match(`^[a-z]+$`, input.action.args.name)
default obligations := {}
obligations := {"sandbox": {"memory": "64M"}} if input.action.name == "shell.exec"
decision := {"allow": count(deny) == 0, "reasons": sort([r | some r in deny]), "obligations": obligations}"#
                .into(),
            "{}",
        ),
        (
            "functions and else",
            r#"package execgate
level(r) := 3 if r == "admin"
else := 2 if r == "operator"
else := 1
max_level := max([level(r) | some r in input.principal.roles])
decision := {"allow": max_level >= data.min_level, "reasons": [sprintf("level %d", [max_level])]}"#
                .into(),
            r#"{"min_level": 2}"#,
        ),
        (
            "object lookups and strings",
            r#"package execgate
import rego.v1
limits := data.limits[input.action.name]
decision := {"allow": true} if {
    count(input.action.args.items) <= limits.max_items
    upper(input.action.args.tag) == input.action.args.tag
}
default decision := {"allow": false, "reasons": ["over limit or bad tag"]}"#
                .into(),
            r#"{"limits": {"batch": {"max_items": 3}}}"#,
        ),
        (
            "type errors in deny bodies",
            r#"package execgate
deny contains "outside workspace" if not startswith(input.action.args.path, "/workspace/")
deny contains "size" if input.action.args.size > 100
decision := {"allow": count(deny) == 0, "reasons": sort([r | some r in deny])}"#
                .into(),
            "{}",
        ),
        (
            "guarded builtins within the memory budget",
            r#"package execgate
n := count(numbers.range(1, 50)) + count(numbers.range_step(0, 20, 5))
s := replace(concat("-", ["a", "b", input.principal.id]), "-", "--")
w := sprintf("%5d|%v|%.2f", [n, s, 1.5])
hosts := net.cidr_expand("10.0.0.0/30")
decision := {"allow": n == 55, "reasons": [w, json.marshal(hosts), base64.encode(s)]}"#
                .into(),
            "{}",
        ),
        (
            "conflicting complete rules",
            r#"package execgate
decision := true if input.action.args.a == 1
decision := false if input.action.args.b == 1"#
                .into(),
            "{}",
        ),
        (
            "arithmetic",
            r#"package execgate
total := sum([x | some x in input.action.args.items])
decision := {"allow": total / count(input.action.args.items) < 5, "reasons": ["average too high"]}"#
                .into(),
            "{}",
        ),
    ]
}

fn inputs() -> Vec<Value> {
    let docs = [
        r#"{"action":{"name":"fs.read","args":{"path":"/workspace/a.txt"}},"principal":{"id":"alice","roles":["agent","reader"]},"context":{"time":"2026-03-14T10:22:33.123456Z"}}"#,
        r#"{"action":{"name":"fs.read","args":{"path":"/workspace/../etc/passwd"}},"principal":{"id":"bob","roles":["agent"]},"context":{"time":"2026-03-14T23:22:33Z"}}"#,
        r#"{"action":{"name":"fs.read","args":{"path":123}},"principal":{"id":"mallory","roles":[]},"context":{"time":"2026-03-14T10:00:00Z"}}"#,
        r#"{"action":{"name":"fs.read","args":{"path":["/workspace/x"]}},"principal":{"id":null,"roles":"agent"},"context":{"time":"2026-03-14T10:00:00Z"}}"#,
        r#"{"action":{"name":"http.get","args":{"url":"https://api.github.com/x"}},"principal":{"id":"alice","roles":["operator"]},"context":{"time":"2026-03-14T10:00:00Z"}}"#,
        r#"{"action":{"name":"http.get","args":{"url":"https://API.GITHUB.COM:443/x"}},"principal":{"id":"alice","roles":["operator"]},"context":{"time":"2026-03-14T10:00:00Z"}}"#,
        r#"{"action":{"name":"http.get","args":{"url":null}},"principal":{"id":"alice","roles":["operator"]},"context":{"time":"2026-03-14T10:00:00Z"}}"#,
        r#"{"action":{"name":"shell.exec","args":{"command":"rm -rf /"}},"principal":{"id":"ops","roles":["operator"]},"context":{"time":"2026-03-14T10:00:00Z"}}"#,
        r#"{"action":{"name":"shell.exec","args":{"command":"ls"}},"principal":{"id":"ops","roles":["admin"]},"context":{"time":"2026-03-14T10:00:00Z"}}"#,
        r#"{"action":{"name":"shell.exec","args":{"command":{"$ne":1}}},"principal":{"id":"ops","roles":["operator"]},"context":{"time":"not a time"}}"#,
        r#"{"action":{"name":"batch","args":{"items":[1,2,3],"tag":"ABC","size":5,"name":"ok","a":1,"b":0}},"principal":{"id":"alice","roles":["agent"]},"context":{}}"#,
        r#"{"action":{"name":"batch","args":{"items":[1,2,3,4],"tag":"abc","size":500,"name":"Bad!","a":1,"b":1}},"principal":{"id":"alice","roles":["agent"]},"context":{}}"#,
        r#"{"action":{"name":"batch","args":{"items":[],"tag":7,"size":"big","name":5}},"principal":{"id":"alice","roles":[]},"context":{}}"#,
        r#"{"action":{"name":"batch","args":{"items":["a"],"size":null}},"principal":{},"context":{}}"#,
    ];
    docs.iter()
        .map(|d| Value::from_json_str(d).expect("corpus input is JSON"))
        .collect()
}

fn compile(rego: &str, data: &str) -> Policy {
    let mut set = PolicySet::new();
    set.add_source("corpus.rego", rego)
        .add_data("corpus data", Value::from_json_str(data).expect("data"));
    set.compile(&PolicyOptions::default())
        .expect("corpus policy compiles")
}

#[test]
fn rvm_agrees_with_interpreter() {
    let mut compared = 0;
    let mut both_verdicts = 0;
    for (name, rego, data) in corpus() {
        let policy = compile(&rego, data);
        for (i, input) in inputs().iter().enumerate() {
            let rvm = policy.evaluate(input).outcome;
            let int = policy.evaluate_interpreted(input).outcome;
            let case = format!("policy {name:?}, input {i}: rvm={rvm:?} interpreter={int:?}");
            match (&rvm, &int) {
                (Ok(a), Ok(b)) => {
                    assert_eq!(a, b, "verdicts differ: {case}");
                    both_verdicts += 1;
                }
                (Ok(a), Err(_)) => {
                    assert!(!a.allow, "RVM allowed where the interpreter failed: {case}")
                }
                (Err(_), Ok(b)) => {
                    assert!(!b.allow, "RVM failed where the interpreter allowed: {case}")
                }
                (Err(_), Err(_)) => {}
            }
            compared += 1;
        }
    }
    // The corpus must exercise real verdicts, not only failures.
    assert!(
        both_verdicts * 2 > compared,
        "{both_verdicts} of {compared}"
    );
}

#[test]
fn hostile_argument_types_are_denied_by_the_example_policy() {
    let policy = compile(AGENT, AGENT_DATA);
    for doc in [
        r#"{"action":{"name":"fs.read","args":{"path":123}},"principal":{"id":"a","roles":["operator"]},"context":{"time":"2026-03-14T10:00:00Z"}}"#,
        r#"{"action":{"name":"fs.read","args":{}},"principal":{"id":"a","roles":["operator"]},"context":{"time":"2026-03-14T10:00:00Z"}}"#,
        r#"{"action":{"name":"http.get","args":{"url":["https://api.github.com/"]}},"principal":{"id":"a","roles":["operator"]},"context":{"time":"2026-03-14T10:00:00Z"}}"#,
        r#"{"action":{"name":"shell.exec","args":{"command":["rm","-rf","/"]}},"principal":{"id":"a","roles":["operator"]},"context":{"time":"2026-03-14T10:00:00Z"}}"#,
        r#"{"action":{"name":"shell.exec","args":{"command":"ls"}},"principal":{"id":"a","roles":"operator"},"context":{"time":"2026-03-14T10:00:00Z"}}"#,
        r#"{"action":{"name":"fs.read","args":{"path":"/workspace/a"}},"principal":{"id":"a","roles":[]},"context":{"time":"yesterday"}}"#,
    ] {
        let input = Value::from_json_str(doc).expect("json");
        let outcome = policy.evaluate(&input).outcome;
        assert!(
            !matches!(outcome, Ok(ref v) if v.allow),
            "hostile input allowed: {doc} -> {outcome:?}"
        );
    }
}

/// `regex.match` runs on execgate's own builtin in the RVM (shared compiled
/// patterns, a DFA once a pattern is hot) and on regorus's in the interpreter:
/// the same answer for every pattern and text, on the first evaluations and
/// after the pattern has its DFA; a deny for patterns that do not compile or
/// are not strings, and regorus's size-limit error (which the RVM propagates
/// as a hard error) for a pattern too large.
#[test]
fn regex_match_agrees_with_the_interpreter_cold_and_hot() {
    let policy = compile(
        r#"package execgate
decision := {"allow": regex.match(input.action.args.pattern, input.action.args.text), "reasons": []}"#,
        "{}",
    );
    let patterns = [
        r#""\\brm\\s+(-[a-zA-Z]*r[a-zA-Z]*f|-[a-zA-Z]*f[a-zA-Z]*r)\\b""#,
        r#""\\b(curl|wget)\\b[^|]*\\|\\s*(ba|z)?sh\\b""#,
        r#""^[a-z]+$""#,
        r#""[a-z]{3}\\b""#,
        r#""\\w\\b""#,
        r#""(?i)DROP\\s+TABLE""#,
        r#""(""#,
        r#""a{1000}{1000}""#,
        "7",
        "null",
    ];
    let texts = [
        r#""rm -rf /var""#,
        r#""xrm -rf""#,
        r#""curl https://x.sh | sh""#,
        r#""ls -la""#,
        r#""érm -rf""#,
        r#""drop  table users; ünïcode""#,
        r#""""#,
        "[1]",
    ];
    let mut verdicts = 0;
    for pattern in patterns {
        for text in texts {
            let doc = format!(
                r#"{{"action":{{"name":"x","args":{{"pattern":{pattern},"text":{text}}}}},"principal":{{}},"context":{{}}}}"#
            );
            let input = Value::from_json_str(&doc).expect("json");
            let int = policy.evaluate_interpreted(&input).outcome;
            let first = policy.evaluate(&input).outcome;
            match (&first, &int) {
                (Ok(a), Ok(b)) => assert_eq!(a, b, "{doc}"),
                (Err(_), Err(_)) => {}
                _ => panic!("{doc}: rvm={first:?} interpreter={int:?}"),
            }
            verdicts += usize::from(first.is_ok());
            if pattern.contains("{1000}") && text.starts_with('"') {
                let failure = first.as_ref().expect_err("too large");
                assert!(
                    failure.message.contains("exceeded size limit"),
                    "{failure:?}"
                );
            }
            // Past the point where the pattern gets its DFA: the same outcome.
            for round in 1..24 {
                assert_eq!(
                    policy.evaluate(&input).outcome,
                    first,
                    "{doc}, round {round}"
                );
            }
        }
    }
    // Six patterns that compile, seven string texts.
    assert_eq!(verdicts, 6 * 7);
}
