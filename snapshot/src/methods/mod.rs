//! What gets snapshotted and how it goes back: a directory tree, a live SQLite database, or
//! a dump command's output.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::error::Result;
use crate::manifest::MethodKind;
use crate::snapshot::Prepared;

pub(crate) mod exec;
pub(crate) mod files;
pub(crate) mod sqlite;

/// A command to run (no shell unless the program is one).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CommandSpec {
    /// Program, looked up in `PATH`.
    pub program: String,
    /// Arguments.
    #[serde(default)]
    pub args: Vec<String>,
    /// Extra environment variables.
    #[serde(default)]
    pub env: Vec<(String, String)>,
    /// Working directory.
    #[serde(default)]
    pub cwd: Option<PathBuf>,
}

impl CommandSpec {
    /// `sh -c script`.
    pub fn shell(script: impl Into<String>) -> Self {
        CommandSpec {
            program: "sh".into(),
            args: vec!["-c".into(), script.into()],
            ..Default::default()
        }
    }
}

/// The data of one component, as declared in the stack: used both to snapshot and to restore.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", tag = "method", deny_unknown_fields)]
pub enum Method {
    /// A directory tree, typically a volume's mount point. The caller quiesces writers
    /// (scale to zero, or fsfreeze) before a snapshot and stops them before a restore.
    Files {
        /// The live directory.
        root: PathBuf,
    },
    /// A SQLite database file, copied while live with SQLite's online backup API.
    Sqlite {
        /// The database file.
        path: PathBuf,
    },
    /// A dump command whose stdout is the snapshot; restore feeds it to `restore` on stdin.
    Exec {
        /// Writes the data to stdout; must exit 0.
        dump: CommandSpec,
        /// Reads the data from stdin; must exit 0.
        restore: CommandSpec,
    },
    /// The `exec` method with the commands run by someone else (in Kubernetes, another
    /// container of the agent's pod): a snapshot reads a dump's output from `file`, and a
    /// restore writes the verified stream to `file` for the restore command to read.
    /// Recorded as `Exec`, with the same single entry, so either side can read the other's
    /// snapshots. The file appears only once every chunk has been verified.
    ExecFile {
        /// The dump's output (snapshot), or where the verified stream goes (restore).
        file: PathBuf,
    },
}

impl Method {
    /// The method's kind, as recorded in manifests.
    pub fn kind(&self) -> MethodKind {
        match self {
            Method::Files { .. } => MethodKind::Files,
            Method::Sqlite { .. } => MethodKind::Sqlite,
            Method::Exec { .. } | Method::ExecFile { .. } => MethodKind::Exec,
        }
    }
}

pub(crate) type Finisher = Box<dyn FnOnce(bool) -> Result<()> + Send>;

/// A capture in progress: inputs for the pipeline, and what to do once they are read.
pub(crate) struct Capture {
    prepared: Option<Prepared>,
    finisher: Option<Finisher>,
}

impl Capture {
    pub(crate) fn take_prepared(&mut self) -> Prepared {
        self.prepared.take().expect("taken once")
    }

    /// Ends the capture: `ok` says whether every input was read; an exec dump is then
    /// waited for, a sqlite copy removed.
    pub(crate) fn finish(mut self, ok: bool) -> Result<()> {
        match self.finisher.take() {
            Some(f) => f(ok),
            None => Ok(()),
        }
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        if let Some(f) = self.finisher.take() {
            let _ = f(false);
        }
    }
}

/// Starts capturing `method`'s data.
pub(crate) fn capture(method: &Method) -> Result<Capture> {
    let (prepared, finisher) = match method {
        Method::Files { root } => {
            // A restore killed mid-swap leaves part of the live data aside; put it back
            // before capturing, or the snapshot would miss it.
            crate::swap::recover(root)?;
            (files::scan(root)?, None)
        }
        Method::Sqlite { path } => {
            if let Some(dir) = path.parent().filter(|p| p.is_dir()) {
                crate::swap::recover(dir)?;
            }
            let (prepared, f) = sqlite::backup(path)?;
            (prepared, Some(f))
        }
        Method::Exec { dump, .. } => {
            let (prepared, f) = exec::spawn_dump(dump)?;
            (prepared, Some(f))
        }
        Method::ExecFile { file } => (exec::read_file(file)?, None),
    };
    Ok(Capture {
        prepared: Some(prepared),
        finisher,
    })
}

/// Random hex for staging and temporary names.
pub(crate) fn random_tag() -> String {
    let mut b = [0u8; 6];
    getrandom::fill(&mut b).expect("system random number generator failed");
    hex::encode(b)
}
