//! `dump` and `load`: the database as SQL text on stdout, and back from stdin. This is
//! what deployctl's `Exec` data method runs (`demo-app dump` as the dump command,
//! `demo-app load` as the restore command), like `pg_dump` and `psql` for PostgreSQL.
//!
//! The dump is taken in one read transaction, so a running server cannot tear it; the
//! load replaces every table in one write transaction, so the server sees the old data or
//! the new, never a mix. A dump ends with a marker line: a cut-off stream is refused
//! before anything is changed.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use rusqlite::types::ValueRef;
use rusqlite::{Connection, TransactionBehavior};

use crate::checksum::open_read_only;
use crate::migrations::schema_version;

/// First line of every dump.
pub const HEADER: &str = "-- demo-app dump 1";
/// Last line of every dump.
pub const TRAILER: &str = "-- end of demo-app dump";

/// Why a dump or a load failed.
#[derive(Debug, thiserror::Error)]
pub enum DumpError {
    /// The database could not be opened.
    #[error(transparent)]
    Open(#[from] crate::checksum::ChecksumError),
    /// A database outside the data directory's layout, or the data directory itself.
    #[error("opening {path}: {source}")]
    Store {
        /// The data directory.
        path: PathBuf,
        /// What went wrong.
        source: crate::db::StoreError,
    },
    /// SQLite failed.
    #[error("sqlite: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// Writing the dump or reading the input failed.
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    /// The input is not a whole dump.
    #[error("not a complete demo-app dump: {0}; nothing was changed")]
    Invalid(String),
}

fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// A value as an SQL literal that reads back as the same value and type.
fn literal(v: ValueRef<'_>) -> String {
    match v {
        ValueRef::Null => "NULL".into(),
        ValueRef::Integer(i) => i.to_string(),
        // `{:?}` is the shortest text that parses back to the same f64.
        ValueRef::Real(f) if f.is_finite() => format!("{f:?}"),
        ValueRef::Real(f) if f > 0.0 => "9e999".into(),
        ValueRef::Real(_) => "-9e999".into(),
        ValueRef::Text(t) if !t.contains(&0) && std::str::from_utf8(t).is_ok() => {
            format!("'{}'", String::from_utf8_lossy(t).replace('\'', "''"))
        }
        ValueRef::Text(t) => format!("CAST(X'{}' AS TEXT)", hex::encode(t)),
        ValueRef::Blob(b) => format!("X'{}'", hex::encode(b)),
    }
}

/// Writes the dump of `conn` to `out`: schema version, schema, rows, AUTOINCREMENT
/// counters, trailer.
pub fn write_dump(conn: &Connection, out: &mut dyn Write) -> Result<(), DumpError> {
    let tx = conn.unchecked_transaction()?;
    writeln!(out, "{HEADER}")?;
    writeln!(out, "PRAGMA user_version = {};", schema_version(&tx)?)?;
    // Tables first, then what refers to them (indexes, triggers, views).
    let objects: Vec<(String, String, String)> = tx
        .prepare(
            "SELECT type, name, sql FROM sqlite_master WHERE sql IS NOT NULL \
             AND name NOT LIKE 'sqlite\\_%' ESCAPE '\\' \
             ORDER BY CASE type WHEN 'table' THEN 0 ELSE 1 END, name",
        )?
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
        .collect::<Result<_, _>>()?;
    for (_, _, sql) in &objects {
        writeln!(out, "{sql};")?;
    }
    for (_, name, _) in objects.iter().filter(|o| o.0 == "table") {
        let mut stmt = tx.prepare(&format!(
            "SELECT * FROM {} ORDER BY rowid",
            quote_ident(name)
        ))?;
        let width = stmt.column_count();
        let mut rows = stmt.query([])?;
        while let Some(row) = rows.next()? {
            let values = (0..width)
                .map(|i| row.get_ref(i).map(literal))
                .collect::<Result<Vec<_>, _>>()?;
            writeln!(
                out,
                "INSERT INTO {} VALUES({});",
                quote_ident(name),
                values.join(",")
            )?;
        }
    }
    let has_sequence: bool = tx.query_row(
        "SELECT count(*) > 0 FROM sqlite_master WHERE name = 'sqlite_sequence'",
        [],
        |r| r.get(0),
    )?;
    if has_sequence {
        writeln!(out, "DELETE FROM sqlite_sequence;")?;
        let mut stmt = tx.prepare("SELECT name, seq FROM sqlite_sequence ORDER BY name")?;
        let mut rows = stmt.query([])?;
        while let Some(row) = rows.next()? {
            writeln!(
                out,
                "INSERT INTO sqlite_sequence VALUES({},{});",
                literal(row.get_ref(0)?),
                literal(row.get_ref(1)?)
            )?;
        }
    }
    writeln!(out, "{TRAILER}")?;
    out.flush()?;
    tx.finish()?;
    Ok(())
}

/// Replaces everything in `conn` with the dump read from `input`, in one transaction.
pub fn load(conn: &mut Connection, input: &mut dyn Read) -> Result<(), DumpError> {
    let mut text = String::new();
    input
        .read_to_string(&mut text)
        .map_err(|e| DumpError::Invalid(format!("the input is not UTF-8 text ({e})")))?;
    if text.lines().next() != Some(HEADER) {
        return Err(DumpError::Invalid(format!(
            "it does not start with {HEADER:?}"
        )));
    }
    if text.lines().next_back() != Some(TRAILER) {
        return Err(DumpError::Invalid(format!(
            "it does not end with {TRAILER:?} (cut off?)"
        )));
    }
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let existing: Vec<(String, String)> = tx
        .prepare(
            "SELECT type, name FROM sqlite_master WHERE type IN ('table', 'view') \
             AND name NOT LIKE 'sqlite\\_%' ESCAPE '\\'",
        )?
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<Result<_, _>>()?;
    for (kind, name) in existing {
        let what = if kind == "view" { "VIEW" } else { "TABLE" };
        tx.execute_batch(&format!("DROP {what} {};", quote_ident(&name)))?;
    }
    tx.execute_batch(&text)?;
    tx.commit()?;
    Ok(())
}

/// `demo-app dump`: the database in `data_dir` to `out`.
pub fn dump_data_dir(data_dir: &Path, out: &mut dyn Write) -> Result<(), DumpError> {
    let conn = open_read_only(data_dir)?;
    write_dump(&conn, out)
}

/// `demo-app load`: `input` into the database in `data_dir` (created if missing).
pub fn load_data_dir(data_dir: &Path, input: &mut dyn Read) -> Result<(), DumpError> {
    let mut conn = crate::db::open_connection(data_dir).map_err(|source| DumpError::Store {
        path: data_dir.to_owned(),
        source,
    })?;
    load(&mut conn, input)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checksum::checksum;
    use crate::migrations::migrate;

    fn dump_of(conn: &Connection) -> Vec<u8> {
        let mut out = Vec::new();
        write_dump(conn, &mut out).unwrap();
        out
    }

    #[test]
    fn a_load_gives_back_the_dumped_content() {
        let mut a = Connection::open_in_memory().unwrap();
        migrate(&mut a, 2, 7).unwrap();
        a.execute_batch(
            "CREATE TABLE odd (\"we\"\"ird\" TEXT, r REAL, b BLOB, n INTEGER);
             INSERT INTO odd VALUES ('it''s
multi-line', 0.1, X'00ff', NULL), (CAST(X'610062' AS TEXT), -1e300, X'', 9223372036854775807);",
        )
        .unwrap();
        let dump = dump_of(&a);

        // Into a database with other content at another schema version.
        let mut b = Connection::open_in_memory().unwrap();
        migrate(&mut b, 1, 3).unwrap();
        load(&mut b, &mut dump.as_slice()).unwrap();
        assert_eq!(checksum(&b).unwrap(), checksum(&a).unwrap());
        assert_eq!(schema_version(&b).unwrap(), schema_version(&a).unwrap());
        assert_eq!(
            dump_of(&b),
            dump,
            "a dump of the loaded database is the same"
        );
    }

    #[test]
    fn a_cut_off_or_foreign_input_changes_nothing() {
        let mut a = Connection::open_in_memory().unwrap();
        migrate(&mut a, 1, 4).unwrap();
        let before = checksum(&a).unwrap();
        let dump = dump_of(&a);
        let cut = &dump[..dump.len() - 10];
        let err = load(&mut a, &mut &cut[..]).unwrap_err();
        assert!(err.to_string().contains("cut off"), "{err}");
        let err = load(&mut a, &mut &b"DROP TABLE items;\n"[..]).unwrap_err();
        assert!(err.to_string().contains("does not start"), "{err}");
        assert_eq!(checksum(&a).unwrap(), before);
    }

    #[test]
    fn files_round_trip_through_the_data_dir() {
        let dir = tempfile::tempdir().unwrap();
        let (src, dst) = (dir.path().join("a"), dir.path().join("b"));
        let (store, _) = crate::db::Store::open(&src, 1, 5, false).unwrap();
        store.close().unwrap();
        let mut dump = Vec::new();
        dump_data_dir(&src, &mut dump).unwrap();
        load_data_dir(&dst, &mut dump.as_slice()).unwrap();
        assert_eq!(
            crate::checksum::checksum_data_dir(&dst).unwrap(),
            crate::checksum::checksum_data_dir(&src).unwrap()
        );
        assert!(dump_data_dir(&dir.path().join("none"), &mut Vec::new()).is_err());
    }
}
