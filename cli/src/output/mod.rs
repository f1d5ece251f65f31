//! Presentation shared by the commands: terminal detection and colours, tables that fit
//! the terminal, human durations, ages and sizes, and the progress spinner of long waits.

pub mod jsonpath;
pub mod progress;
pub mod size;
pub mod style;
pub mod table;
pub mod time;

pub use style::{Color, Style};
pub use table::Table;
