//! Text for people and models: peer fields are written by other parties, so characters
//! that hide or reorder text (controls, bidi overrides, zero-width and tag characters,
//! NUL) and the line and paragraph separators U+2028/U+2029 are shown escaped, never raw.
//! `structuredContent` keeps the exact values; only text is escaped.

use std::borrow::Cow;

use unicode_general_category::{GeneralCategory, get_general_category};

/// Whether `c` is shown escaped: general category Cc (controls, NUL) or Cf (format:
/// bidi overrides and isolates, zero-width characters, tag characters, the BOM), and
/// U+2028/U+2029.
pub fn is_hidden(c: char) -> bool {
    matches!(
        get_general_category(c),
        GeneralCategory::Control
            | GeneralCategory::Format
            | GeneralCategory::LineSeparator
            | GeneralCategory::ParagraphSeparator
    )
}

/// Prose (a summary line, an error message) with every hidden character written as
/// `\u{...}` (Rust's notation: `\u{202e}`). Newlines are escaped too: the caller adds its
/// own line breaks after escaping.
pub fn escape_prose(text: &str) -> Cow<'_, str> {
    if !text.chars().any(is_hidden) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 16);
    for c in text.chars() {
        if is_hidden(c) {
            out.push_str(&format!("\\u{{{:x}}}", u32::from(c)));
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

/// Compact serialized JSON with every hidden character written as a JSON escape
/// (`\u202e`, a surrogate pair beyond U+FFFF), so the text stays valid JSON that parses
/// back to the exact values. In compact JSON (serde_json's `to_string`) such characters
/// only occur inside strings, where an escape means the same character; pretty-printed
/// JSON has layout newlines outside strings, which this would escape too: escape it line
/// by line instead.
pub fn escape_json(json: &str) -> Cow<'_, str> {
    if !json.chars().any(is_hidden) {
        return Cow::Borrowed(json);
    }
    let mut out = String::with_capacity(json.len() + 16);
    for c in json.chars() {
        if is_hidden(c) {
            let mut units = [0u16; 2];
            for unit in c.encode_utf16(&mut units) {
                out.push_str(&format!("\\u{unit:04x}"));
            }
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    const HOSTILE: &str = "a\u{202e}b\u{2028}c\u{2029}d\u{0}e\u{200b}f\u{e0041}g\u{7f}h\u{85}i";

    /// Prose gets `\u{...}` for each hidden character and nothing raw.
    #[test]
    fn prose_is_escaped() {
        assert_eq!(
            escape_prose(HOSTILE),
            "a\\u{202e}b\\u{2028}c\\u{2029}d\\u{0}e\\u{200b}f\\u{e0041}g\\u{7f}h\\u{85}i"
        );
        assert!(matches!(escape_prose("plain ünïcödé 🚀"), Cow::Borrowed(_)));
    }

    /// Escaped JSON holds no hidden character and still parses to the exact value.
    #[test]
    fn json_is_escaped_and_still_exact() {
        let value = json!({"metadata": {"note": HOSTILE}, "tab": "x\ty"});
        let escaped = escape_json(&value.to_string()).into_owned();
        assert!(!escaped.chars().any(is_hidden), "{escaped}");
        assert!(escaped.contains("\\u202e") && escaped.contains("\\udb40\\udc41"));
        let back: Value = serde_json::from_str(&escaped).expect("valid JSON");
        assert_eq!(back, value);
    }
}
