//! Names a peer chose (function ids, message types), as logs and error messages show them.
//!
//! A worker may send a megabyte as a function id or a message type; a log line that prints
//! it whole writes that megabyte per frame. So a long name is cut, at a character boundary,
//! and marked with how much was left out. Metric labels have their own bound (see
//! `metrics::families::Bounded`), and ids past [`MAX_FUNCTION_ID_BYTES`] are never registered.

use std::borrow::Cow;

/// The longest name shown whole.
pub const MAX_SHOWN_BYTES: usize = 128;

/// The longest function id a worker may register: the longest a metric label keeps.
pub const MAX_FUNCTION_ID_BYTES: usize = crate::metrics::MAX_LABEL_BYTES;

/// `name`, cut to [`MAX_SHOWN_BYTES`] with a marker (`…(+N bytes)`) when longer.
pub fn shown(name: &str) -> Cow<'_, str> {
    if name.len() <= MAX_SHOWN_BYTES {
        return Cow::Borrowed(name);
    }
    let mut end = MAX_SHOWN_BYTES;
    while !name.is_char_boundary(end) {
        end -= 1;
    }
    Cow::Owned(format!("{}…(+{} bytes)", &name[..end], name.len() - end))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_names_are_cut_with_a_marker() {
        let at = "a".repeat(MAX_SHOWN_BYTES);
        assert_eq!(shown(&at), at.as_str());
        let past = "a".repeat(MAX_SHOWN_BYTES + 1);
        assert_eq!(shown(&past), format!("{at}…(+1 bytes)"));
        // Never cut inside a character: 'é' is two bytes.
        let accented = format!("{}é", "a".repeat(MAX_SHOWN_BYTES - 1));
        assert_eq!(shown(&accented), format!("{}…(+2 bytes)", "a".repeat(127)));
    }
}
