//! Visible text: the one place that decides which characters a terminal could act on instead
//! of showing, and writes them as escapes, so a student's bytes can never retitle, clear or
//! reorder the teacher's screen.
//!
//! Interface:
//! - `is_hidden(c)`: a control character (C0 but TAB, DEL, C1), a line or paragraph separator,
//!   or a format character such as a bidirectional override.
//! - `escape(bytes)`: the transcript notation: `{CR}` `{TAB}` `{NUL}`, `{xHH}` for each byte of
//!   a hidden character or of a byte that is not UTF-8, `{{` for `{`.
//! - `sanitize(text)`: the same escapes for hidden characters only, for text that is already
//!   in that notation or is a plain listing (`queue`, `mx`); line ends are kept.
//!
//! Standards: RFC 5321 §2.3.8, Appendix D

/// Format characters a terminal or an editor acts on invisibly: zero-width characters, the
/// bidirectional marks, embeddings, overrides and isolates (Unicode's Bidi_Control), word joiners
/// and invisible operators, the byte order mark, interlinear annotation, and the tag characters.
const FORMAT_RANGES: &[(char, char)] = &[
    ('\u{061C}', '\u{061C}'),
    ('\u{180E}', '\u{180E}'),
    ('\u{200B}', '\u{200F}'),
    ('\u{2028}', '\u{202E}'),
    ('\u{2060}', '\u{206F}'),
    ('\u{FEFF}', '\u{FEFF}'),
    ('\u{FFF9}', '\u{FFFB}'),
    ('\u{E0000}', '\u{E007F}'),
];

// ANCHOR: is_hidden
/// Would a terminal act on this character rather than show it? TAB is shown as space.
pub fn is_hidden(c: char) -> bool {
    (c.is_control() && c != '\t')
        || FORMAT_RANGES
            .iter()
            .any(|&(low, high)| (low..=high).contains(&c))
}
// ANCHOR_END: is_hidden

/// `{xHH}` for each UTF-8 byte of `c`.
fn hex_bytes(c: char, out: &mut String) {
    let mut buffer = [0u8; 4];
    for byte in c.encode_utf8(&mut buffer).bytes() {
        out.push_str(&format!("{{x{byte:02X}}}"));
    }
}

/// The one escaping loop. `notation` adds what a transcript line needs on top of safety:
/// names for CR, TAB and NUL, and `{{` for a literal brace.
fn escaped(bytes: &[u8], notation: bool, keep_newlines: bool) -> String {
    let mut out = String::with_capacity(bytes.len());
    for chunk in bytes.utf8_chunks() {
        for c in chunk.valid().chars() {
            match c {
                '{' if notation => out.push_str("{{"),
                '\r' if notation => out.push_str("{CR}"),
                '\t' if notation => out.push_str("{TAB}"),
                '\0' if notation => out.push_str("{NUL}"),
                '\n' if keep_newlines => out.push('\n'),
                c if is_hidden(c) => hex_bytes(c, &mut out),
                c => out.push(c),
            }
        }
        for byte in chunk.invalid() {
            out.push_str(&format!("{{x{byte:02X}}}"));
        }
    }
    out
}

// ANCHOR: escape
/// Bytes in the transcript notation: every byte stays readable, and none reaches a terminal
/// as a control sequence.
pub fn escape(bytes: &[u8]) -> String {
    escaped(bytes, true, false)
}
// ANCHOR_END: escape

/// Text whose hidden characters become `{xHH}`; everything else, line ends included, is kept.
pub fn sanitize(text: &str) -> String {
    escaped(text.as_bytes(), false, true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn terminal_escapes_become_visible() {
        let attack = b"\x1b]0;OWNED\x07\x1b[2J";
        assert_eq!(escape(attack), "{x1B}]0;OWNED{x07}{x1B}[2J");
        assert_eq!(
            sanitize("a\u{85}b\u{2028}c"),
            "a{xC2}{x85}b{xE2}{x80}{xA8}c"
        );
        assert_eq!(
            sanitize("bidi \u{202E}txt.exe"),
            "bidi {xE2}{x80}{xAE}txt.exe"
        );
    }

    #[test]
    fn notation_names_and_braces() {
        assert_eq!(escape(b"a\r\t\0{b}"), "a{CR}{TAB}{NUL}{{b}");
        assert_eq!(escape(b"\xff\n"), "{xFF}{x0A}");
        assert_eq!(sanitize("{host}\tok\n"), "{host}\tok\n");
    }

    #[test]
    fn ordinary_text_is_untouched() {
        for text in ["HELO client.example", "Grüße, 日本", "250-SIZE 10485760"] {
            assert_eq!(escape(text.as_bytes()), text);
            assert_eq!(sanitize(text), text);
        }
        assert!(!is_hidden('é'));
        assert!(is_hidden('\u{7f}'));
        assert!(is_hidden('\u{9b}'));
        assert!(is_hidden('\u{2066}'));
    }
}
