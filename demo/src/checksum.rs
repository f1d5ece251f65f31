//! The logical checksum of a database: SHA-256 over a canonical dump of the schema version,
//! every user table's columns and every row in rowid order.
//!
//! It ignores file layout (page order, free pages, WAL state), so two databases with the
//! same content have the same checksum however they were written or restored.
//! `sqlite_*` tables (such as the AUTOINCREMENT counters) are left out: they are bookkeeping,
//! not data.

use std::path::{Path, PathBuf};

use rusqlite::types::ValueRef;
use rusqlite::{Connection, OpenFlags};
use sha2::{Digest, Sha256};

use crate::config::DB_FILE_NAME;
use crate::migrations::schema_version;

/// Why a checksum could not be computed.
#[derive(Debug, thiserror::Error)]
pub enum ChecksumError {
    /// There is no database file to read.
    #[error("no database at {0}")]
    Missing(PathBuf),
    /// SQLite failed to open or read it.
    #[error("reading {path}: {source}")]
    Sqlite {
        /// The database file.
        path: PathBuf,
        /// The SQLite error.
        #[source]
        source: rusqlite::Error,
    },
}

/// Writes the canonical dump piece by piece to `out`, inside one read transaction so a
/// running writer cannot tear it.
pub fn dump(conn: &Connection, out: &mut dyn FnMut(&[u8])) -> rusqlite::Result<()> {
    let tx = conn.unchecked_transaction()?;
    out(format!("schema_version {}\n", schema_version(&tx)?).as_bytes());
    let tables: Vec<String> = tx
        .prepare(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite\\_%' \
             ESCAPE '\\' ORDER BY name",
        )?
        .query_map([], |r| r.get(0))?
        .collect::<Result<_, _>>()?;
    for table in tables {
        let quoted = format!("\"{}\"", table.replace('"', "\"\""));
        let mut stmt = tx.prepare(&format!("SELECT * FROM {quoted} ORDER BY rowid"))?;
        let columns = stmt.column_names().collect::<Vec<_>>().join(",");
        out(format!("table {table}\ncolumns {columns}\n").as_bytes());
        let width = stmt.column_count();
        let mut rows = stmt.query([])?;
        while let Some(row) = rows.next()? {
            out(b"row");
            for i in 0..width {
                // Type tag plus length prefix: no two different rows encode the same way.
                match row.get_ref(i)? {
                    ValueRef::Null => out(b" N"),
                    ValueRef::Integer(v) => out(format!(" I{v}").as_bytes()),
                    ValueRef::Real(v) => out(format!(" R{:016x}", v.to_bits()).as_bytes()),
                    ValueRef::Text(t) => {
                        out(format!(" T{}:", t.len()).as_bytes());
                        out(t);
                    }
                    ValueRef::Blob(b) => {
                        out(format!(" B{}:", b.len()).as_bytes());
                        out(b);
                    }
                }
            }
            out(b"\n");
        }
    }
    tx.finish()
}

/// The lowercase hex SHA-256 of [`dump`].
pub fn checksum(conn: &Connection) -> rusqlite::Result<String> {
    let mut hasher = Sha256::new();
    dump(conn, &mut |bytes| hasher.update(bytes))?;
    Ok(hex::encode(hasher.finalize()))
}

/// Opens `<data_dir>/app.db` read-only (never creating it).
pub fn open_read_only(data_dir: &Path) -> Result<Connection, ChecksumError> {
    let path = data_dir.join(DB_FILE_NAME);
    if !path.is_file() {
        return Err(ChecksumError::Missing(path));
    }
    Connection::open_with_flags(&path, OpenFlags::SQLITE_OPEN_READ_ONLY)
        .map_err(|source| ChecksumError::Sqlite { path, source })
}

/// The checksum of the database in `data_dir`.
pub fn checksum_data_dir(data_dir: &Path) -> Result<String, ChecksumError> {
    let conn = open_read_only(data_dir)?;
    checksum(&conn).map_err(|source| ChecksumError::Sqlite {
        path: data_dir.join(DB_FILE_NAME),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::migrations::migrate;

    #[test]
    fn stable_for_same_content_and_changes_with_it() {
        let mut a = Connection::open_in_memory().unwrap();
        migrate(&mut a, 1, 5).unwrap();
        let before = checksum(&a).unwrap();
        assert_eq!(before.len(), 64);
        assert_eq!(checksum(&a).unwrap(), before, "checksum must be stable");

        // Same content written differently (other order, a row added then removed).
        let mut b = Connection::open_in_memory().unwrap();
        migrate(&mut b, 1, 0).unwrap();
        b.execute(
            "INSERT INTO items (id, name, price_cents) VALUES (99, 'tmp', 1)",
            [],
        )
        .unwrap();
        for i in (1..=5).rev() {
            let (name, cents) = crate::migrations::seed_item(i);
            b.execute(
                "INSERT INTO items (id, name, price_cents) VALUES (?1, ?2, ?3)",
                rusqlite::params![i, name, cents],
            )
            .unwrap();
        }
        b.execute("DELETE FROM items WHERE id = 99", []).unwrap();
        assert_eq!(checksum(&b).unwrap(), before);

        migrate(&mut a, 2, 0).unwrap();
        let after = checksum(&a).unwrap();
        assert_ne!(after, before, "the v2 migration must change the checksum");

        // A new database at version 2 with the same seed ends identical to an upgraded one.
        let mut c = Connection::open_in_memory().unwrap();
        migrate(&mut c, 2, 5).unwrap();
        assert_eq!(checksum(&c).unwrap(), after);
    }

    #[test]
    fn any_value_change_is_seen() {
        let mut a = Connection::open_in_memory().unwrap();
        migrate(&mut a, 1, 2).unwrap();
        let before = checksum(&a).unwrap();
        a.execute("UPDATE items SET name = 'item-0002 ' WHERE id = 2", [])
            .unwrap();
        assert_ne!(checksum(&a).unwrap(), before);
    }

    #[test]
    fn missing_database_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let err = checksum_data_dir(dir.path()).unwrap_err();
        assert!(matches!(err, ChecksumError::Missing(_)), "{err}");
        assert!(
            !dir.path().join(DB_FILE_NAME).exists(),
            "must not create a database"
        );
    }
}
