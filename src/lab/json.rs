//! Just enough JSON for the live view: objects of strings, written, never parsed.
//!
//! Interface:
//! - `string(text)` is a JSON string literal. Besides `"` and `\` it escapes every control
//!   character and `<`, `>`, `&`, U+2028, U+2029, so no student byte can end a string, a line
//!   of the event stream, or (should a literal ever land in HTML) a tag.
//! - `object(pairs)`, `array(items)`, `session(..)` and `snapshot(..)` put literals together.
//!
//! Standards: none

use std::fmt::Write;

/// `text` as a JSON string literal, safe inside an event stream line and inside HTML.
pub fn string(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            c if c.is_control() || matches!(c, '<' | '>' | '&' | '\u{2028}' | '\u{2029}') => {
                let _ = write!(out, "\\u{:04x}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// `{"key":"value",...}` with every value a string.
pub fn object(pairs: &[(&str, &str)]) -> String {
    let fields: Vec<String> = pairs
        .iter()
        .map(|(key, value)| format!("{}:{}", string(key), string(value)))
        .collect();
    format!("{{{}}}", fields.join(","))
}

/// `[a,b,...]` of values already in JSON.
pub fn array<S: AsRef<str>>(items: &[S]) -> String {
    let items: Vec<&str> = items.iter().map(AsRef::as_ref).collect();
    format!("[{}]", items.join(","))
}

/// One session of a snapshot: its string fields, whether it closed, its last move and lines
/// (both already JSON).
pub fn session(fields: &[(&str, &str)], closed: bool, last_move: &str, lines: &[&str]) -> String {
    let head = object(fields);
    let head = head.trim_end_matches('}');
    format!(
        "{head},\"closed\":{closed},\"last\":{last_move},\"lines\":{}}}",
        array(lines)
    )
}

/// `{"kind":"snapshot","seq":N,"sessions":[...]}`.
pub fn snapshot(seq: u64, sessions: &[String]) -> String {
    format!(
        "{{\"kind\":\"snapshot\",\"seq\":{seq},\"sessions\":{}}}",
        array(sessions)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn student_bytes_cannot_leave_their_string() {
        assert_eq!(
            string("a\"b\\c\nd</script>\u{1}\u{2028}"),
            r#""a\"b\\c\nd\u003c/script\u003e\u0001\u2028""#
        );
        assert_eq!(object(&[("k", "v"), ("n", "")]), r#"{"k":"v","n":""}"#);
        assert_eq!(
            session(&[("id", "S1")], true, "null", &["{}"]),
            r#"{"id":"S1","closed":true,"last":null,"lines":[{}]}"#
        );
        assert_eq!(
            snapshot(3, &[]),
            r#"{"kind":"snapshot","seq":3,"sessions":[]}"#
        );
    }
}
