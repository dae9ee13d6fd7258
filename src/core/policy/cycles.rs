//! Refusing recursive policies at load, as OPA does.
//!
//! Rego forbids recursion, but regorus compiles `f(x) := f(x)` or
//! `a := b; b := a` and its RVM then recurses natively until the process
//! overflows its stack. So after parsing, every rule and function gets a node
//! in a dependency graph, with an edge to each rule it may refer to (by name in
//! its package, through `data.…`, or through an import), and any cycle is a
//! [`PolicyLoadError`] naming it.
//!
//! The graph over-approximates: a dynamic reference `data.pkg[x]` depends on
//! every rule under `data.pkg`, as in OPA. Names bound locally (function
//! arguments, `some`, `:=`, `every`) are not references to rules.

use std::collections::{BTreeMap, BTreeSet};

use regorus::unstable::{Expr, Literal, Parser, Query, Rule, RuleHead};
use regorus::Source;

use super::diagnose::load_error;
use crate::core::error::{PolicyLoadError, Result};

/// A rule (all its definitions) in the graph.
struct Node {
    file: String,
    line: u32,
    column: u32,
    /// Rule paths this rule refers to (not yet resolved to rules).
    refs: BTreeSet<String>,
}

/// Checks that no rule or function of `modules` depends on itself.
pub fn check(modules: &[(String, String)]) -> Result<()> {
    let mut nodes: BTreeMap<String, Node> = BTreeMap::new();
    for (name, text) in modules {
        let source =
            Source::from_contents(name.clone(), text.clone()).map_err(|e| load_error(name, &e))?;
        let mut parser = Parser::new(&source).map_err(|e| load_error(name, &e))?;
        parser.enable_rego_v1().map_err(|e| load_error(name, &e))?;
        let module = parser.parse().map_err(|e| load_error(name, &e))?;
        let package = static_path(&module.package.refr).unwrap_or_default();
        let package = format!("data.{package}");
        let mut aliases: BTreeMap<String, String> = BTreeMap::new();
        for import in &module.imports {
            let Some(path) = static_path(&import.refr) else {
                continue;
            };
            let alias = match &import.r#as {
                Some(span) => span.text().to_string(),
                None => path.rsplit('.').next().unwrap_or_default().to_string(),
            };
            aliases.insert(alias, path);
        }
        for rule in &module.policy {
            let (head, mut walker) = match rule.as_ref() {
                Rule::Spec { head, bodies, .. } => {
                    let mut w = Walker::default();
                    let refr = match head {
                        RuleHead::Compr { refr, assign, .. } => {
                            if let Some(a) = assign {
                                w.expr(&a.value);
                            }
                            refr
                        }
                        RuleHead::Set { refr, key, .. } => {
                            if let Some(k) = key {
                                w.expr(k);
                            }
                            refr
                        }
                        RuleHead::Func {
                            refr, args, assign, ..
                        } => {
                            for a in args {
                                w.bind_all(a);
                            }
                            if let Some(a) = assign {
                                w.expr(&a.value);
                            }
                            refr
                        }
                    };
                    for body in bodies {
                        if let Some(a) = &body.assign {
                            w.expr(&a.value);
                        }
                        w.query(&body.query);
                    }
                    (refr, w)
                }
                // A default value is a constant term: it refers to nothing.
                Rule::Default { refr, .. } => (refr, Walker::default()),
            };
            walker.expr_head(head);
            let Some(rule_path) = static_path(head) else {
                continue;
            };
            let path = format!("{package}.{rule_path}");
            let span = rule.span();
            let refs = walker.resolve(&package, &aliases);
            nodes
                .entry(path)
                .or_insert_with(|| Node {
                    file: name.clone(),
                    line: span.line,
                    column: span.col,
                    refs: BTreeSet::new(),
                })
                .refs
                .extend(refs);
        }
    }
    find_cycle(&nodes)
}

/// The static part of a reference (`a.b["c"]` is `a.b.c`; a dynamic index ends it).
fn static_path(expr: &Expr) -> Option<String> {
    match expr {
        Expr::Var { span, .. } => Some(span.text().to_string()),
        Expr::RefDot { refr, field, .. } => {
            static_path(refr).map(|p| format!("{p}.{}", field.0.text()))
        }
        Expr::RefBrack { refr, index, .. } => {
            let base = static_path(refr)?;
            match index.as_ref() {
                Expr::String { value, .. } | Expr::RawString { value, .. } => {
                    match value.as_string() {
                        Ok(s) => Some(format!("{base}.{s}")),
                        Err(_) => Some(base),
                    }
                }
                _ => Some(base),
            }
        }
        _ => None,
    }
}

/// Collects the references and local bindings of one rule.
#[derive(Default)]
struct Walker {
    refs: BTreeSet<String>,
    locals: BTreeSet<String>,
}

impl Walker {
    /// The head's own reference is the rule's name, but its dynamic parts
    /// (`p[x]`) are expressions.
    fn expr_head(&mut self, head: &Expr) {
        if let Expr::RefBrack { index, .. } = head {
            self.bind_all(index);
        }
    }

    fn bind_all(&mut self, expr: &Expr) {
        match expr {
            Expr::Var { span, .. } => {
                self.locals.insert(span.text().to_string());
            }
            Expr::Array { items, .. } | Expr::Set { items, .. } => {
                for i in items {
                    self.bind_all(i);
                }
            }
            Expr::Object { fields, .. } => {
                for (_, k, v) in fields {
                    self.expr(k);
                    self.bind_all(v);
                }
            }
            other => self.expr(other),
        }
    }

    fn query(&mut self, query: &Query) {
        for stmt in &query.stmts {
            match &stmt.literal {
                Literal::SomeVars { vars, .. } => {
                    for v in vars {
                        self.locals.insert(v.text().to_string());
                    }
                }
                Literal::SomeIn {
                    key,
                    value,
                    collection,
                    ..
                } => {
                    if let Some(k) = key {
                        self.bind_all(k);
                    }
                    self.bind_all(value);
                    self.expr(collection);
                }
                Literal::Expr { expr, .. } | Literal::NotExpr { expr, .. } => self.expr(expr),
                Literal::Every {
                    key,
                    value,
                    domain,
                    query,
                    ..
                } => {
                    if let Some(k) = key {
                        self.locals.insert(k.text().to_string());
                    }
                    self.locals.insert(value.text().to_string());
                    self.expr(domain);
                    self.query(query);
                }
            }
            for w in &stmt.with_mods {
                self.expr(&w.r#as);
            }
        }
    }

    fn expr(&mut self, expr: &Expr) {
        match expr {
            Expr::String { .. }
            | Expr::RawString { .. }
            | Expr::Number { .. }
            | Expr::Bool { .. }
            | Expr::Null { .. } => {}
            Expr::Var { span, .. } => {
                self.refs.insert(span.text().to_string());
            }
            Expr::Array { items, .. } | Expr::Set { items, .. } => {
                for i in items {
                    self.expr(i);
                }
            }
            Expr::Object { fields, .. } => {
                for (_, k, v) in fields {
                    self.expr(k);
                    self.expr(v);
                }
            }
            Expr::ArrayCompr { term, query, .. } | Expr::SetCompr { term, query, .. } => {
                self.query(query);
                self.expr(term);
            }
            Expr::ObjectCompr {
                key, value, query, ..
            } => {
                self.query(query);
                self.expr(key);
                self.expr(value);
            }
            Expr::Call { fcn, params, .. } => {
                if let Some(p) = static_path(fcn) {
                    self.refs.insert(p);
                }
                for p in params {
                    self.expr(p);
                }
            }
            Expr::UnaryExpr { expr, .. } => self.expr(expr),
            Expr::RefDot { .. } | Expr::RefBrack { .. } => {
                if let Some(p) = static_path(expr) {
                    self.refs.insert(p);
                }
                self.ref_indices(expr);
            }
            Expr::AssignExpr { op, lhs, rhs, .. } => {
                if matches!(op, regorus::unstable::AssignOp::ColEq) {
                    self.bind_all(lhs);
                } else {
                    self.expr(lhs);
                }
                self.expr(rhs);
            }
            Expr::BinExpr { lhs, rhs, .. }
            | Expr::BoolExpr { lhs, rhs, .. }
            | Expr::ArithExpr { lhs, rhs, .. } => {
                self.expr(lhs);
                self.expr(rhs);
            }
            Expr::Membership {
                key,
                value,
                collection,
                ..
            } => {
                if let Some(k) = key {
                    self.expr(k);
                }
                self.expr(value);
                self.expr(collection);
            }
        }
    }

    /// The dynamic indices inside a reference chain are expressions too.
    fn ref_indices(&mut self, expr: &Expr) {
        match expr {
            Expr::RefDot { refr, .. } => self.ref_indices(refr),
            Expr::RefBrack { refr, index, .. } => {
                self.ref_indices(refr);
                self.expr(index);
            }
            _ => {}
        }
    }

    /// Turns the names seen into absolute `data.…` paths.
    fn resolve(self, package: &str, aliases: &BTreeMap<String, String>) -> BTreeSet<String> {
        let mut out = BTreeSet::new();
        for r in self.refs {
            let (root, rest) = match r.split_once('.') {
                Some((root, rest)) => (root, Some(rest)),
                None => (r.as_str(), None),
            };
            if root == "input" || root == "_" || self.locals.contains(root) {
                continue;
            }
            let base = if root == "data" {
                "data".to_string()
            } else if let Some(target) = aliases.get(root) {
                target.clone()
            } else {
                format!("{package}.{root}")
            };
            out.insert(match rest {
                Some(rest) => format!("{base}.{rest}"),
                None => base,
            });
        }
        out
    }
}

/// Whether reference `r` may read rule `rule` (one is a prefix of the other at
/// a path boundary).
fn overlaps(r: &str, rule: &str) -> bool {
    let prefix =
        |a: &str, b: &str| b == a || (b.starts_with(a) && b.as_bytes().get(a.len()) == Some(&b'.'));
    prefix(r, rule) || prefix(rule, r)
}

fn find_cycle(nodes: &BTreeMap<String, Node>) -> Result<()> {
    let names: Vec<&String> = nodes.keys().collect();
    let index: BTreeMap<&str, usize> = names
        .iter()
        .enumerate()
        .map(|(i, n)| (n.as_str(), i))
        .collect();
    let edges: Vec<Vec<usize>> = names
        .iter()
        .map(|n| {
            let mut out: BTreeSet<usize> = BTreeSet::new();
            if let Some(node) = nodes.get(*n) {
                for r in &node.refs {
                    // References name a prefix of few rules; the graph is small.
                    for (target, &j) in &index {
                        if overlaps(r, target) {
                            out.insert(j);
                        }
                    }
                }
            }
            out.into_iter().collect()
        })
        .collect();
    // Iterative depth-first search: 0 unvisited, 1 on the path, 2 done.
    let mut state = vec![0u8; names.len()];
    for start in 0..names.len() {
        if state[start] != 0 {
            continue;
        }
        let mut path: Vec<(usize, usize)> = vec![(start, 0)];
        state[start] = 1;
        while let Some(&mut (node, ref mut next)) = path.last_mut() {
            if let Some(&succ) = edges[node].get(*next) {
                *next += 1;
                match state[succ] {
                    0 => {
                        state[succ] = 1;
                        path.push((succ, 0));
                    }
                    1 => {
                        let from = path.iter().position(|(n, _)| *n == succ).unwrap_or(0);
                        let mut chain: Vec<&str> = path[from..]
                            .iter()
                            .map(|(n, _)| names[*n].as_str())
                            .collect();
                        chain.push(names[succ].as_str());
                        let first = &nodes[names[succ]];
                        return Err(PolicyLoadError {
                            message: format!("recursion is not allowed: {}", chain.join(" -> ")),
                            file: Some(first.file.clone()),
                            line: Some(first.line),
                            column: Some(first.column),
                        }
                        .into());
                    }
                    _ => {}
                }
            } else {
                state[node] = 2;
                path.pop();
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cycle(rego: &str) -> Option<String> {
        check(&[("p.rego".into(), rego.into())])
            .err()
            .map(|e| e.to_string())
    }

    #[test]
    fn refuses_each_recursion_shape_and_names_it() {
        let e = cycle("package execgate\nf(x) := f(x)\ndecision := f(1)\n").unwrap();
        assert!(e.contains("data.execgate.f -> data.execgate.f"), "{e}");
        assert!(e.starts_with("p.rego:2:"), "{e}");
        let e = cycle("package execgate\na := b\nb := a\ndecision := a\n").unwrap();
        assert!(
            e.contains("data.execgate.a -> data.execgate.b -> data.execgate.a"),
            "{e}"
        );
        let e = cycle(
            "package execgate\nhelper(x) := g(x)\ng(x) := helper(x) if x > 0\ndecision := g(1)\n",
        )
        .unwrap();
        assert!(
            e.contains("data.execgate.g -> data.execgate.helper -> data.execgate.g"),
            "{e}"
        );
        let e = cycle("package execgate\nimport data.execgate as me\nx := me.y\ny := x\n").unwrap();
        assert!(e.contains("recursion"), "{e}");
        let e = cycle("package execgate\ns contains v if { some v in data.execgate.s }\n").unwrap();
        assert!(e.contains("data.execgate.s -> data.execgate.s"), "{e}");
    }

    #[test]
    fn accepts_locals_that_shadow_rule_names_and_non_recursive_chains() {
        assert_eq!(
            cycle(
                "package execgate\nr := 1\nf(r) := r + 1\ng(x) := y if { y := x }\ny := 2\n\
                 decision if { some r in [1]; f(r) == 2; every y in [1] { y > 0 } }\n\
                 deny contains m if { m := sprintf(\"%v\", [r]) }\n"
            ),
            None
        );
        assert_eq!(
            cycle("package execgate\na := b\nb := c\nc := 1\ndecision := a\n"),
            None
        );
    }
}
