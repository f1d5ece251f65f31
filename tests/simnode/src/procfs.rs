//! Small `/proc` readers: finding a process's children (the kernel here has no
//! `/proc/<pid>/task/<pid>/children`), its command line, and whether it has left the
//! node's network namespace yet.

/// Pids whose parent is `parent`, by scanning `/proc/*/stat`.
pub(crate) fn children_of(parent: u32) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| parent_of(*pid) == Some(parent))
        .collect()
}

/// The parent pid from `/proc/<pid>/stat`.
pub(crate) fn parent_of(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_stat_ppid(&stat)
}

/// The fourth field of a `stat` line; the second (the command name, in parentheses) may
/// contain spaces and parentheses, so parse from the last `)`.
fn parse_stat_ppid(stat: &str) -> Option<u32> {
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(1)?.parse().ok()
}

/// The arguments of `pid`'s command line.
#[cfg(test)]
pub(crate) fn cmdline(pid: u32) -> Option<Vec<String>> {
    let raw = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    Some(
        raw.split(|b| *b == 0)
            .filter(|s| !s.is_empty())
            .map(|s| String::from_utf8_lossy(s).into_owned())
            .collect(),
    )
}

/// The command name of `pid` (`/proc/<pid>/comm`).
pub(crate) fn comm(pid: u32) -> Option<String> {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .ok()
        .map(|s| s.trim_end().to_owned())
}

/// Whether `pid` is in a different network namespace than this process.
pub(crate) fn has_own_netns(pid: u32) -> bool {
    let ours = std::fs::read_link("/proc/self/ns/net");
    let theirs = std::fs::read_link(format!("/proc/{pid}/ns/net"));
    matches!((ours, theirs), (Ok(a), Ok(b)) if a != b)
}

/// Whether `pid` exists (a zombie counts until reaped).
#[cfg(test)]
pub(crate) fn exists(pid: u32) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_with_odd_command_names() {
        assert_eq!(parse_stat_ppid("12 (sh) S 7 12 12 0"), Some(7));
        assert_eq!(parse_stat_ppid("12 (a) b) (c) R 99 1 1"), Some(99));
        assert_eq!(parse_stat_ppid("garbage"), None);
    }

    #[test]
    fn finds_own_parent() {
        let me = std::process::id();
        assert!(parent_of(me).is_some());
        assert!(exists(me));
        assert!(cmdline(me).is_some_and(|c| !c.is_empty()));
    }
}
