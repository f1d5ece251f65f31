//! Repositories written by earlier engine versions keep working: the fixtures under
//! `tests/fixtures/format-1` were written by the format-1 engine (before compression) with
//! `snapctl snapshot`, plain and encrypted, from a tree whose file digests are below.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;

use deployctl_snapshot::*;
use sha2::{Digest, Sha256};

/// The fixture's key (64 hex digits).
const KEY: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

/// SHA-256 of every regular file in the snapshotted tree.
const FILES: &[(&str, &str)] = &[
    (
        "conf/app.yaml",
        "01b7c8493d341de26a2b16d301e5d6a59817e608b1374bd08597b2e26473c95a",
    ),
    (
        "conf/nested/empty",
        "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
    ),
    (
        "conf/nested/random.bin",
        "f7e4d380deeb25af59337176bb70f5861dc76a781786073829a40f02aac101bf",
    ),
    (
        "large.log",
        "76fe61fcc973e7cdf27e73772c2524e27206abb5f80bdf1cc7cc016058d8a63e",
    ),
];

fn copy_tree(from: &Path, to: &Path) {
    fs::create_dir_all(to).unwrap();
    for e in fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let target = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_tree(&e.path(), &target);
        } else {
            fs::copy(e.path(), target).unwrap();
        }
    }
}

fn check_restored(root: &Path) {
    for (path, digest) in FILES {
        let bytes = fs::read(root.join(path)).unwrap();
        assert_eq!(hex::encode(Sha256::digest(&bytes)), *digest, "{path}");
    }
    assert_eq!(
        fs::read_link(root.join("current")).unwrap(),
        Path::new("conf/app.yaml")
    );
    let mode = fs::metadata(root.join("conf/app.yaml"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o640);
}

fn format_1_repository_reads_and_takes_new_snapshots(name: &str, key: Option<MasterKey>) {
    let dir = tempfile::tempdir().unwrap();
    let repo_dir = dir.path().join("repo");
    copy_tree(
        &Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/format-1")
            .join(name),
        &repo_dir,
    );
    let config_before = fs::read(repo_dir.join("config")).unwrap();
    let repo = Repository::open(Arc::new(FsStore::new(&repo_dir).unwrap()), key.as_ref()).unwrap();
    let snaps = repo.list_snapshots().unwrap();
    assert_eq!(snaps.len(), 1, "{snaps:?}");
    let old = snaps[0].id;
    let verified = repo.verify(old, &NoProgress).unwrap();
    assert!(verified.bytes > 300 * 1024, "{verified:?}");

    let live = dir.path().join("live");
    let method = Method::Files { root: live.clone() };
    repo.restore(old, &method, &RestoreOptions::default(), &NoProgress)
        .unwrap();
    check_restored(&live);

    // The current engine adds to the old repository in a form the old engine reads: the
    // config is untouched (still format 1) and the new snapshot restores.
    fs::write(live.join("conf/app.yaml"), b"replicas: 4\n").unwrap();
    let new = repo
        .snapshot(
            &Source::new("shop", "db", "r2"),
            &method,
            &SnapshotOptions::default(),
            &NoProgress,
        )
        .unwrap();
    assert!(new.reused_chunks > 0, "{new:?}");
    assert_eq!(fs::read(repo_dir.join("config")).unwrap(), config_before);
    let back = dir.path().join("back");
    repo.restore(
        new.info.id,
        &Method::Files { root: back.clone() },
        &RestoreOptions::default(),
        &NoProgress,
    )
    .unwrap();
    assert_eq!(
        fs::read(back.join("conf/app.yaml")).unwrap(),
        b"replicas: 4\n"
    );
    assert_eq!(
        fs::read(back.join("large.log")).unwrap(),
        fs::read(live.join("large.log")).unwrap()
    );
    // And the old snapshot is still whole.
    repo.verify(old, &NoProgress).unwrap();
}

#[test]
fn a_plain_format_1_repository_reads_and_takes_new_snapshots() {
    format_1_repository_reads_and_takes_new_snapshots("plain", None);
}

#[test]
fn an_encrypted_format_1_repository_reads_and_takes_new_snapshots() {
    let key = MasterKey::from_secret_bytes(KEY.as_bytes()).unwrap();
    format_1_repository_reads_and_takes_new_snapshots("encrypted", Some(key));
}
