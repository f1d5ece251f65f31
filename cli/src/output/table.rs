//! Plain-text tables in the kubectl look (upper-case headers, left-aligned columns three
//! spaces apart, no borders, no trailing spaces) that fit a width by truncating one
//! flexible column, usually the message.

use super::style::{Color, Style};
use unicode_width::{UnicodeWidthChar, UnicodeWidthStr};

/// Space between two columns.
const GAP: usize = 3;
/// The flexible column is never cut below this, even if the table then overflows.
const MIN_FLEX: usize = 12;

/// One cell: its text and an optional colour (applied after padding, so colour codes do
/// not count towards widths).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cell {
    text: String,
    color: Option<Color>,
}

impl Cell {
    /// A cell with a colour.
    pub fn colored(text: impl Into<String>, color: Option<Color>) -> Self {
        Cell {
            text: text.into(),
            color,
        }
    }
}

impl From<String> for Cell {
    fn from(text: String) -> Self {
        Cell { text, color: None }
    }
}

impl From<&str> for Cell {
    fn from(text: &str) -> Self {
        Cell {
            text: text.to_string(),
            color: None,
        }
    }
}

/// A table being built.
#[derive(Clone, Debug, Default)]
pub struct Table {
    headers: Vec<String>,
    rows: Vec<Vec<Cell>>,
    flex: Option<usize>,
    indent: usize,
}

impl Table {
    /// A table with these column headers.
    pub fn new<I, S>(headers: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Table {
            headers: headers.into_iter().map(Into::into).collect(),
            ..Default::default()
        }
    }

    /// Makes the column with this header the one that is truncated to fit the width.
    pub fn flex(mut self, header: &str) -> Self {
        self.flex = self.headers.iter().position(|h| h == header);
        self
    }

    /// Indents every line by `n` spaces (for tables nested in a section).
    pub fn indent(mut self, n: usize) -> Self {
        self.indent = n;
        self
    }

    /// Adds a row; missing cells are empty, extra ones are dropped.
    pub fn row<I, C>(&mut self, cells: I)
    where
        I: IntoIterator<Item = C>,
        C: Into<Cell>,
    {
        let mut row: Vec<Cell> = cells.into_iter().map(Into::into).collect();
        row.resize(self.headers.len(), Cell::from(""));
        self.rows.push(row);
    }

    /// Renders the table, one line per row after the header, each ending in `\n`.
    pub fn render(&self, style: &Style) -> String {
        let n = self.headers.len();
        let mut widths: Vec<usize> = self.headers.iter().map(|h| h.width()).collect();
        for row in &self.rows {
            for (i, cell) in row.iter().enumerate() {
                widths[i] = widths[i].max(cell.text.width());
            }
        }
        if let (Some(limit), Some(flex)) = (style.width, self.flex) {
            let others: usize = widths
                .iter()
                .enumerate()
                .filter(|(i, _)| *i != flex)
                .map(|(_, w)| w)
                .sum::<usize>()
                + GAP * n.saturating_sub(1)
                + self.indent;
            let room = limit.saturating_sub(others).max(MIN_FLEX);
            widths[flex] = widths[flex].min(room);
        }
        let mut out = String::new();
        let header_cells: Vec<Cell> = self
            .headers
            .iter()
            .map(|h| Cell::colored(h.clone(), Some(Color::Bold)))
            .collect();
        for row in std::iter::once(&header_cells).chain(&self.rows) {
            let mut line = " ".repeat(self.indent);
            // Trailing empty cells would only add spaces.
            let last = row.iter().rposition(|c| !c.text.is_empty()).unwrap_or(0);
            for (i, cell) in row.iter().enumerate().take(last + 1) {
                let text = truncate(&cell.text, widths[i]);
                let pad = if i == last {
                    0
                } else {
                    widths[i] - text.width() + GAP
                };
                match cell.color {
                    Some(c) => line.push_str(&style.paint(&text, c)),
                    None => line.push_str(&text),
                }
                line.push_str(&" ".repeat(pad));
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
        out
    }
}

/// Cuts `s` to at most `width` columns, ending in `…` when cut.
pub fn truncate(s: &str, width: usize) -> String {
    if s.width() <= width {
        return s.to_string();
    }
    if width == 0 {
        return String::new();
    }
    let mut out = String::new();
    let mut used = 0;
    for ch in s.chars() {
        let w = ch.width().unwrap_or(0);
        if used + w > width - 1 {
            break;
        }
        out.push(ch);
        used += w;
    }
    out.push('…');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Table {
        let mut t = Table::new(["NAME", "PHASE", "MESSAGE"]).flex("MESSAGE");
        t.row([
            "shop",
            "Healthy",
            "every component is Available on revision 4",
        ]);
        t.row([
            "shop-api",
            "Progressing",
            "rolling out revision 2: component api",
        ]);
        t
    }

    #[test]
    fn columns_line_up_three_spaces_apart_without_trailing_spaces() {
        let out = sample().render(&Style::PLAIN);
        assert_eq!(
            out,
            "NAME       PHASE         MESSAGE\n\
             shop       Healthy       every component is Available on revision 4\n\
             shop-api   Progressing   rolling out revision 2: component api\n"
        );
        assert!(out.lines().all(|l| !l.ends_with(' ')));
    }

    #[test]
    fn the_flexible_column_is_truncated_to_fit_the_width() {
        let style = Style {
            color: false,
            width: Some(50),
        };
        let out = sample().render(&style);
        for line in out.lines() {
            assert!(line.width() <= 50, "{line:?} is wider than 50");
        }
        assert!(out.contains("every component is Avail…"), "{out}");
    }

    #[test]
    fn the_flexible_column_keeps_a_minimum_width() {
        let style = Style {
            color: false,
            width: Some(10),
        };
        let out = sample().render(&style);
        let first = out.lines().nth(1).unwrap();
        assert!(first.ends_with("every compo…"), "{first}");
    }

    #[test]
    fn colours_do_not_disturb_alignment() {
        let mut t = Table::new(["A", "B"]);
        t.row([Cell::colored("x", Some(Color::Red)), Cell::from("y")]);
        let out = t.render(&Style {
            color: true,
            width: None,
        });
        assert_eq!(
            out,
            "\x1b[1mA\x1b[0m   \x1b[1mB\x1b[0m\n\x1b[31mx\x1b[0m   y\n"
        );
    }

    #[test]
    fn truncation_counts_display_width() {
        assert_eq!(truncate("abcdef", 4), "abc…");
        assert_eq!(truncate("abc", 3), "abc");
        assert_eq!(truncate("→→→→", 3), "→→…");
        assert_eq!(truncate("abc", 0), "");
    }

    #[test]
    fn indentation_and_short_rows() {
        let mut t = Table::new(["GATE", "PHASE", "MESSAGE"]).indent(2);
        t.row(["http"]);
        assert_eq!(
            t.render(&Style::PLAIN),
            "  GATE   PHASE   MESSAGE\n  http\n"
        );
    }
}
