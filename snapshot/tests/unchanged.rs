//! Files the previous snapshot shows unchanged are not read again, and no change is
//! missed for it.

mod common;

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::{fingerprint, make_tree};
use deployctl_snapshot::snapshot::RACY_MARGIN;
use deployctl_snapshot::*;

fn newest_ctime(root: &Path) -> SystemTime {
    let mut newest = UNIX_EPOCH;
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for e in fs::read_dir(&dir).unwrap() {
            let e = e.unwrap();
            let m = fs::symlink_metadata(e.path()).unwrap();
            let c = UNIX_EPOCH + Duration::new(m.ctime() as u64, m.ctime_nsec() as u32);
            newest = newest.max(c);
            if m.is_dir() {
                stack.push(e.path());
            }
        }
    }
    newest
}

/// Waits until the clock is past every file's ctime by the racy margin: only then does a
/// snapshot count as proof that the files it read were settled.
fn wait_until_settled(root: &Path) {
    let settled = newest_ctime(root) + RACY_MARGIN + Duration::from_millis(20);
    while SystemTime::now() < settled {
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn snap(repo: &Repository, root: &Path, read_all: bool) -> SnapshotReport {
    repo.snapshot(
        &Source::new("shop", "db", "r"),
        &Method::Files {
            root: root.to_path_buf(),
        },
        &SnapshotOptions {
            read_unchanged_files: read_all,
            ..SnapshotOptions::default()
        },
        &NoProgress,
    )
    .unwrap()
}

#[test]
fn unchanged_files_are_reused_without_reading_and_every_change_is_caught() {
    let dir = tempfile::tempdir().unwrap();
    let (data, back) = (dir.path().join("data"), dir.path().join("back"));
    make_tree(&data, 5);
    let files = fingerprint(&data)
        .values()
        .filter(|v| v.starts_with("file"))
        .count() as u64;
    let repo = Repository::open_or_init(
        Arc::new(FsStore::new(dir.path().join("repo")).unwrap()),
        None,
    )
    .unwrap();

    // Files written just before a snapshot are read again by the next one (racy margin).
    let first = snap(&repo, &data, false);
    let again = snap(&repo, &data, false);
    assert_eq!(again.unchanged_files, 0, "{again:?}");

    wait_until_settled(&data);
    let settled = snap(&repo, &data, false);
    assert_eq!(settled.unchanged_files, 0, "{settled:?}");
    let skipped = snap(&repo, &data, false);
    assert_eq!(skipped.unchanged_files, files, "{skipped:?}");
    assert_eq!(skipped.info.meta.total_size, first.info.meta.total_size);

    // A change that keeps size and mtime (content rewritten, mtime set back) changes the
    // ctime: read again. A new file is read.
    let victim = data.join("a/b/f2-100.bin");
    let mtime = fs::metadata(&victim).unwrap().modified().unwrap();
    let mut content = fs::read(&victim).unwrap();
    content[0] ^= 0xff;
    fs::write(&victim, &content).unwrap();
    fs::File::options()
        .write(true)
        .open(&victim)
        .unwrap()
        .set_modified(mtime)
        .unwrap();
    fs::write(data.join("new-file"), b"new").unwrap();
    let changed = snap(&repo, &data, false);
    assert_eq!(changed.unchanged_files, files - 1, "{changed:?}");
    repo.restore(
        changed.info.id,
        &Method::Files { root: back.clone() },
        &RestoreOptions::default(),
        &NoProgress,
    )
    .unwrap();
    assert_eq!(fingerprint(&back), fingerprint(&data));
    assert_eq!(fs::read(back.join("a/b/f2-100.bin")).unwrap(), content);
    repo.verify(changed.info.id, &NoProgress).unwrap();

    // Asked to, it reads everything.
    let all = snap(&repo, &data, true);
    assert_eq!(all.unchanged_files, 0, "{all:?}");
    assert_eq!(all.info.meta.total_size, changed.info.meta.total_size);
}

/// A StatefulSet's replicas are one component with a volume each; their snapshots
/// interleave. Each replica's next snapshot still finds its own previous one.
#[test]
fn each_replica_finds_its_own_previous_snapshot_among_its_siblings() {
    let dir = tempfile::tempdir().unwrap();
    let replicas = [dir.path().join("data-0"), dir.path().join("data-1")];
    for (i, r) in replicas.iter().enumerate() {
        // The same layout and sizes, different content.
        make_tree(r, 40 + i as u64);
    }
    let files = fingerprint(&replicas[0])
        .values()
        .filter(|v| v.starts_with("file"))
        .count() as u64;
    let repo = Repository::open_or_init(
        Arc::new(FsStore::new(dir.path().join("repo")).unwrap()),
        None,
    )
    .unwrap();
    for r in &replicas {
        wait_until_settled(r);
    }
    // Taken after settling, so the next ones can trust them.
    snap(&repo, &replicas[0], false);
    snap(&repo, &replicas[1], false);
    // Replica 1's snapshot is the newest of the component, yet replica 0 reuses its own.
    let again0 = snap(&repo, &replicas[0], false);
    assert_eq!(again0.unchanged_files, files, "{again0:?}");
    let again1 = snap(&repo, &replicas[1], false);
    assert_eq!(again1.unchanged_files, files, "{again1:?}");

    // And nothing of one replica ends up in the other's snapshot.
    let back = dir.path().join("back");
    repo.restore(
        again0.info.id,
        &Method::Files { root: back.clone() },
        &RestoreOptions::default(),
        &NoProgress,
    )
    .unwrap();
    assert_eq!(fingerprint(&back), fingerprint(&replicas[0]));
}
