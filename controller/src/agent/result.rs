//! What an agent run reports: one JSON object, printed as the last line of stdout and
//! written to the pod's termination message, where the controller reads it back.

use serde::{Deserialize, Serialize};

use super::job::AgentOp;

/// The kubelet keeps at most 4096 bytes of a termination message; the encoded result
/// stays under this, so the closing brace is never cut off.
pub const MAX_ENCODED_BYTES: usize = 3072;

/// Messages are cut to this many bytes before encoding (escaping can still grow them,
/// which [`AgentResult::to_json_line`] handles).
pub const MAX_MESSAGE_BYTES: usize = 2048;

/// Engine error categories that mean the snapshot itself is unusable (as opposed to an
/// unreachable store, a wrong key or a local I/O error).
const CORRUPTION_CATEGORIES: &[&str] = &[
    "snapshot_not_found",
    "manifest_corrupt",
    "manifest_unsafe",
    "chunk_missing",
    "chunk_corrupt",
];

/// The outcome of one agent run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AgentResult {
    /// What was done.
    pub operation: AgentOp,
    /// Whether it succeeded (the process then exits 0).
    pub ok: bool,
    /// The snapshot taken, restored or verified (64 hex digits).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest: Option<String>,
    /// Bytes of file content in the snapshot.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size_bytes: Option<u64>,
    /// Regular files in the snapshot.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub files: Option<u64>,
    /// Chunks referenced (snapshot, restore) or distinct chunks re-hashed (verify).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chunks: Option<u64>,
    /// Bytes of data the snapshot added to the repository.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub new_bytes: Option<u64>,
    /// What the snapshot added to the store, as stored (its new chunks after
    /// compression and encryption).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stored_bytes: Option<u64>,
    /// What the whole repository takes in its store after the run (snapshot, verify,
    /// prune), as stored. Unset when the measurement failed (the run itself still
    /// counts).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repository_bytes: Option<u64>,
    /// Objects the repository holds after the run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repository_objects: Option<u64>,
    /// Size of the volume under a filesystem repository (`statvfs`); unset for S3.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub total_bytes: Option<u64>,
    /// Free bytes of that volume for an unprivileged writer (`f_bavail`); unset for S3.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub available_bytes: Option<u64>,
    /// Wall time of the run. Always set by the agent; optional on the wire so a result
    /// from an agent that died early can still be read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration_seconds: Option<f64>,
    /// What happened, for people: the failure, or a summary (prune).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// A bounded failure category (the engine's, or `usage`, `key`, `source_mismatch`),
    /// for metric labels and Event reasons; set only when `ok` is false.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub category: Option<String>,
}

impl AgentResult {
    /// A result with only the operation, outcome and duration set.
    pub fn new(operation: AgentOp, ok: bool, duration_seconds: f64) -> Self {
        AgentResult {
            operation,
            ok,
            digest: None,
            size_bytes: None,
            files: None,
            chunks: None,
            new_bytes: None,
            stored_bytes: None,
            repository_bytes: None,
            repository_objects: None,
            total_bytes: None,
            available_bytes: None,
            duration_seconds: Some(duration_seconds),
            message: None,
            category: None,
        }
    }

    /// True when the run failed because the snapshot's data failed verification: a
    /// verify then marks the snapshot corrupt, while a store outage must not.
    pub fn is_corruption(&self) -> bool {
        !self.ok
            && self
                .category
                .as_deref()
                .is_some_and(|c| CORRUPTION_CATEGORIES.contains(&c))
    }

    /// One line of JSON, at most [`MAX_ENCODED_BYTES`] long: the message is shortened
    /// until it fits (a path full of characters JSON escapes can grow sixfold).
    pub fn to_json_line(&self) -> String {
        let mut r = self.clone();
        if let Some(m) = &mut r.message {
            truncate(m, MAX_MESSAGE_BYTES);
        }
        loop {
            let line = serde_json::to_string(&r).expect("an AgentResult always serializes");
            let Some(m) = r
                .message
                .as_mut()
                .filter(|_| line.len() > MAX_ENCODED_BYTES)
            else {
                return line;
            };
            let shorter = m.len() / 2;
            truncate(m, shorter);
        }
    }
}

/// Cuts `s` to at most `max` bytes on a character boundary, marking the cut.
fn truncate(s: &mut String, max: usize) {
    if s.len() <= max {
        return;
    }
    let mut end = max.saturating_sub('…'.len_utf8());
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s.truncate(end);
    s.push('…');
}

/// Reads an agent's result from a termination message (or the agent's stdout): the last
/// non-empty line must be an [`AgentResult`].
pub fn parse_termination_message(text: &str) -> Result<AgentResult, String> {
    let Some(line) = text.lines().map(str::trim).rfind(|l| !l.is_empty()) else {
        return Err("the agent left no result (empty termination message)".into());
    };
    serde_json::from_str(line).map_err(|e| {
        let mut excerpt = line.to_string();
        truncate(&mut excerpt, 200);
        format!("the agent's termination message is not a result ({e}): {excerpt}")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_in_camel_case() {
        let mut r = AgentResult::new(AgentOp::Snapshot, true, 1.5);
        r.digest = Some("ab".repeat(32));
        r.size_bytes = Some(10);
        r.new_bytes = Some(4);
        let line = r.to_json_line();
        assert!(line.contains(r#""operation":"snapshot""#), "{line}");
        assert!(line.contains(r#""sizeBytes":10"#), "{line}");
        assert!(line.contains(r#""newBytes":4"#), "{line}");
        assert!(!line.contains("message"), "{line}");
        let text = format!("progress\n{line}\n\n");
        assert_eq!(parse_termination_message(&text).unwrap(), r);
    }

    #[test]
    fn long_messages_are_cut_to_fit() {
        let mut r = AgentResult::new(AgentOp::Restore, false, 0.0);
        r.message = Some("é\u{1}".repeat(5000));
        let line = r.to_json_line();
        assert!(line.len() <= MAX_ENCODED_BYTES, "{}", line.len());
        let back = parse_termination_message(&line).unwrap();
        assert!(back.message.unwrap().ends_with('…'));
    }

    #[test]
    fn a_result_with_every_figure_at_its_largest_still_fits() {
        let mut r = AgentResult::new(AgentOp::Snapshot, true, f64::MAX);
        r.digest = Some("ab".repeat(32));
        for field in [
            &mut r.size_bytes,
            &mut r.files,
            &mut r.chunks,
            &mut r.new_bytes,
            &mut r.stored_bytes,
            &mut r.repository_bytes,
            &mut r.repository_objects,
            &mut r.total_bytes,
            &mut r.available_bytes,
        ] {
            *field = Some(u64::MAX);
        }
        r.category = Some("x".repeat(40));
        r.message = Some("\u{1}".repeat(MAX_MESSAGE_BYTES));
        let line = r.to_json_line();
        assert!(line.len() <= MAX_ENCODED_BYTES, "{}", line.len());
        let back = parse_termination_message(&line).unwrap();
        assert_eq!(back.repository_bytes, Some(u64::MAX));
        assert_eq!(back.available_bytes, Some(u64::MAX));
        assert!(line.contains(r#""storedBytes":"#), "{line}");
        assert!(line.contains(r#""repositoryBytes":"#), "{line}");
    }

    #[test]
    fn garbage_and_empty_are_refused() {
        assert!(parse_termination_message("  \n")
            .unwrap_err()
            .contains("no result"));
        let e = parse_termination_message("panicked at x").unwrap_err();
        assert!(e.contains("not a result"), "{e}");
    }

    #[test]
    fn corruption_is_told_apart_from_outages() {
        let mut r = AgentResult::new(AgentOp::Verify, false, 0.0);
        r.category = Some("chunk_corrupt".into());
        assert!(r.is_corruption());
        r.category = Some("store".into());
        assert!(!r.is_corruption());
    }
}
