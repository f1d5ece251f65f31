//! A volume that fills up in the middle of a snapshot or a restore: the repository stays
//! consistent and the live data untouched. Each test mounts a small tmpfs in a mount
//! namespace of its own thread (`unshare(CLONE_NEWNS)` is per thread; the engine's worker
//! threads, spawned from it, inherit it), so nothing is visible outside the test and
//! nothing is left mounted. Needs root, as the rest of the suite does (CI runs as root).

mod common;

use std::fs;
use std::path::Path;
use std::sync::Arc;

use common::{fingerprint, Rng};
use deployctl_snapshot::testing::with_small_volume;
use deployctl_snapshot::*;

fn snap(repo: &Repository, root: &Path) -> Result<SnapshotReport> {
    repo.snapshot(
        &Source::new("shop", "db", "r"),
        &Method::Files {
            root: root.to_path_buf(),
        },
        &SnapshotOptions::default(),
        &NoProgress,
    )
}

#[test]
fn a_repository_volume_that_fills_up_mid_snapshot_stays_consistent() {
    let dir = tempfile::tempdir().unwrap();
    let (data, repo_dir) = (dir.path().join("data"), dir.path().join("repo"));
    fs::create_dir_all(&data).unwrap();
    let mut rng = Rng(21);
    fs::write(data.join("small"), rng.bytes(300_000)).unwrap();
    with_small_volume(&repo_dir, 4 << 20, || {
        let repo =
            Repository::open_or_init(Arc::new(FsStore::new(&repo_dir).unwrap()), None).unwrap();
        let first = snap(&repo, &data).unwrap();
        // Random bytes do not compress: 8 MiB cannot fit in what is left of 4 MiB.
        fs::write(data.join("big"), rng.bytes(8 << 20)).unwrap();
        let live = fingerprint(&data);
        let e = snap(&repo, &data).unwrap_err();
        assert_eq!(e.category(), "no_space", "{e}");
        assert!(e.to_string().contains("No space left on device"), "{e}");
        assert_eq!(
            fingerprint(&data),
            live,
            "the data snapshotted is only read"
        );

        // Consistent: the earlier snapshot is the only one, and whole.
        let snaps = repo.list_snapshots().unwrap();
        assert_eq!(
            snaps.iter().map(|s| s.id).collect::<Vec<_>>(),
            [first.info.id]
        );
        repo.verify(first.info.id, &NoProgress).unwrap();
        // The failed snapshot's chunks are garbage a gc collects, which makes the room for
        // a snapshot that fits.
        let gc = repo
            .gc(&GcOptions {
                grace: std::time::Duration::ZERO,
                ..GcOptions::default()
            })
            .unwrap();
        assert!(gc.deleted_bytes > 0, "{gc:?}");
        fs::remove_file(data.join("big")).unwrap();
        fs::write(data.join("medium"), rng.bytes(2 << 20)).unwrap();
        let second = snap(&repo, &data).unwrap();
        repo.verify(second.info.id, &NoProgress).unwrap();
        let usage = repo.usage().unwrap();
        let space = usage.space.expect("a volume store knows its space");
        assert!(
            space.total_bytes <= 4 << 20 && space.available_bytes < 2 << 20,
            "{usage:?}"
        );
        assert!(usage.stored_bytes > 2 << 20, "{usage:?}");
    });
}

#[test]
fn a_restore_onto_a_volume_without_room_fails_before_touching_the_live_data() {
    let dir = tempfile::tempdir().unwrap();
    let (data, live) = (dir.path().join("data"), dir.path().join("live"));
    fs::create_dir_all(&data).unwrap();
    let mut rng = Rng(22);
    fs::write(data.join("db"), rng.bytes(3 << 20)).unwrap();
    let repo = Repository::open_or_init(
        Arc::new(FsStore::new(dir.path().join("repo")).unwrap()),
        None,
    )
    .unwrap();
    let s = snap(&repo, &data).unwrap();
    with_small_volume(&live, 5 << 20, || {
        // The live data takes 3 MiB of 5; the restore stages a whole second copy beside it.
        fs::write(live.join("db"), rng.bytes(3 << 20)).unwrap();
        let before = fingerprint(&live);
        let e = repo
            .restore(
                s.info.id,
                &Method::Files { root: live.clone() },
                &RestoreOptions::default(),
                &NoProgress,
            )
            .unwrap_err();
        assert_eq!(e.category(), "no_space", "{e}");
        assert_eq!(fingerprint(&live), before, "live data untouched");
        // Nothing of the attempt is left taking room.
        let names: Vec<_> = fs::read_dir(&live)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(names, ["db"]);
    });
}
