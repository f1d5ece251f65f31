//! Swapping restored data into place by renames, with a journal so an interrupted swap is
//! rolled back.
//!
//! The swap works on the *contents* of a directory (a volume's mount point is never itself
//! renamed, and everything stays on one file system so every step is a `rename(2)`):
//!
//! 1. journal `moving-out`; move each outgoing live name into `.deployctl-old-*`;
//! 2. journal `moving-in`; move each staged name into the directory;
//! 3. sync the directory and delete the journal: that is the commit point;
//! 4. remove the old and staging directories.
//!
//! [`recover`] finds a journal left by a killed agent and undoes the swap: in `moving-in`
//! the incoming names present in the directory are the new ones (every outgoing name was
//! moved out first), so they go back to staging; then everything in the old directory goes
//! back. Either way the live data ends as it was before the swap.

use std::ffi::OsString;
use std::fs::{self, File};
use std::io::Write;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::{io_err, Result};
use crate::manifest::RESERVED_PREFIX;
use crate::methods::random_tag;

const JOURNAL: &str = ".deployctl-swap.json";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
enum SwapPhase {
    MovingOut,
    MovingIn,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Journal {
    staging: String,
    old: String,
    incoming: Vec<String>,
    phase: SwapPhase,
}

fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err("sync", dir))
}

fn write_journal(dir: &Path, j: &Journal) -> Result<()> {
    let tmp = dir.join(format!("{JOURNAL}.tmp"));
    let path = dir.join(JOURNAL);
    let mut f = File::create(&tmp).map_err(io_err("create", &tmp))?;
    f.write_all(&serde_json::to_vec(j).expect("journal serializes"))
        .map_err(io_err("write", &tmp))?;
    f.sync_all().map_err(io_err("sync", &tmp))?;
    fs::rename(&tmp, &path).map_err(io_err("rename", &path))?;
    sync_dir(dir)
}

/// Replaces the names `outgoing` of `dir` with the contents of `dir/staging`.
pub(crate) fn swap_in(
    dir: &Path,
    staging: &str,
    outgoing: &[OsString],
    incoming: &[OsString],
) -> Result<()> {
    let old = format!("{RESERVED_PREFIX}old-{}", random_tag());
    let old_dir = dir.join(&old);
    let staging_dir = dir.join(staging);
    fs::create_dir(&old_dir).map_err(io_err("mkdir", &old_dir))?;
    let mut journal = Journal {
        staging: staging.to_string(),
        old: old.clone(),
        incoming: incoming
            .iter()
            .map(|n| n.to_string_lossy().into_owned())
            .collect(),
        phase: SwapPhase::MovingOut,
    };
    write_journal(dir, &journal)?;
    for (i, name) in outgoing.iter().enumerate() {
        fs::rename(dir.join(name), old_dir.join(name))
            .map_err(io_err("move aside", dir.join(name)))?;
        if i == 0 {
            crate::testing::pause_point("swap-moving-out");
        }
    }
    journal.phase = SwapPhase::MovingIn;
    write_journal(dir, &journal)?;
    for (i, name) in incoming.iter().enumerate() {
        fs::rename(staging_dir.join(name), dir.join(name))
            .map_err(io_err("move into place", dir.join(name)))?;
        if i == 0 {
            crate::testing::pause_point("swap-moving-in");
        }
    }
    sync_dir(dir)?;
    fs::remove_file(dir.join(JOURNAL)).map_err(io_err("remove", dir.join(JOURNAL)))?;
    sync_dir(dir)?;
    // Committed; what follows is cleanup, and recover() finishes it if we die here.
    let _ = fs::remove_dir_all(&old_dir);
    let _ = fs::remove_dir_all(&staging_dir);
    Ok(())
}

/// Rolls back a swap interrupted in `dir` and removes leftover staging and old
/// directories. Returns true if a swap was rolled back. Restores call this first; an agent
/// may call it at startup for every data path it manages.
pub fn recover(dir: &Path) -> Result<bool> {
    let journal_path = dir.join(JOURNAL);
    let mut rolled_back = false;
    if let Ok(bytes) = fs::read(&journal_path) {
        let j: Journal = serde_json::from_slice(&bytes).map_err(|e| crate::error::Error::Io {
            op: "read swap journal",
            path: journal_path.clone(),
            source: std::io::Error::new(std::io::ErrorKind::InvalidData, e),
        })?;
        let old_dir = dir.join(&j.old);
        let staging_dir = dir.join(&j.staging);
        if j.phase == SwapPhase::MovingIn {
            fs::create_dir_all(&staging_dir).map_err(io_err("mkdir", &staging_dir))?;
            for name in &j.incoming {
                let live = dir.join(name);
                if live.symlink_metadata().is_ok() {
                    fs::rename(&live, staging_dir.join(name))
                        .map_err(io_err("move back to staging", &live))?;
                }
            }
        }
        if let Ok(items) = fs::read_dir(&old_dir) {
            for item in items {
                let name = item
                    .map_err(io_err("read directory", &old_dir))?
                    .file_name();
                fs::rename(old_dir.join(&name), dir.join(&name))
                    .map_err(io_err("move back", dir.join(&name)))?;
            }
        }
        sync_dir(dir)?;
        fs::remove_file(&journal_path).map_err(io_err("remove", &journal_path))?;
        sync_dir(dir)?;
        rolled_back = true;
        tracing::warn!(dir = %dir.display(), "rolled back an interrupted restore swap");
    }
    let _ = fs::remove_file(dir.join(format!("{JOURNAL}.tmp")));
    for item in fs::read_dir(dir)
        .map_err(io_err("read directory", dir))?
        .flatten()
    {
        let name = item.file_name().to_string_lossy().into_owned();
        let leftover = [
            format!("{RESERVED_PREFIX}staging-"),
            format!("{RESERVED_PREFIX}old-"),
        ]
        .iter()
        .any(|p| name.starts_with(p.as_str()));
        if leftover {
            fs::remove_dir_all(item.path()).map_err(io_err("remove leftover", item.path()))?;
        }
    }
    Ok(rolled_back)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn swap_replaces_contents_and_recover_cleans_up() {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path();
        fs::write(dir.join("a"), "old a").unwrap();
        fs::write(dir.join("gone"), "old").unwrap();
        let staging = format!("{RESERVED_PREFIX}staging-t");
        fs::create_dir(dir.join(&staging)).unwrap();
        fs::write(dir.join(&staging).join("a"), "new a").unwrap();
        fs::write(dir.join(&staging).join("b"), "new b").unwrap();
        swap_in(
            dir,
            &staging,
            &["a".into(), "gone".into()],
            &["a".into(), "b".into()],
        )
        .unwrap();
        assert_eq!(fs::read_to_string(dir.join("a")).unwrap(), "new a");
        assert_eq!(fs::read_to_string(dir.join("b")).unwrap(), "new b");
        assert!(!dir.join("gone").exists());
        assert_eq!(fs::read_dir(dir).unwrap().count(), 2);
        assert!(!recover(dir).unwrap());
    }

    #[test]
    fn recover_rolls_back_a_half_done_swap() {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path();
        // State after: moved out "a" and "x", moved in new "a", then killed.
        let old = format!("{RESERVED_PREFIX}old-t");
        let staging = format!("{RESERVED_PREFIX}staging-t");
        fs::create_dir(dir.join(&old)).unwrap();
        fs::create_dir(dir.join(&staging)).unwrap();
        fs::write(dir.join(&old).join("a"), "old a").unwrap();
        fs::write(dir.join(&old).join("x"), "old x").unwrap();
        fs::write(dir.join("a"), "new a").unwrap();
        fs::write(dir.join(&staging).join("b"), "new b").unwrap();
        let j = Journal {
            staging,
            old,
            incoming: vec!["a".into(), "b".into()],
            phase: SwapPhase::MovingIn,
        };
        write_journal(dir, &j).unwrap();
        assert!(recover(dir).unwrap());
        assert_eq!(fs::read_to_string(dir.join("a")).unwrap(), "old a");
        assert_eq!(fs::read_to_string(dir.join("x")).unwrap(), "old x");
        assert_eq!(
            fs::read_dir(dir).unwrap().count(),
            2,
            "only the old contents remain"
        );
    }
}

/// An exclusive `flock(2)` on a data directory, held by whoever reads or swaps its
/// contents (a snapshot, a restore): two agents on the same volume then run one after
/// the other, so a snapshot's start-up [`recover`] never undoes a restore's swap that is
/// still going. The lock is on the directory itself, so nothing is written into the
/// user's volume; it is released when dropped, or when the process dies.
#[derive(Debug)]
pub struct DataDirLock {
    _lock: nix::fcntl::Flock<File>,
}

/// What [`DataDirLock::try_lock`] found.
#[derive(Debug)]
pub enum TryLock {
    /// Locked: ours until dropped.
    Locked(DataDirLock),
    /// Another process (or another open of it) holds the lock.
    Busy,
}

impl DataDirLock {
    /// Takes the lock without waiting.
    pub fn try_lock(dir: &Path) -> Result<TryLock> {
        Self::take(dir, nix::fcntl::FlockArg::LockExclusiveNonblock)
    }

    /// Takes the lock, waiting as long as another holder keeps it.
    pub fn lock(dir: &Path) -> Result<DataDirLock> {
        match Self::take(dir, nix::fcntl::FlockArg::LockExclusive)? {
            TryLock::Locked(l) => Ok(l),
            TryLock::Busy => unreachable!("a blocking flock does not answer EWOULDBLOCK"),
        }
    }

    fn take(dir: &Path, arg: nix::fcntl::FlockArg) -> Result<TryLock> {
        let f = File::open(dir).map_err(io_err("open for locking", dir))?;
        match nix::fcntl::Flock::lock(f, arg) {
            Ok(l) => Ok(TryLock::Locked(DataDirLock { _lock: l })),
            Err((_, nix::errno::Errno::EWOULDBLOCK)) => Ok(TryLock::Busy),
            Err((_, e)) => Err(io_err("lock", dir)(std::io::Error::from(e))),
        }
    }
}

#[cfg(test)]
mod lock_tests {
    use super::*;

    #[test]
    fn a_second_holder_of_a_data_dir_waits_for_the_first() {
        let dir = tempfile::tempdir().unwrap();
        let TryLock::Locked(first) = DataDirLock::try_lock(dir.path()).unwrap() else {
            panic!("a free directory is locked at once");
        };
        assert!(
            matches!(DataDirLock::try_lock(dir.path()).unwrap(), TryLock::Busy),
            "a second agent on the same volume must wait"
        );
        drop(first);
        assert!(matches!(
            DataDirLock::try_lock(dir.path()).unwrap(),
            TryLock::Locked(_)
        ));
        assert_eq!(
            fs::read_dir(dir.path()).unwrap().count(),
            0,
            "nothing written into the volume"
        );
    }
}
