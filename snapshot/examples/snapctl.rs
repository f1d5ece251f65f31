//! A minimal command line over the engine, used by `benches/snapshot/run.sh` and handy for
//! restore drills by hand. The controller's agent subcommand is the real interface.
//!
//! ```text
//! snapctl snapshot REPO ROOT [KEYFILE]     prints the snapshot id
//! snapctl restore  REPO ID ROOT [KEYFILE]
//! snapctl verify   REPO ID [KEYFILE]
//! snapctl usage    REPO [KEYFILE]                  prints the bytes and objects stored
//! ```
//!
//! A new repository gets the engine's defaults; for measurements, `SNAPCTL_ZSTD_LEVEL`
//! (`off` for none) and `SNAPCTL_PAGE_CHUNK` (bytes, `off` for content-defined chunks only)
//! override them.

use std::sync::Arc;
use std::time::Instant;

use deployctl_snapshot::*;

fn key(path: Option<&String>) -> Option<MasterKey> {
    let bytes = std::fs::read(path?).expect("read key file");
    Some(MasterKey::from_secret_bytes(&bytes).expect("key file: 32 bytes or 64 hex digits"))
}

/// Repository parameters for a new repository, from the environment.
fn params() -> RepoParams {
    let mut p = RepoParams::default();
    let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
    match var("SNAPCTL_ZSTD_LEVEL").as_deref() {
        None => {}
        Some("off") => p.compression = None,
        Some(level) => {
            let level = level.parse().expect("SNAPCTL_ZSTD_LEVEL: a number or off");
            p.compression = Some(Compression {
                level,
                page_level: level,
                ..Compression::default()
            })
        }
    }
    match var("SNAPCTL_PAGE_CHUNK").as_deref() {
        None => {}
        Some("off") => p.page_chunk = None,
        Some(n) => p.page_chunk = Some(n.parse().expect("SNAPCTL_PAGE_CHUNK: bytes or off")),
    }
    p
}

fn open_or_init(store: Arc<FsStore>, key: Option<&MasterKey>) -> Result<Repository> {
    match Repository::open(store.clone(), key) {
        Err(Error::NotInitialized) => Repository::init_with(store, key, params()),
        other => other,
    }
}

fn main() -> std::process::ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let usage = "usage: snapctl snapshot REPO ROOT [KEYFILE] | restore REPO ID ROOT [KEYFILE] | verify REPO ID [KEYFILE] | usage REPO [KEYFILE]";
    let (Some(cmd), Some(repo_dir)) = (args.first(), args.get(1)) else {
        eprintln!("{usage}");
        return std::process::ExitCode::from(2);
    };
    let store = Arc::new(FsStore::new(repo_dir).expect("open repository directory"));
    let started = Instant::now();
    let result = (|| -> Result<String> {
        match cmd.as_str() {
            "snapshot" => {
                let k = key(args.get(3));
                let repo = open_or_init(store, k.as_ref())?;
                let root = args.get(2).expect("ROOT");
                let r = repo.snapshot(
                    &Source::new("bench", "data", "r"),
                    &Method::Files { root: root.into() },
                    &SnapshotOptions::default(),
                    &NoProgress,
                )?;
                Ok(format!(
                    "{} files={} bytes={} new_chunks={} new_bytes={} stored_bytes={} reused_chunks={} unchanged_files={}",
                    r.info.id,
                    r.info.meta.file_count,
                    r.info.meta.total_size,
                    r.new_chunks,
                    r.new_bytes,
                    r.stored_bytes,
                    r.reused_chunks,
                    r.unchanged_files
                ))
            }
            "restore" => {
                let repo = Repository::open(store, key(args.get(4)).as_ref())?;
                let id: SnapshotId = args.get(2).expect("ID").parse().map_err(Error::Config)?;
                let root = args.get(3).expect("ROOT");
                let r = repo.restore(
                    id,
                    &Method::Files { root: root.into() },
                    &RestoreOptions::default(),
                    &NoProgress,
                )?;
                Ok(format!(
                    "restored {} files, {} bytes, every chunk verified",
                    r.files, r.bytes
                ))
            }
            "verify" => {
                let repo = Repository::open(store, key(args.get(3)).as_ref())?;
                let id: SnapshotId = args.get(2).expect("ID").parse().map_err(Error::Config)?;
                let r = repo.verify(id, &NoProgress)?;
                Ok(format!(
                    "verified {} chunks, {} bytes",
                    r.unique_chunks, r.bytes
                ))
            }
            "usage" => {
                let u = Repository::open(store, key(args.get(2)).as_ref())?.usage()?;
                Ok(format!(
                    "stored_bytes={} objects={}",
                    u.stored_bytes, u.objects
                ))
            }
            _ => Err(Error::Config(usage.into())),
        }
    })();
    match result {
        Ok(line) => {
            println!("{line}");
            eprintln!("{cmd}: {:.3}s", started.elapsed().as_secs_f64());
            std::process::ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{cmd} failed ({}): {e}", e.category());
            std::process::ExitCode::FAILURE
        }
    }
}
