//! The state machine as SVG, drawn by the server from the same table `smtplab states` draws.
//!
//! Interface:
//! - `diagram(table, start, prefix, label)` lays the states out in columns by their distance
//!   from `start` (so the usual path reads left to right) and draws every edge of
//!   `machine::edges`: a curve between two states, a loop for a move that stays.
//!   Each state is `<g class="state" id="{prefix}-{State}">`, each edge
//!   `<g class="move" data-from=".." data-to="..">`; the page's script lights them up.
//! - `escape(text)` makes text safe inside HTML or SVG, between tags or in a quoted attribute.
//!
//! Standards: RFC 5321 §4.1.4, RFC 1939 §3

use std::fmt::{Debug, Write};

use crate::machine::{self, Transition};

const BOX_WIDTH: f64 = 124.0;
const BOX_HEIGHT: f64 = 36.0;
const COLUMN: f64 = 200.0;
const ROW: f64 = 160.0;
const MARGIN: f64 = 90.0;
/// How far a curve bends away from the straight line, so `a → b` and `b → a` do not overlap.
const BEND: f64 = 26.0;
/// Triggers per line of an edge label.
const LABELS_PER_LINE: usize = 3;

/// `& < > " '` as character references: text that can never become markup.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// Each state's column (its distance from `start`, breadth first) and row within the column.
fn layout<S: Copy + PartialEq>(edges: &[(S, S, Vec<String>)], start: S) -> Vec<(S, usize, usize)> {
    let mut placed: Vec<(S, usize, usize)> = vec![(start, 0, 0)];
    let mut next = 0;
    while next < placed.len() {
        let (from, column, _) = placed[next];
        for (_, to, _) in edges.iter().filter(|(f, _, _)| *f == from) {
            if !placed.iter().any(|(s, _, _)| s == to) {
                let row = placed.iter().filter(|(_, c, _)| *c == column + 1).count();
                placed.push((*to, column + 1, row));
            }
        }
        next += 1;
    }
    placed
}

fn centre(column: usize, row: usize) -> (f64, f64) {
    (MARGIN + column as f64 * COLUMN, MARGIN + row as f64 * ROW)
}

/// Where the line from the box's centre towards `(dx, dy)` leaves the box.
fn border((x, y): (f64, f64), (dx, dy): (f64, f64)) -> (f64, f64) {
    let tx = if dx == 0.0 {
        f64::MAX
    } else {
        BOX_WIDTH / 2.0 / dx.abs()
    };
    let ty = if dy == 0.0 {
        f64::MAX
    } else {
        BOX_HEIGHT / 2.0 / dy.abs()
    };
    let t = tx.min(ty);
    (x + dx * t, y + dy * t)
}

/// The path of an edge and where its label goes.
fn curve(a: (f64, f64), b: (f64, f64)) -> (String, (f64, f64)) {
    if a == b {
        let (x, top) = (a.0, a.1 - BOX_HEIGHT / 2.0);
        let path = format!(
            "M{:.0},{top:.0} C{:.0},{:.0} {:.0},{:.0} {:.0},{top:.0}",
            x - 24.0,
            x - 44.0,
            top - 52.0,
            x + 44.0,
            top - 52.0,
            x + 24.0
        );
        return (path, (x, top - 48.0));
    }
    let (dx, dy) = (b.0 - a.0, b.1 - a.1);
    let length = (dx * dx + dy * dy).sqrt();
    let bend = BEND * (1.0 + length / COLUMN / 2.0);
    let control = (
        (a.0 + b.0) / 2.0 - dy / length * bend,
        (a.1 + b.1) / 2.0 + dx / length * bend,
    );
    let start = border(a, (control.0 - a.0, control.1 - a.1));
    let end = border(b, (control.0 - b.0, control.1 - b.1));
    let path = format!(
        "M{:.0},{:.0} Q{:.0},{:.0} {:.0},{:.0}",
        start.0, start.1, control.0, control.1, end.0, end.1
    );
    let middle = (
        (start.0 + 2.0 * control.0 + end.0) / 4.0,
        (start.1 + 2.0 * control.1 + end.1) / 4.0,
    );
    (path, middle)
}

// ANCHOR: diagram
/// The SVG of `table`: one box per state, one labelled curve per pair of ends.
pub fn diagram<S: Copy + PartialEq + Debug, T>(
    table: &[Transition<S, T>],
    start: S,
    prefix: &str,
    label: impl Fn(&T) -> String,
) -> String {
    let edges = machine::edges(table, label);
    let states = layout(&edges, start);
    let columns = states.iter().map(|(_, c, _)| c + 1).max().unwrap_or(1);
    let rows = states.iter().map(|(_, _, r)| r + 1).max().unwrap_or(1);
    let (right, bottom) = centre(columns - 1, rows - 1);
    let (width, height) = (
        right + BOX_WIDTH / 2.0 + 30.0,
        bottom + BOX_HEIGHT / 2.0 + 30.0,
    );
    let mut svg = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" class=\"diagram\" id=\"{prefix}-diagram\" \
         viewBox=\"0 0 {:.0} {:.0}\" role=\"img\" aria-label=\"{prefix} state machine\">\
         <defs><marker id=\"{prefix}-arrow\" viewBox=\"0 0 10 10\" refX=\"9\" refY=\"5\" \
         markerWidth=\"9\" markerHeight=\"9\" markerUnits=\"userSpaceOnUse\" orient=\"auto\"><path d=\"M0,0 L10,5 L0,10 z\"/>\
         </marker></defs>",
        width, height,
    );
    let at = |state: S| {
        states
            .iter()
            .find(|(s, _, _)| *s == state)
            .map_or((0.0, 0.0), |(_, c, r)| centre(*c, *r))
    };
    for (from, to, labels) in &edges {
        let (path, (x, y)) = curve(at(*from), at(*to));
        let _ = write!(
            svg,
            "<g class=\"move\" data-from=\"{from:?}\" data-to=\"{to:?}\"><title>{}</title>\
             <path d=\"{path}\" marker-end=\"url(#{prefix}-arrow)\"/>{}</g>",
            escape(&format!("{from:?} → {to:?}: {}", labels.join(", "))),
            label_text((x, y), labels),
        );
    }
    for (state, column, row) in &states {
        let (x, y) = centre(*column, *row);
        let _ = write!(
            svg,
            "<g class=\"state\" id=\"{prefix}-{state:?}\" data-state=\"{state:?}\">\
             <rect x=\"{:.0}\" y=\"{:.0}\" width=\"{BOX_WIDTH:.0}\" height=\"{BOX_HEIGHT:.0}\" \
             rx=\"8\"/><text x=\"{x:.0}\" y=\"{:.0}\">{}</text></g>",
            x - BOX_WIDTH / 2.0,
            y - BOX_HEIGHT / 2.0,
            y + 5.0,
            escape(&format!("{state:?}")),
        );
    }
    svg.push_str("</svg>");
    svg
}
// ANCHOR_END: diagram

/// An edge's triggers, a few per line, centred on `(x, y)`.
fn label_text((x, y): (f64, f64), labels: &[String]) -> String {
    let lines: Vec<String> = labels
        .chunks(LABELS_PER_LINE)
        .map(|chunk| chunk.join(", "))
        .collect();
    let top = y - (lines.len() as f64 - 1.0) * 6.0;
    let spans: String = lines
        .iter()
        .enumerate()
        .map(|(i, line)| {
            format!(
                "<tspan x=\"{x:.0}\" y=\"{:.0}\">{}</tspan>",
                top + i as f64 * 12.0,
                escape(line)
            )
        })
        .collect();
    format!("<text class=\"label\">{spans}</text>")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::smtp::session::{StateName, TRANSITIONS};

    #[test]
    fn every_state_and_edge_of_the_table_is_drawn() {
        let svg = diagram(
            TRANSITIONS,
            StateName::Connected,
            "smtp",
            crate::smtp::session::label,
        );
        for state in [
            "Connected",
            "Greeted",
            "MailGiven",
            "RcptGiven",
            "Data",
            "Closed",
        ] {
            assert!(svg.contains(&format!("id=\"smtp-{state}\"")), "{state}");
        }
        let edges = machine::edges(TRANSITIONS, crate::smtp::session::label);
        assert_eq!(svg.matches("class=\"move\"").count(), edges.len());
        assert!(svg.contains("data-from=\"RcptGiven\" data-to=\"Data\""));
        assert!(!svg.contains("NaN"));
    }

    #[test]
    fn the_usual_path_reads_left_to_right() {
        let edges = machine::edges(TRANSITIONS, crate::smtp::session::label);
        let placed = layout(&edges, StateName::Connected);
        let column = |s| placed.iter().find(|(x, _, _)| *x == s).map(|p| p.1);
        assert_eq!(column(StateName::Connected), Some(0));
        assert_eq!(column(StateName::Greeted), Some(1));
        assert_eq!(column(StateName::RcptGiven), Some(3));
        assert_eq!(column(StateName::Data), Some(4));
    }

    #[test]
    fn markup_is_escaped() {
        assert_eq!(
            escape("<script>\"a\" & 'b'"),
            "&lt;script&gt;&quot;a&quot; &amp; &#39;b&#39;"
        );
    }
}
