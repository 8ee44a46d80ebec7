//! A lenient look at a worker frame that serde_json could not read: not JSON, nested past
//! serde_json's depth limit of 128, or holding a lone UTF-16 surrogate escape such as
//! `"\ud83d"` (what JavaScript writes for a string cut in the middle of an emoji). Any of
//! these fails every serde parse of the whole frame, yet the caller waits for an answer: this
//! finds the top-level `type`, `invocation_id` and `function_id` strings so the engine can
//! still answer the call with an error instead of leaving it to its timeout.
//!
//! It walks the top-level object only and skips nested values by counting brackets, without
//! recursion, so any depth is fine. It stops at the first byte that breaks the grammar of the
//! top level, keeping what it found before it; a key inside a nested value never counts.

/// The fields of a frame's top level that an answer needs; None when absent or unreadable.
#[derive(Debug, Default, PartialEq)]
pub struct Envelope {
    pub kind: Option<String>,
    pub invocation_id: Option<String>,
    pub function_id: Option<String>,
}

pub fn envelope(text: &str) -> Envelope {
    let mut found = Envelope::default();
    let mut scanner = Scanner {
        bytes: text.as_bytes(),
        at: 0,
    };
    // A broken frame ends the walk; what was found before the break is kept.
    let _ = scanner.object(&mut found);
    found
}

/// How deep arrays and objects nest in `text` (0 for a scalar), counting brackets outside
/// strings. For JSON already known to be valid: it does not check the grammar.
pub fn depth(text: &str) -> usize {
    let (mut depth, mut deepest, mut in_string, mut escaped) = (0usize, 0, false, false);
    for &b in text.as_bytes() {
        if in_string {
            match b {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                deepest = deepest.max(depth);
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    deepest
}

struct Scanner<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl Scanner<'_> {
    fn peek(&self) -> Option<u8> {
        self.bytes.get(self.at).copied()
    }

    fn skip_whitespace(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t' | b'\n' | b'\r')) {
            self.at += 1;
        }
    }

    /// Consumes `byte` (after whitespace), or fails.
    fn expect(&mut self, byte: u8) -> Option<()> {
        self.skip_whitespace();
        (self.peek()? == byte).then(|| self.at += 1)
    }

    fn object(&mut self, found: &mut Envelope) -> Option<()> {
        self.expect(b'{')?;
        self.skip_whitespace();
        if self.peek()? == b'}' {
            return Some(());
        }
        loop {
            self.skip_whitespace();
            let key = self.string()?;
            self.expect(b':')?;
            self.skip_whitespace();
            let slot = match key.as_deref() {
                Some("type") => Some(&mut found.kind),
                Some("invocation_id") => Some(&mut found.invocation_id),
                Some("function_id") => Some(&mut found.function_id),
                _ => None,
            };
            match slot {
                // The last occurrence wins, as it does when serde_json builds a map.
                Some(slot) if self.peek()? == b'"' => *slot = self.string()?,
                Some(slot) => {
                    *slot = None;
                    self.skip_value()?;
                }
                None => self.skip_value()?,
            }
            self.skip_whitespace();
            match self.peek()? {
                b',' => self.at += 1,
                b'}' => return Some(()),
                _ => return None,
            }
        }
    }

    /// Reads a string at the cursor: None when the frame ends inside it, Some(None) when it
    /// cannot be text (a lone surrogate or a bad escape).
    fn string(&mut self) -> Option<Option<String>> {
        if self.peek()? != b'"' {
            return None;
        }
        self.at += 1;
        let mut out = Vec::new();
        let mut readable = true;
        loop {
            let byte = self.peek()?;
            self.at += 1;
            match byte {
                b'"' => break,
                b'\\' => match self.escape() {
                    Some(Ok(c)) => out.extend_from_slice(c.encode_utf8(&mut [0; 4]).as_bytes()),
                    Some(Err(())) => readable = false,
                    None => return None,
                },
                other => out.push(other),
            }
        }
        // The input is a &str and escapes decode to chars, so `out` is UTF-8.
        Some(readable.then(|| String::from_utf8(out).ok()).flatten())
    }

    /// Decodes the escape after a backslash; Err for one that is not a character.
    fn escape(&mut self) -> Option<Result<char, ()>> {
        let byte = self.peek()?;
        self.at += 1;
        let c = match byte {
            b'"' => '"',
            b'\\' => '\\',
            b'/' => '/',
            b'b' => '\u{8}',
            b'f' => '\u{c}',
            b'n' => '\n',
            b'r' => '\r',
            b't' => '\t',
            b'u' => return self.unicode_escape(),
            _ => return Some(Err(())),
        };
        Some(Ok(c))
    }

    fn unicode_escape(&mut self) -> Option<Result<char, ()>> {
        let Some(first) = self.hex4()? else {
            return Some(Err(()));
        };
        if !(0xD800..0xDC00).contains(&first) {
            // A lone trailing surrogate is not a char either.
            return Some(char::from_u32(first).ok_or(()));
        }
        // A leading surrogate counts only when a trailing one follows at once.
        if self.bytes.get(self.at..self.at + 2) != Some(b"\\u") {
            return Some(Err(()));
        }
        self.at += 2;
        let Some(second) = self.hex4()? else {
            return Some(Err(()));
        };
        if !(0xDC00..0xE000).contains(&second) {
            return Some(Err(()));
        }
        let c = 0x10000 + ((first - 0xD800) << 10) + (second - 0xDC00);
        Some(char::from_u32(c).ok_or(()))
    }

    /// Four hex digits: None at the end of the input, Some(None) when they are not hex.
    fn hex4(&mut self) -> Option<Option<u32>> {
        let digits = self.bytes.get(self.at..self.at + 4)?;
        self.at += 4;
        Some(
            std::str::from_utf8(digits)
                .ok()
                .and_then(|d| u32::from_str_radix(d, 16).ok()),
        )
    }

    /// Skips one value of any depth: a string, a bracketed value, or a bare word.
    fn skip_value(&mut self) -> Option<()> {
        match self.peek()? {
            b'"' => self.skip_string(),
            b'{' | b'[' => {
                let mut depth = 0usize;
                loop {
                    match self.peek()? {
                        b'"' => {
                            self.skip_string()?;
                            continue;
                        }
                        b'{' | b'[' => depth += 1,
                        b'}' | b']' => {
                            depth -= 1;
                            if depth == 0 {
                                self.at += 1;
                                return Some(());
                            }
                        }
                        _ => {}
                    }
                    self.at += 1;
                }
            }
            _ => {
                let start = self.at;
                while !matches!(
                    self.peek(),
                    None | Some(b',' | b'}' | b']' | b' ' | b'\t' | b'\n' | b'\r')
                ) {
                    self.at += 1;
                }
                (self.at > start).then_some(())
            }
        }
    }

    fn skip_string(&mut self) -> Option<()> {
        self.at += 1;
        loop {
            match self.peek()? {
                b'"' => {
                    self.at += 1;
                    return Some(());
                }
                b'\\' => self.at += 2,
                _ => self.at += 1,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn depth_counts_brackets_outside_strings() {
        for (text, deepest) in [
            ("1", 0),
            ("[]", 1),
            (r#"{"a":[{"b":[]}],"c":{}}"#, 4),
            (r#"["[[[", "\"[[", {"k\\":"]]]"}]"#, 2),
        ] {
            assert_eq!(depth(text), deepest, "{text}");
        }
    }

    fn env(kind: Option<&str>, id: Option<&str>, function: Option<&str>) -> Envelope {
        Envelope {
            kind: kind.map(str::to_owned),
            invocation_id: id.map(str::to_owned),
            function_id: function.map(str::to_owned),
        }
    }

    #[test]
    fn finds_the_top_level_fields_of_frames_serde_refuses() {
        let deep = format!(
            r#"{{"type":"invokefunction","invocation_id":"c-1","data":{}{}, "function_id":"f"}}"#,
            "[".repeat(10_000),
            "]".repeat(10_000)
        );
        assert!(serde_json::from_str::<serde_json::Value>(&deep).is_err());
        assert_eq!(
            envelope(&deep),
            env(Some("invokefunction"), Some("c-1"), Some("f"))
        );

        let surrogate = r#"{"type":"invokefunction","function_id":"stream::set","invocation_id":"c-2","data":{"text":"hi \ud83d"}}"#;
        assert!(serde_json::from_str::<serde_json::Value>(surrogate).is_err());
        assert_eq!(
            envelope(surrogate),
            env(Some("invokefunction"), Some("c-2"), Some("stream::set"))
        );
    }

    #[test]
    fn keys_inside_nested_values_and_strings_do_not_count() {
        let text = r#"{"data":{"invocation_id":"inner","x":["}\"]"]},"note":"\"invocation_id\":\"fake\"","invocation_id":"outer"}"#;
        assert_eq!(envelope(text), env(None, Some("outer"), None));
    }

    #[test]
    fn escapes_decode_and_pairs_combine() {
        let text = r#"{"invocation_id":"a\"b\\c\u00e9\ud83d\ude00","type" : "invokefunction" }"#;
        assert_eq!(
            envelope(text),
            env(Some("invokefunction"), Some("a\"b\\cé😀"), None)
        );
        // Keys may be escaped too.
        assert_eq!(
            envelope(r#"{"invocation\u005fid":"k"}"#),
            env(None, Some("k"), None)
        );
    }

    #[test]
    fn unreadable_values_are_left_out() {
        // A lone surrogate in the id itself: it cannot be echoed back, so there is none.
        for id in [
            r#""\ud83d""#,
            r#""\ude00x""#,
            r#""\ud83d\u0041""#,
            r#""\x""#,
            r#""\u12g4""#,
            "42",
            "null",
            r#"{"a":1}"#,
        ] {
            let text = format!(r#"{{"type":"invokefunction","invocation_id":{id}}}"#);
            assert_eq!(
                envelope(&text),
                env(Some("invokefunction"), None, None),
                "{id}"
            );
        }
    }

    #[test]
    fn a_broken_frame_keeps_what_came_before_the_break() {
        assert_eq!(
            envelope(r#"{"type":"invokefunction","invocation_id":"c-3","data":{"a":"#),
            env(Some("invokefunction"), Some("c-3"), None)
        );
        assert_eq!(
            envelope(r#"{"type":"invokefunction" "invocation_id":"c-4"}"#),
            env(Some("invokefunction"), None, None)
        );
        for text in [
            "",
            "[]",
            "nonsense",
            "{",
            r#"{"invocation_id""#,
            r#"{"invocation_id":"open"#,
            "{,}",
        ] {
            assert_eq!(envelope(text), Envelope::default(), "{text:?}");
        }
        assert_eq!(envelope("{}"), Envelope::default());
    }
}
