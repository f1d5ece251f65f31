//! Command line and environment configuration, and how the running version is chosen.
//!
//! Everything the process can be told lives in one clap tree with `env` fallbacks, so the
//! same switches work as container `args` and as container `env`.

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;

use clap::builder::BoolishValueParser;
use clap::{Args, Parser, Subcommand};
use reqwest::Url;

use crate::faults::Faults;

/// Name of the SQLite file inside the data directory.
pub const DB_FILE_NAME: &str = "app.db";

/// Demo HTTP service with SQLite data, schema migrations and fault switches.
///
/// Without a subcommand the service runs (`serve`).
#[derive(Debug, Parser)]
#[command(name = "demo-app", version, args_conflicts_with_subcommands = true)]
pub struct Cli {
    /// What to do; without one, serve HTTP.
    #[command(subcommand)]
    pub command: Option<Command>,

    /// Options of the default `serve` command.
    #[command(flatten)]
    pub serve: ServeArgs,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve HTTP (the default).
    Serve(ServeArgs),
    /// Print the SHA-256 of the database's logical content (schema version and every row).
    Checksum(ChecksumArgs),
    /// Open the database, run the migrations for this version, then exit.
    Migrate(MigrateArgs),
    /// Write the database to stdout as SQL text, consistent while the server runs.
    Dump(DataDirArgs),
    /// Replace the database's content with a dump read from stdin, in one transaction.
    Load(DataDirArgs),
}

/// How the application version is chosen: explicit flag or env, else the image tag.
#[derive(Debug, Clone, Default, Args)]
pub struct VersionArgs {
    /// Application version to run ("2", "v2", "2.1.0" all mean 2).
    /// Defaults to the tag of the container image, else 1.
    #[arg(long, env = "APP_VERSION")]
    pub app_version: Option<String>,

    /// Container image this process runs as; its tag gives the default version.
    /// Set by the simulated node.
    #[arg(long, env = "SIMNODE_IMAGE")]
    pub image: Option<String>,
}

/// Options of `serve`.
#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    /// Address to listen on.
    #[arg(long, env = "LISTEN_ADDR", default_value = "0.0.0.0:8080")]
    pub listen: SocketAddr,

    /// Directory holding the SQLite database (`app.db`). Unused with `--upstream`.
    #[arg(long, env = "DATA_DIR", default_value = "/data")]
    pub data_dir: PathBuf,

    /// Version selection.
    #[command(flatten)]
    pub version: VersionArgs,

    /// Insert this many deterministic items when the database is created.
    #[arg(long, env = "SEED_ITEMS", default_value_t = 0)]
    pub seed: u32,

    /// Base URL of an upstream demo-app: `/api/*` is proxied to it and readiness requires
    /// its `/readyz`. This process then keeps no data (role `proxy`).
    #[arg(long, env = "UPSTREAM_URL")]
    pub upstream: Option<Url>,

    /// In the proxy role: at start, before it reports ready, migrate the upstream's
    /// database to the schema of this app version through its `POST /admin/migrate`
    /// (retried until the upstream answers), as a release that runs its own migrations
    /// against a shared database does.
    #[arg(long, env = "MIGRATE_UPSTREAM", requires = "upstream")]
    pub migrate_upstream: Option<u32>,

    /// After SIGTERM, keep serving this long (with `/readyz` answering 503) before
    /// closing the listener, so endpoints stop routing here first: what a `preStop`
    /// sleep does for real services.
    #[arg(long, env = "SHUTDOWN_DELAY_MS", default_value_t = 0)]
    pub shutdown_delay_ms: u64,

    /// Fault switches.
    #[command(flatten)]
    pub faults: FaultArgs,
}

/// Fault switches as given at start; see [`Faults`] for their meaning.
#[derive(Debug, Clone, Default, Args)]
#[command(next_help_heading = "Fault injection")]
pub struct FaultArgs {
    /// Fraction (0.0 to 1.0) of `/` and `/api/*` requests that answer 500.
    #[arg(long = "fault-error-rate", env = "FAULT_ERROR_RATE", default_value_t = 0.0,
          value_parser = parse_rate)]
    pub error_rate: f64,

    /// Latency added to every `/api/*` request, in milliseconds.
    #[arg(
        long = "fault-latency-ms",
        env = "FAULT_LATENCY_MS",
        default_value_t = 0
    )]
    pub latency_ms: u64,

    /// Exit with code 3 right after start.
    #[arg(long = "fault-crash-on-start", env = "FAULT_CRASH_ON_START",
          action = clap::ArgAction::SetTrue, value_parser = BoolishValueParser::new())]
    pub crash_on_start: bool,

    /// Never report ready (`/readyz` answers 503).
    #[arg(long = "fault-never-ready", env = "FAULT_NEVER_READY",
          action = clap::ArgAction::SetTrue, value_parser = BoolishValueParser::new())]
    pub never_ready: bool,

    /// On start, overwrite some rows with garbage so the data checksum changes.
    #[arg(long = "fault-corrupt-data", env = "FAULT_CORRUPT_DATA",
          action = clap::ArgAction::SetTrue, value_parser = BoolishValueParser::new())]
    pub corrupt_data: bool,

    /// Crash (exit code 3, no graceful shutdown) this many seconds after start.
    #[arg(long = "fault-crash-after-secs", env = "FAULT_CRASH_AFTER_SECS")]
    pub crash_after_secs: Option<u64>,
}

impl From<FaultArgs> for Faults {
    fn from(a: FaultArgs) -> Self {
        Faults {
            error_rate: a.error_rate,
            latency_ms: a.latency_ms,
            crash_on_start: a.crash_on_start,
            never_ready: a.never_ready,
            corrupt_data: a.corrupt_data,
            crash_after_secs: a.crash_after_secs,
        }
    }
}

/// Options of `checksum`.
#[derive(Debug, Clone, Args)]
pub struct ChecksumArgs {
    /// Directory holding `app.db`.
    #[arg(long, env = "DATA_DIR", default_value = "/data")]
    pub data_dir: PathBuf,

    /// Print the canonical dump the checksum is computed over instead of the checksum.
    #[arg(long)]
    pub dump: bool,
}

/// Options of `dump` and `load`.
#[derive(Debug, Clone, Args)]
pub struct DataDirArgs {
    /// Directory holding `app.db` (`load` creates it if missing).
    #[arg(long, env = "DATA_DIR", default_value = "/data")]
    pub data_dir: PathBuf,
}

/// Options of `migrate`.
#[derive(Debug, Clone, Args)]
pub struct MigrateArgs {
    /// Directory holding `app.db` (created if missing).
    #[arg(long, env = "DATA_DIR", default_value = "/data")]
    pub data_dir: PathBuf,

    /// Version selection.
    #[command(flatten)]
    pub version: VersionArgs,

    /// Insert this many deterministic items if the database is created.
    #[arg(long, env = "SEED_ITEMS", default_value_t = 0)]
    pub seed: u32,
}

fn parse_rate(s: &str) -> Result<f64, String> {
    let v: f64 = s.trim().parse().map_err(|e| format!("not a number: {e}"))?;
    if (0.0..=1.0).contains(&v) {
        Ok(v)
    } else {
        Err(format!("{v} is outside 0.0..=1.0"))
    }
}

/// A version string that does not name a major version >= 1.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid application version {0:?}: expected N, vN or N.M.P with N >= 1")]
pub struct VersionParseError(pub String);

/// Parses "2", "v2", "V2", "2.1.0", "v2-rc1" into the major version 2.
pub fn parse_version(s: &str) -> Result<u32, VersionParseError> {
    let err = || VersionParseError(s.to_owned());
    let t = s.trim();
    let t = t.strip_prefix(['v', 'V']).unwrap_or(t);
    let end = t.find(['.', '-', '+']).unwrap_or(t.len());
    let major = &t[..end];
    if major.is_empty() || !major.bytes().all(|b| b.is_ascii_digit()) {
        return Err(err());
    }
    match major.parse::<u32>() {
        Ok(v) if v >= 1 => Ok(v),
        _ => Err(err()),
    }
}

/// The tag of an image reference, if it has one (`repo:tag`, `host:5000/repo:tag@sha256:...`).
pub fn image_tag(image: &str) -> Option<&str> {
    let without_digest = image.split('@').next().unwrap_or(image);
    // A ':' before the last '/' belongs to a registry port, not to a tag.
    let name_start = without_digest.rfind('/').map_or(0, |i| i + 1);
    let name = &without_digest[name_start..];
    name.split_once(':')
        .map(|(_, tag)| tag)
        .filter(|t| !t.is_empty())
}

/// Where the running version came from, for the start log line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VersionSource {
    /// `--app-version` or `APP_VERSION`.
    Explicit,
    /// The tag of `SIMNODE_IMAGE`.
    ImageTag,
    /// Nothing usable given; version 1.
    Default,
}

impl fmt::Display for VersionSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            VersionSource::Explicit => "app-version",
            VersionSource::ImageTag => "image-tag",
            VersionSource::Default => "default",
        })
    }
}

impl VersionArgs {
    /// Chooses the version: an explicit value must parse; an image tag that does not
    /// (`latest`) falls back to 1 because any image may be deployed, as with a real app.
    pub fn resolve(&self) -> Result<(u32, VersionSource), VersionParseError> {
        if let Some(v) = self.app_version.as_deref().filter(|v| !v.trim().is_empty()) {
            return parse_version(v).map(|v| (v, VersionSource::Explicit));
        }
        if let Some(v) = self
            .image
            .as_deref()
            .and_then(image_tag)
            .and_then(|t| parse_version(t).ok())
        {
            return Ok((v, VersionSource::ImageTag));
        }
        Ok((1, VersionSource::Default))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_version_forms() {
        for (s, want) in [
            ("1", 1),
            ("2", 2),
            ("v2", 2),
            ("V3", 3),
            ("2.1.0", 2),
            ("v2.0", 2),
            ("v10-rc1", 10),
            ("3+build", 3),
        ] {
            assert_eq!(parse_version(s), Ok(want), "{s}");
        }
        for s in ["", "v", "latest", "0", "v0.1.0", "2x", "-1", "v.2"] {
            assert!(parse_version(s).is_err(), "{s:?} should not parse");
        }
    }

    #[test]
    fn extracts_image_tags() {
        assert_eq!(image_tag("deployctl.dev/demo-app:v2"), Some("v2"));
        assert_eq!(image_tag("deployctl.dev/demo-app"), None);
        assert_eq!(image_tag("localhost:5000/demo-app"), None);
        assert_eq!(image_tag("localhost:5000/demo-app:2.1.0"), Some("2.1.0"));
        assert_eq!(image_tag("demo-app:v3@sha256:abcd"), Some("v3"));
        assert_eq!(image_tag("demo-app@sha256:abcd"), None);
        assert_eq!(image_tag("demo-app:"), None);
    }

    #[test]
    fn resolves_version_by_precedence() {
        let args = |v: Option<&str>, i: Option<&str>| VersionArgs {
            app_version: v.map(Into::into),
            image: i.map(Into::into),
        };
        assert_eq!(
            args(Some("3"), Some("deployctl.dev/demo-app:v2")).resolve(),
            Ok((3, VersionSource::Explicit))
        );
        assert_eq!(
            args(None, Some("deployctl.dev/demo-app:v2")).resolve(),
            Ok((2, VersionSource::ImageTag))
        );
        assert_eq!(
            args(None, Some("deployctl.dev/demo-app:2.1.0")).resolve(),
            Ok((2, VersionSource::ImageTag))
        );
        assert_eq!(
            args(None, Some("deployctl.dev/demo-app:latest")).resolve(),
            Ok((1, VersionSource::Default))
        );
        assert_eq!(args(None, None).resolve(), Ok((1, VersionSource::Default)));
        assert!(args(Some("banana"), None).resolve().is_err());
    }

    #[test]
    fn cli_parses_flags_and_subcommands() {
        let cli = Cli::try_parse_from([
            "demo-app",
            "--listen",
            "127.0.0.1:0",
            "--seed",
            "5",
            "--fault-never-ready",
            "--fault-error-rate",
            "0.5",
        ])
        .expect("parse");
        assert!(cli.command.is_none());
        assert_eq!(cli.serve.seed, 5);
        assert!(cli.serve.faults.never_ready);
        assert!(!cli.serve.faults.crash_on_start);
        assert_eq!(cli.serve.faults.error_rate, 0.5);

        let cli =
            Cli::try_parse_from(["demo-app", "checksum", "--data-dir", "/tmp/x"]).expect("parse");
        assert!(
            matches!(cli.command, Some(Command::Checksum(ref c)) if c.data_dir == std::path::Path::new("/tmp/x"))
        );

        assert!(Cli::try_parse_from(["demo-app", "--fault-error-rate", "1.5"]).is_err());
    }

    #[test]
    fn cli_definition_is_consistent() {
        <Cli as clap::CommandFactory>::command().debug_assert();
    }
}
