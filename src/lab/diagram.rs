//! The state machine as a picture: Graphviz dot or Mermaid text, drawn from `TRANSITIONS`.
//!
//! Interface:
//! - `mermaid()` and `dot()` render the table the server runs, so a diagram in a lesson can
//!   never drift from the code (a test compares them).
//! - `states_main(args)` is `smtplab states [--dot|--mermaid]`; `main.rs` draws `--pop3` and
//!   `--imap` from their own tables, as POP3 and IMAP report to the live board here in `lab/`.
//!
//! Standards: RFC 5321 §4.1.4, §3.3

use crate::machine;
use crate::smtp::session::{label, StateName, TRANSITIONS};

// ANCHOR: smtp_mermaid
/// Mermaid `stateDiagram-v2` text of the SMTP table (renders on common code hosts).
pub fn mermaid() -> String {
    machine::mermaid(
        TRANSITIONS,
        (StateName::Connected, "220 greeting", StateName::Closed),
        label,
    )
}
// ANCHOR_END: smtp_mermaid

/// Graphviz dot text (`smtplab states --dot | dot -Tpng > states.png`).
pub fn dot() -> String {
    machine::dot(TRANSITIONS, (StateName::Connected, "220 greeting"), label)
}

/// `smtplab states [--dot|--mermaid]`: Mermaid unless `--dot` is given.
pub fn states_main(args: &[String]) -> i32 {
    match args.first().map(String::as_str) {
        None | Some("--mermaid") => print!("{}", mermaid()),
        Some("--dot") => print!("{}", dot()),
        Some(other) => {
            eprintln!(
                "smtplab states: unknown option {other}; use --dot, --mermaid, --pop3 or --imap"
            );
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
