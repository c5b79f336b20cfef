//! The state machine as a picture: Graphviz dot or Mermaid text, drawn from `TRANSITIONS`.
//!
//! Interface:
//! - `mermaid()` and `dot()` render the table the server runs, so a diagram in a lesson can
//!   never drift from the code (a test compares them).
//! - `states_main(args)` is `smtplab states [--dot|--mermaid]`.
//!
//! Standards: RFC 5321 §4.1.4, RFC 5321 §3.3

use crate::session::{StateName, Transition, Trigger, TRANSITIONS};

/// Edges with the same ends drawn once, labelled with every trigger, in table order.
fn edges() -> Vec<(StateName, StateName, Vec<String>)> {
    let mut edges: Vec<(StateName, StateName, Vec<String>)> = Vec::new();
    for Transition { from, on, to, .. } in TRANSITIONS {
        let label = match on {
            Trigger::Command(verb) => verb.name().to_string(),
            Trigger::EndOfData => "end of data".to_string(),
            Trigger::LastChunk => "last chunk".to_string(),
            Trigger::SaslResponse => "SASL response".to_string(),
        };
        match edges.iter_mut().find(|(f, t, _)| f == from && t == to) {
            Some((_, _, labels)) => labels.push(label),
            None => edges.push((*from, *to, vec![label])),
        }
    }
    edges
}

// ANCHOR: mermaid
/// Mermaid `stateDiagram-v2` text (renders on common code hosts).
pub fn mermaid() -> String {
    let mut out = String::from("stateDiagram-v2\n    [*] --> Connected: 220 greeting\n");
    for (from, to, labels) in edges() {
        out.push_str(&format!("    {from:?} --> {to:?}: {}\n", labels.join(", ")));
    }
    out.push_str("    Closed --> [*]\n");
    out
}
// ANCHOR_END: mermaid

/// Graphviz dot text (`smtplab states --dot | dot -Tpng > states.png`).
pub fn dot() -> String {
    let mut out =
        String::from("digraph smtp_session {\n    rankdir=LR;\n    start [shape=point];\n");
    out.push_str("    start -> Connected [label=\"220 greeting\"];\n");
    for (from, to, labels) in edges() {
        out.push_str(&format!(
            "    {from:?} -> {to:?} [label=\"{}\"];\n",
            labels.join(", ")
        ));
    }
    out.push_str("}\n");
    out
}

/// `smtplab states [--dot|--mermaid]`: Mermaid unless `--dot` is given.
pub fn states_main(args: &[String]) -> i32 {
    match args.first().map(String::as_str) {
        None | Some("--mermaid") => print!("{}", mermaid()),
        Some("--dot") => print!("{}", dot()),
        Some("--pop3") => print!("{}", crate::pop3::mermaid()),
        Some(other) => {
            eprintln!("smtplab states: unknown option {other}; use --dot, --mermaid or --pop3");
            return 2;
        }
    }
    0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_state_appears() {
        let text = mermaid();
        for state in [
            "Connected",
            "Greeted",
            "MailGiven",
            "RcptGiven",
            "Data",
            "Closed",
        ] {
            assert!(text.contains(state), "{state}");
        }
        assert!(text.contains("RcptGiven --> Data: DATA"));
        assert!(dot().contains("Data -> Greeted [label=\"end of data\"]"));
    }
}
