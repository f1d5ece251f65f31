//! The command line's grammar: the top-level parser, the options every command shares
//! (kubeconfig, context, namespace, colour), and argument types used by several commands.
//! Doc comments here become `--help`.

use crate::commands::Command;
use crate::error::EXIT_CODES_HELP;
use clap::{Args, Parser};
use std::str::FromStr;

/// Roll whole stacks forward and back: status, history, rollbacks and waits for
/// ProductionStacks.
///
/// deployctl reads the kubeconfig like kubectl and works in the namespace of the current
/// context unless told otherwise. It also runs as a kubectl plugin: with
/// `kubectl-deployctl` on PATH, `kubectl deployctl ...` does the same as `deployctl ...`.
#[derive(Debug, Parser)]
#[command(
    name = "deployctl",
    version,
    after_help = EXIT_CODES_HELP,
    propagate_version = true,
    max_term_width = 100
)]
pub struct Cli {
    /// Options shared by every command.
    #[command(flatten)]
    pub global: GlobalArgs,

    /// The command to run.
    #[command(subcommand)]
    pub command: Command,
}

/// Options accepted by every command, before or after its name.
#[derive(Clone, Debug, Default, Args)]
#[command(next_help_heading = "Global options")]
pub struct GlobalArgs {
    /// Kubeconfig file to use; KUBECONFIG may list several, separated by ':'
    /// [default: ~/.kube/config]
    #[arg(
        long,
        global = true,
        env = "KUBECONFIG",
        hide_env_values = true,
        value_name = "PATH"
    )]
    pub kubeconfig: Option<String>,

    /// Kubeconfig context to use [default: the current context]
    #[arg(long, global = true, value_name = "NAME")]
    pub context: Option<String>,

    /// Namespace of the stack [default: the context's namespace, else "default"]
    #[arg(short = 'n', long, global = true, value_name = "NAMESPACE")]
    pub namespace: Option<String>,

    /// Never colour the output (it is coloured only on a terminal, and never when NO_COLOR
    /// is set)
    #[arg(long, global = true)]
    pub no_color: bool,

    /// Act as this user (impersonation, as kubectl --as; needs the impersonate permission)
    #[arg(long = "as", global = true, value_name = "USER")]
    pub as_user: Option<String>,

    /// Act with this group too (repeatable; with --as)
    #[arg(
        long = "as-group",
        global = true,
        value_name = "GROUP",
        requires = "as_user"
    )]
    pub as_groups: Vec<String>,

    /// How long one request to the API server may take before it fails (e.g. 10s; a long
    /// wait is made of many requests and is bounded by its own --timeout)
    #[arg(long, global = true, value_name = "DURATION")]
    pub request_timeout: Option<Timeout>,
}

/// A `--timeout` value: the user's text (kept for messages) and its length.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Timeout {
    /// As written, e.g. `5m`.
    pub text: String,
    /// Parsed.
    pub duration: std::time::Duration,
}

impl FromStr for Timeout {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let duration = deployctl_api::duration::parse(s).map_err(|e| e.to_string())?;
        Ok(Timeout {
            text: s.to_string(),
            duration,
        })
    }
}

impl std::fmt::Display for Timeout {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.text)
    }
}

/// Output formats of `get` and `list`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum OutputFormat {
    /// The table with more columns (rollout step, hold, generations).
    Wide,
    /// The objects exactly as the API server returns them, as JSON.
    Json,
    /// The objects exactly as the API server returns them, as YAML.
    Yaml,
}

/// Output formats of `get` and `list`, as kubectl spells them: `wide`, `json`, `yaml`,
/// `name` or `jsonpath=TEMPLATE`.
#[derive(Clone, Debug, PartialEq)]
pub enum Output {
    /// A table format, or the objects as JSON or YAML.
    Format(OutputFormat),
    /// `productionstack.deployctl.dev/NAME`, one per line.
    Name,
    /// A kubectl JSONPath template applied to the object (or to the list).
    JsonPath(crate::output::jsonpath::Template),
}

impl FromStr for Output {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        use clap::ValueEnum;
        if s == "name" {
            return Ok(Output::Name);
        }
        if let Some(t) = s.strip_prefix("jsonpath=") {
            return t.parse().map(Output::JsonPath);
        }
        OutputFormat::from_str(s, false)
            .map(Output::Format)
            .map_err(|_| {
                format!(
                    "unknown output format {s:?}: use wide, json, yaml, name or jsonpath=TEMPLATE"
                )
            })
    }
}

/// Output formats of `history`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum DataFormat {
    /// JSON.
    Json,
    /// YAML.
    Yaml,
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_grammar_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn timeouts_use_the_spec_duration_syntax() {
        let t: Timeout = "1m30s".parse().unwrap();
        assert_eq!(t.duration, std::time::Duration::from_secs(90));
        assert_eq!(t.to_string(), "1m30s");
        assert!("5".parse::<Timeout>().unwrap_err().contains("missing unit"));
    }
}
