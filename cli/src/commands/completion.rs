//! `deployctl completion bash|zsh|fish`: prints a completion script for the shell, for the
//! name the program was invoked as.

use super::{print, Ctx};
use crate::args::Cli;
use crate::error::CliError;
use clap::CommandFactory;

/// Arguments of `completion`.
#[derive(Debug, clap::Args)]
#[command(after_help = "Examples:
  deployctl completion bash > /etc/bash_completion.d/deployctl
  deployctl completion zsh > \"${fpath[1]}/_deployctl\"
  deployctl completion fish > ~/.config/fish/completions/deployctl.fish")]
pub struct CompletionArgs {
    /// The shell to complete for
    #[arg(value_name = "SHELL")]
    pub shell: Shell,
}

/// Shells with completion scripts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Shell {
    /// Bash.
    Bash,
    /// Zsh.
    Zsh,
    /// Fish.
    Fish,
}

/// Runs `completion`.
pub fn run(args: CompletionArgs, ctx: &Ctx) -> Result<(), CliError> {
    print(&script(args.shell, &ctx.bin_name))
}

/// The completion script for `shell`, completing the command `bin_name`.
pub fn script(shell: Shell, bin_name: &str) -> String {
    let shell = match shell {
        Shell::Bash => clap_complete::Shell::Bash,
        Shell::Zsh => clap_complete::Shell::Zsh,
        Shell::Fish => clap_complete::Shell::Fish,
    };
    let mut buf = Vec::new();
    clap_complete::generate(shell, &mut Cli::command(), bin_name, &mut buf);
    String::from_utf8(buf).expect("completion scripts are UTF-8")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scripts_complete_the_commands() {
        for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
            let s = script(shell, "deployctl");
            assert!(s.contains("rollback"), "{shell:?}");
            assert!(s.contains("deployctl"), "{shell:?}");
        }
    }
}
