//! Stream-name patterns: which streams a tenant's clients, and one client's token, may join.
//!
//! A pattern is a stream name in which `*` stands for any run of characters (none included),
//! anchored at both ends: `room-*` matches `room-` and `room-42`, not `my-room-42`; `*` matches
//! every name. No other character is special, so a pattern never needs escaping for the
//! stream names iii allows.
//!
//! Matching splits the pattern at its stars and finds each literal piece leftmost, in order:
//! with only `*` that greedy search is exact, and it costs one substring search per piece, so
//! a name of any length is matched in time linear in the name times the (bounded) number of
//! pieces, with no backtracking for a hostile pattern to blow up. Patterns come from the
//! config and from client tokens, so both their length and their count are bounded.

use serde::{Deserialize, Serialize};
use std::fmt;

/// The longest pattern accepted, in bytes.
pub const MAX_PATTERN_BYTES: usize = 256;
/// The most patterns one list (a tenant's, or one token's) may hold.
pub const MAX_PATTERNS: usize = 64;

/// Why a pattern or a list of patterns was refused; the message says what to change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PatternError(pub String);

impl fmt::Display for PatternError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for PatternError {}

/// Checks one pattern: not empty, at most [`MAX_PATTERN_BYTES`], no control characters.
pub fn check_pattern(pattern: &str) -> Result<(), PatternError> {
    if pattern.is_empty() {
        return Err(PatternError(
            "a stream pattern is empty; write a stream name, `prefix-*`, or `*` for all".into(),
        ));
    }
    if pattern.len() > MAX_PATTERN_BYTES {
        return Err(PatternError(format!(
            "a stream pattern is {} bytes; at most {MAX_PATTERN_BYTES} are accepted",
            pattern.len()
        )));
    }
    if pattern.chars().any(char::is_control) {
        return Err(PatternError(
            "a stream pattern contains a control character; use printable characters only".into(),
        ));
    }
    Ok(())
}

/// Does `name` match `pattern` (`*` for any run of characters, anchored at both ends)?
pub fn matches(pattern: &str, name: &str) -> bool {
    let mut pieces = pattern.split('*');
    // `split` yields at least one piece: the text before the first star.
    let first = pieces.next().unwrap_or_default();
    let Some(rest) = name.strip_prefix(first) else {
        return false;
    };
    let mut middle: Vec<&str> = pieces.collect();
    let Some(last) = middle.pop() else {
        // No star: the pattern is a plain name.
        return rest.is_empty();
    };
    let Some(mut rest) = rest.strip_suffix(last) else {
        return false;
    };
    for piece in middle.into_iter().filter(|p| !p.is_empty()) {
        match rest.find(piece) {
            Some(at) => rest = &rest[at + piece.len()..],
            None => return false,
        }
    }
    true
}

/// A checked list of stream patterns; a name is allowed when any pattern matches it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "Vec<String>", into = "Vec<String>")]
pub struct StreamPatterns(Vec<String>);

impl StreamPatterns {
    /// Every stream: `["*"]`.
    pub fn all() -> Self {
        StreamPatterns(vec!["*".into()])
    }

    /// Checks each pattern and the count (at most [`MAX_PATTERNS`]).
    pub fn new(patterns: Vec<String>) -> Result<Self, PatternError> {
        if patterns.len() > MAX_PATTERNS {
            return Err(PatternError(format!(
                "{} stream patterns are given; at most {MAX_PATTERNS} are accepted: \
                 merge names that share a prefix into one `prefix-*` pattern",
                patterns.len()
            )));
        }
        for p in &patterns {
            check_pattern(p)?;
        }
        Ok(StreamPatterns(patterns))
    }

    pub fn allows(&self, stream: &str) -> bool {
        self.0.iter().any(|p| matches(p, stream))
    }

    pub fn as_slice(&self) -> &[String] {
        &self.0
    }
}

impl Default for StreamPatterns {
    fn default() -> Self {
        StreamPatterns::all()
    }
}

impl TryFrom<Vec<String>> for StreamPatterns {
    type Error = PatternError;
    fn try_from(patterns: Vec<String>) -> Result<Self, PatternError> {
        StreamPatterns::new(patterns)
    }
}

impl From<StreamPatterns> for Vec<String> {
    fn from(p: StreamPatterns) -> Vec<String> {
        p.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_names_match_only_themselves() {
        assert!(matches("chat", "chat"));
        assert!(!matches("chat", "chat2"));
        assert!(!matches("chat", "chа")); // Cyrillic a
        assert!(!matches("chat", "mychat"));
        assert!(!matches("chat", ""));
    }

    #[test]
    fn star_is_anchored_and_may_be_empty() {
        assert!(matches("room-*", "room-"));
        assert!(matches("room-*", "room-42"));
        assert!(!matches("room-*", "room"));
        assert!(!matches("room-*", "my-room-42"));
        assert!(matches("*-log", "a-log"));
        assert!(matches("*-log", "-log"));
        assert!(!matches("*-log", "a-log2"));
        assert!(matches("*", ""));
        assert!(matches("*", "anything at all"));
        assert!(matches("**", "x"));
    }

    #[test]
    fn inner_stars_find_pieces_in_order_without_overlap() {
        assert!(matches("a*b*c", "abc"));
        assert!(matches("a*b*c", "a-b-b-c"));
        assert!(!matches("a*b*c", "acb"));
        assert!(matches("*ab*ab*", "abab"));
        assert!(!matches("*ab*ab*", "aba"));
        // The prefix and suffix may not share characters: `a*a` needs two a's.
        assert!(!matches("a*a", "a"));
        assert!(matches("a*a", "aa"));
        assert!(!matches("ab*ba", "aba"));
        // Multi-byte characters around the star.
        assert!(matches("é*ü", "éxü"));
        assert!(matches("é*ü", "éü"));
        assert!(!matches("é*ü", "é"));
    }

    #[test]
    fn a_hostile_pattern_is_matched_without_backtracking() {
        // A backtracking matcher retries every split of the a's; here each piece is one search.
        let pattern = format!("{}*b*", "*a".repeat(100));
        let name = "a".repeat(1 << 20);
        assert!(!matches(&pattern, &name));
        assert!(matches(&pattern, &format!("{name}b")));
    }

    #[test]
    fn pattern_length_is_bounded_at_the_limit() {
        let at = "x".repeat(MAX_PATTERN_BYTES);
        assert!(check_pattern(&at).is_ok());
        let over = "x".repeat(MAX_PATTERN_BYTES + 1);
        let err = check_pattern(&over).unwrap_err();
        assert!(err.0.contains("257 bytes"), "{err}");
        // Bytes, not characters: 128 two-byte characters are at the limit, one more is over.
        assert!(check_pattern(&"é".repeat(MAX_PATTERN_BYTES / 2)).is_ok());
        assert!(check_pattern(&format!("{}x", "é".repeat(MAX_PATTERN_BYTES / 2))).is_err());
    }

    #[test]
    fn empty_and_control_patterns_are_refused() {
        assert!(check_pattern("").is_err());
        assert!(check_pattern("chat\n").is_err());
        assert!(check_pattern("ch\0at").is_err());
    }

    #[test]
    fn pattern_count_is_bounded_at_the_limit() {
        let list = |n: usize| (0..n).map(|i| format!("s{i}")).collect::<Vec<_>>();
        let at = StreamPatterns::new(list(MAX_PATTERNS)).unwrap();
        assert!(at.allows("s63"));
        assert!(!at.allows("s64"));
        let err = StreamPatterns::new(list(MAX_PATTERNS + 1)).unwrap_err();
        assert!(err.0.contains("65 stream patterns"), "{err}");
        // An empty list is valid and allows nothing.
        assert!(!StreamPatterns::new(vec![]).unwrap().allows("chat"));
    }

    #[test]
    fn deserializing_checks_the_patterns() {
        let ok: StreamPatterns = serde_json::from_str(r#"["chat","room-*"]"#).unwrap();
        assert!(ok.allows("room-1") && ok.allows("chat") && !ok.allows("other"));
        let err = serde_json::from_str::<StreamPatterns>(r#"["chat",""]"#).unwrap_err();
        assert!(err.to_string().contains("empty"), "{err}");
        assert_eq!(serde_json::to_string(&ok).unwrap(), r#"["chat","room-*"]"#);
    }
}
