//! The `sqlite` method: a consistent copy of a live database through SQLite's online backup
//! API, made next to the database (same volume, room guaranteed by the data itself) and
//! then chunked like a file. Restore puts the file back and retires stale `-wal`, `-shm`
//! and `-journal` files, which would otherwise be replayed onto the restored database.

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::backup::{Backup, StepResult};
use rusqlite::{Connection, OpenFlags};

use crate::error::{io_err, Error, Result};
use crate::manifest::{Entry, EntryKind, RESERVED_PREFIX};
use crate::methods::{random_tag, Finisher};
use crate::snapshot::{Input, Prepared};

/// How long to wait, in all, for a writer holding the database locked (rollback-journal
/// mode; WAL readers are never blocked), and how long between attempts.
const BUSY_LIMIT: Duration = Duration::from_secs(60);
const BUSY_PAUSE: Duration = Duration::from_millis(20);

/// Name of the single entry of a sqlite snapshot.
pub(crate) const ENTRY: &str = "database";

/// Files SQLite keeps beside a database, which belong to the database being replaced.
pub(crate) fn companions(db: &Path) -> Vec<String> {
    let name = db
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    vec![
        name.clone(),
        format!("{name}-wal"),
        format!("{name}-shm"),
        format!("{name}-journal"),
    ]
}

fn sqlite_err(path: &Path) -> impl FnOnce(rusqlite::Error) -> Error + '_ {
    move |source| Error::Sqlite {
        path: path.to_path_buf(),
        source,
    }
}

/// Copies the database; the finisher removes the copy.
pub(crate) fn backup(db: &Path) -> Result<(Prepared, Finisher)> {
    let meta = fs::metadata(db).map_err(io_err("stat", db))?;
    let dir = db
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let copy: PathBuf = dir.join(format!("{RESERVED_PREFIX}backup-{}", random_tag()));
    let remove_copy = {
        let copy = copy.clone();
        move || {
            let _ = fs::remove_file(&copy);
            let _ = fs::remove_file(copy.with_extension("journal"));
        }
    };
    let run = || -> Result<()> {
        // No CREATE flag: a missing database is an error, not a new empty one.
        let src = Connection::open_with_flags(
            db,
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(sqlite_err(db))?;
        src.busy_timeout(Duration::from_secs(30))
            .map_err(sqlite_err(db))?;
        let mut dst = Connection::open(&copy).map_err(sqlite_err(&copy))?;
        let backup = Backup::new(&src, &mut dst).map_err(sqlite_err(db))?;
        // All pages in one step, under one read transaction: a consistent image even while
        // other connections write (a stepwise copy restarts whenever they do).
        // (`run_to_completion` insists on a positive step, hence the loop.)
        let mut waited = Duration::ZERO;
        loop {
            match backup.step(-1).map_err(sqlite_err(db))? {
                StepResult::Done => return Ok(()),
                StepResult::More => {}
                StepResult::Busy | StepResult::Locked if waited < BUSY_LIMIT => {
                    std::thread::sleep(BUSY_PAUSE);
                    waited += BUSY_PAUSE;
                }
                StepResult::Busy | StepResult::Locked => {
                    return Err(Error::Sqlite {
                        path: db.to_path_buf(),
                        source: rusqlite::Error::SqliteFailure(
                            rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_BUSY),
                            Some("database stayed locked".into()),
                        ),
                    })
                }
                _ => return Err(Error::Internal("unknown sqlite backup step result".into())),
            }
        }
    };
    if let Err(e) = run() {
        remove_copy();
        return Err(e);
    }
    let size = fs::metadata(&copy).map_err(io_err("stat", &copy))?.len();
    let entry = Entry {
        path: ENTRY.into(),
        kind: EntryKind::File,
        mode: meta.mode() & 0o7777,
        uid: meta.uid(),
        gid: meta.gid(),
        mtime_ns: None,
        size: 0,
        chunks: vec![],
        target: None,
        ctime_ns: None,
        inode: None,
        device: None,
    };
    let prepared = Prepared {
        entries: vec![entry],
        inputs: vec![(0, Input::Path(copy))],
        total: size,
    };
    Ok((
        prepared,
        Box::new(move |_| {
            remove_copy();
            Ok(())
        }),
    ))
}
