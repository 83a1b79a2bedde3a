//! Checkpoints as both sites name them: a point in a VPG's one sequence, its time and tag,
//! and which tags are acceptable.

use serde::{Deserialize, Serialize};

/// Why `tag` cannot name a checkpoint, if it cannot: it must not be empty, hold control
/// characters (they would rewrite an operator's terminal), or read as a checkpoint
/// selector (`latest`, a sequence number).
pub fn tag_problem(tag: &str) -> Option<String> {
    if tag.is_empty() {
        return Some("a tagged checkpoint needs a non-empty tag".into());
    }
    if tag.chars().any(char::is_control) {
        return Some(format!(
            "checkpoint tag {tag:?} holds control characters; use printable text"
        ));
    }
    if tag == "latest" || tag.bytes().all(|b| b.is_ascii_digit()) || crate::size::parse_utc(tag).is_some() {
        return Some(format!(
            "checkpoint tag {tag:?} would read as a checkpoint selector (`latest`, a sequence number or a time); choose another"
        ));
    }
    if tag.len() > ferry_journal::format::TAG_BYTES_MAX {
        return Some(format!(
            "checkpoint tag is {} bytes; at most {}",
            tag.len(),
            ferry_journal::format::TAG_BYTES_MAX
        ));
    }
    None
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, utoipa::ToSchema)]
pub struct CheckpointInfo {
    pub seq: u64,
    pub unix_ms: u64,
    pub tag: String,
    /// At a recovery site: the last failover test of this checkpoint, "pass at TIME" or
    /// "fail at TIME" (empty if never tested).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub tested: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checkpoint_tags_that_read_as_selectors_or_hold_control_characters_are_refused() {
        for bad in ["", "latest", "5", "0042", "a\nb", "\u{1b}[31mred", "tab\there"] {
            assert!(tag_problem(bad).is_some(), "{bad:?} must be refused");
        }
        assert!(tag_problem(&"x".repeat(257)).is_some());
        for good in [
            "before-upgrade",
            "v2.1",
            "5a",
            "latest-good",
            "tested at 12:00",
            &"x".repeat(256),
        ] {
            assert_eq!(tag_problem(good), None, "{good:?}");
        }
    }
}
