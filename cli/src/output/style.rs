//! Whether and how to colour: only on a terminal, never with `NO_COLOR` set (any
//! non-empty value, per no-color.org) or `--no-color`, and the terminal width that
//! tables fit (`COLUMNS` wins, so scripts and tests get a fixed width).

use std::io::IsTerminal;

/// The few colours the output uses, each with a meaning.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Color {
    /// Healthy, passed, available.
    Green,
    /// In progress, waiting.
    Yellow,
    /// Failed, unavailable, rolled back.
    Red,
    /// Secondary information.
    Dim,
    /// Headers.
    Bold,
}

impl Color {
    fn code(self) -> &'static str {
        match self {
            Color::Green => "32",
            Color::Yellow => "33",
            Color::Red => "31",
            Color::Dim => "2",
            Color::Bold => "1",
        }
    }
}

/// How output is decorated.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Style {
    /// Whether ANSI colours are written.
    pub color: bool,
    /// Width to fit tables in; `None` means no limit (output is not a terminal and
    /// `COLUMNS` is not set).
    pub width: Option<usize>,
}

impl Style {
    /// No colours, no width limit: for tests and pipes.
    pub const PLAIN: Style = Style {
        color: false,
        width: None,
    };

    /// The style for stdout, from the environment and `--no-color`.
    pub fn for_stdout(no_color_flag: bool) -> Style {
        let out = std::io::stdout();
        Style {
            color: color_allowed(no_color_flag) && out.is_terminal(),
            width: width_from_env().or_else(|| {
                out.is_terminal()
                    .then(|| terminal_size::terminal_size_of(&out).map(|(w, _)| w.0 as usize))
                    .flatten()
            }),
        }
    }

    /// Whether stderr gets colours (the `error:` prefix).
    pub fn stderr_color(no_color_flag: bool) -> bool {
        color_allowed(no_color_flag) && std::io::stderr().is_terminal()
    }

    /// `text` in `color`, or as is when colours are off.
    pub fn paint(&self, text: &str, color: Color) -> String {
        if self.color && !text.is_empty() {
            format!("\x1b[{}m{text}\x1b[0m", color.code())
        } else {
            text.to_string()
        }
    }
}

fn color_allowed(no_color_flag: bool) -> bool {
    !no_color_flag && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}

fn width_from_env() -> Option<usize> {
    std::env::var("COLUMNS")
        .ok()
        .and_then(|v| v.trim().parse::<usize>().ok())
        .filter(|w| *w > 0)
}

/// The colour that goes with a stack, component or gate phase name.
pub fn phase_color(phase: &str) -> Option<Color> {
    match phase {
        "Healthy" | "Available" | "Passed" | "Succeeded" | "True" | "Completed" | "Verified"
        | "Restored" => Some(Color::Green),
        "Progressing"
        | "Paused"
        | "RollingBack"
        | "Running"
        | "Pending"
        | "WaitingForDependencies"
        | "Terminating"
        | "Stopping"
        | "Restoring" => Some(Color::Yellow),
        "Degraded" | "Invalid" | "RolledBack" | "Unavailable" | "Failed" | "Inconclusive"
        | "Corrupt" => Some(Color::Red),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paint_is_a_no_op_without_colour() {
        assert_eq!(Style::PLAIN.paint("Healthy", Color::Green), "Healthy");
        let s = Style {
            color: true,
            width: None,
        };
        assert_eq!(s.paint("Healthy", Color::Green), "\x1b[32mHealthy\x1b[0m");
        assert_eq!(s.paint("", Color::Green), "");
    }

    #[test]
    fn phases_have_meaningful_colours() {
        assert_eq!(phase_color("Healthy"), Some(Color::Green));
        assert_eq!(phase_color("RolledBack"), Some(Color::Red));
        assert_eq!(phase_color("Progressing"), Some(Color::Yellow));
        assert_eq!(phase_color("whatever"), None);
    }
}
