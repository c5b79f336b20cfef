//! A state machine as data: a table of rows (from, trigger, to, RFC section), and its drawing.
//!
//! Interface:
//! - `Transition<S, T>` is one row; SMTP (`session.rs`) and POP3 (`pop3.rs`) each keep one
//!   `const` table of them, and refuse whatever their table does not list.
//! - `find(table, from, on)` is the legal move, if there is one; `allows(table, from, on, to)`
//!   says whether a move is the table's, or a stay (what each session's `step` asserts).
//! - `mermaid(table, ..)` and `dot(table, ..)` draw a table, rows with the same ends merged
//!   into one labelled edge, so a diagram is always the table the server runs; `edges` is that
//!   merge, for other drawings (the SVG of `web/svg.rs`).
//!
//! Standards: RFC 5321 §4.1.4, RFC 1939 §3

use std::fmt::Debug;

/// One legal move. A refused command leaves the state as it was (RFC 5321 §4.1.4).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Transition<S, T> {
    pub from: S,
    pub on: T,
    pub to: S,
    pub rfc: &'static str,
}

/// The legal move `on` a trigger `from` a state, if the table has one.
pub fn find<S: PartialEq, T: PartialEq>(
    table: &[Transition<S, T>],
    from: S,
    on: T,
) -> Option<&Transition<S, T>> {
    table.iter().find(|t| t.from == from && t.on == on)
}

/// Is `from → to` a move `table` lists `on` this trigger? Staying is always allowed: a refused
/// input changes nothing (RFC 5321 §4.1.4). `None` is an input with no row at all.
pub fn allows<S: Copy + PartialEq, T: PartialEq>(
    table: &[Transition<S, T>],
    from: S,
    on: Option<T>,
    to: S,
) -> bool {
    let row = on.and_then(|on| find(table, from, on));
    from == to || row.is_some_and(|t| t.to == to)
}

/// Rows with the same ends as one edge, labelled with every trigger, in table order.
pub fn edges<S: Copy + PartialEq, T>(
    table: &[Transition<S, T>],
    label: impl Fn(&T) -> String,
) -> Vec<(S, S, Vec<String>)> {
    let mut edges: Vec<(S, S, Vec<String>)> = Vec::new();
    for t in table {
        match edges
            .iter_mut()
            .find(|(from, to, _)| *from == t.from && *to == t.to)
        {
            Some((_, _, labels)) => labels.push(label(&t.on)),
            None => edges.push((t.from, t.to, vec![label(&t.on)])),
        }
    }
    edges
}

// ANCHOR: mermaid
/// Mermaid `stateDiagram-v2` text (renders on common code hosts). `start` is the first state
/// and `greeting` labels the way in; `end` is the state whose way out is the end of the session.
pub fn mermaid<S: Copy + PartialEq + Debug, T>(
    table: &[Transition<S, T>],
    (start, greeting, end): (S, &str, S),
    label: impl Fn(&T) -> String,
) -> String {
    let mut out = format!("stateDiagram-v2\n    [*] --> {start:?}: {greeting}\n");
    for (from, to, labels) in edges(table, label) {
        out.push_str(&format!("    {from:?} --> {to:?}: {}\n", labels.join(", ")));
    }
    out.push_str(&format!("    {end:?} --> [*]\n"));
    out
}
// ANCHOR_END: mermaid

/// Graphviz dot text (`smtplab states --dot | dot -Tpng > states.png`).
pub fn dot<S: Copy + PartialEq + Debug, T>(
    table: &[Transition<S, T>],
    (start, greeting): (S, &str),
    label: impl Fn(&T) -> String,
) -> String {
    let mut out = String::from("digraph session {\n    rankdir=LR;\n    start [shape=point];\n");
    out.push_str(&format!("    start -> {start:?} [label=\"{greeting}\"];\n"));
    for (from, to, labels) in edges(table, label) {
        out.push_str(&format!(
            "    {from:?} -> {to:?} [label=\"{}\"];\n",
            labels.join(", ")
        ));
    }
    out.push_str("}\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Clone, Copy, PartialEq)]
    enum S {
        A,
        B,
    }

    const TABLE: &[Transition<S, &str>] = &[
        Transition {
            from: S::A,
            on: "go",
            to: S::B,
            rfc: "RFC 0 §1",
        },
        Transition {
            from: S::A,
            on: "jump",
            to: S::B,
            rfc: "RFC 0 §1",
        },
        Transition {
            from: S::B,
            on: "stay",
            to: S::B,
            rfc: "RFC 0 §2",
        },
    ];

    #[test]
    fn rows_with_the_same_ends_share_an_edge() {
        let text = mermaid(TABLE, (S::A, "hello", S::B), |on| on.to_string());
        assert_eq!(text, "stateDiagram-v2\n    [*] --> A: hello\n    A --> B: go, jump\n    B --> B: stay\n    B --> [*]\n");
        assert!(dot(TABLE, (S::A, "hello"), |on| on.to_string())
            .contains("A -> B [label=\"go, jump\"];"));
        assert_eq!(find(TABLE, S::B, "stay").map(|t| t.rfc), Some("RFC 0 §2"));
        assert_eq!(find(TABLE, S::B, "go"), None);
        assert!(allows(TABLE, S::A, Some("go"), S::B));
        assert!(allows(TABLE, S::A, None, S::A));
        assert!(!allows(TABLE, S::A, None, S::B));
        assert!(!allows(TABLE, S::B, Some("go"), S::A));
    }
}
