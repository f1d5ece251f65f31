//! The SQLite store: opening the data directory, start-up (migrate, seed, corrupt) and the
//! item queries for whichever schema the database is on.

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use rusqlite::{params, Connection, OptionalExtension, Row};
use serde::{Deserialize, Serialize};

use crate::config::DB_FILE_NAME;
use crate::migrations::{self, format_price, parse_price, MigrationError, MigrationReport};

/// Why the store could not start or answer.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The data directory could not be created.
    #[error("creating data directory {path}: {source}")]
    DataDir {
        /// The directory.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// Opening or configuring the database file failed.
    #[error("opening database {path}: {source}")]
    Open {
        /// The database file.
        path: PathBuf,
        /// The SQLite error.
        #[source]
        source: rusqlite::Error,
    },
    /// The schema could not be brought to this version's.
    #[error(transparent)]
    Migration(#[from] MigrationError),
    /// The store was closed for shutdown.
    #[error("database closed for shutdown")]
    Closed,
    /// A query failed.
    #[error("database error: {0}")]
    Sqlite(#[from] rusqlite::Error),
}

/// An item as the API shows it.
///
/// Schema 1 has only `price_cents`; schema 2 stores `price` text and shows `price_cents`
/// parsed back from it (absent when the text is not a price, e.g. after corruption).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Item {
    /// Row id.
    pub id: i64,
    /// Name.
    pub name: String,
    /// Price in cents.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub price_cents: Option<i64>,
    /// Price text such as "12.34 EUR" (schema 2).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub price: Option<String>,
}

/// The body of `POST /api/items` and `PUT /api/items/{id}`, the same for every version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ItemInput {
    /// Name, 1 to 200 characters.
    pub name: String,
    /// Price in cents, not negative.
    pub price_cents: i64,
}

impl ItemInput {
    /// Checks the ranges, returning a message for the client.
    pub fn validate(&self) -> Result<(), String> {
        let len = self.name.chars().count();
        if len == 0 || len > 200 {
            return Err(format!("name must be 1 to 200 characters, got {len}"));
        }
        if self.price_cents < 0 {
            return Err(format!(
                "price_cents must not be negative, got {}",
                self.price_cents
            ));
        }
        Ok(())
    }
}

/// What happened while opening the store, for the start log line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StartReport {
    /// The migrations run.
    pub migration: MigrationReport,
    /// Rows overwritten by the `corrupt_data` fault.
    pub corrupted: usize,
    /// Items after start.
    pub items: i64,
}

/// The open database, on the schema it was opened with, or the one a client migrated it
/// to through `POST /admin/migrate` (an application-run migration).
#[derive(Debug)]
pub struct Store {
    // One connection is plenty for a demo; the mutex serialises writers as SQLite would.
    // `None` once closed: handlers may still hold the store while the server drains.
    conn: Mutex<Option<Connection>>,
    // Changed only under the connection's lock, by migrate_to.
    schema: std::sync::atomic::AtomicU32,
    path: PathBuf,
}

/// Opens (creating if needed) `<data_dir>/app.db` in WAL mode.
pub fn open_connection(data_dir: &Path) -> Result<Connection, StoreError> {
    std::fs::create_dir_all(data_dir).map_err(|source| StoreError::DataDir {
        path: data_dir.to_owned(),
        source,
    })?;
    let path = data_dir.join(DB_FILE_NAME);
    let open = |path: &Path| -> rusqlite::Result<Connection> {
        let conn = Connection::open(path)?;
        conn.busy_timeout(Duration::from_secs(5))?;
        // The `journal_mode` pragma answers with the mode in force; anything but "wal"
        // would mean the file system cannot do WAL, which we want to hear about.
        let mode: String = conn.query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))?;
        if !mode.eq_ignore_ascii_case("wal") {
            tracing::warn!(%mode, "database is not in WAL mode");
        }
        Ok(conn)
    };
    open(&path).map_err(|source| StoreError::Open { path, source })
}

impl Store {
    /// Opens the database, migrates it for `app_version` (seeding a new one with `seed`
    /// items) and, if asked to, corrupts it.
    pub fn open(
        data_dir: &Path,
        app_version: u32,
        seed: u32,
        corrupt_data: bool,
    ) -> Result<(Store, StartReport), StoreError> {
        let mut conn = open_connection(data_dir)?;
        let migration = migrations::migrate(&mut conn, app_version, seed)?;
        let corrupted = if corrupt_data {
            corrupt(&conn, migration.to)?
        } else {
            0
        };
        let store = Store {
            conn: Mutex::new(Some(conn)),
            schema: migration.to.into(),
            path: data_dir.join(DB_FILE_NAME),
        };
        let items = store.count()?;
        Ok((
            store,
            StartReport {
                migration,
                corrupted,
                items,
            },
        ))
    }

    /// The schema version the database is on.
    pub fn schema(&self) -> u32 {
        self.schema.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Migrates the open database to the schema of `app_version`, as an application
    /// release that runs its migrations against a shared database does; the store then
    /// serves the new schema. A database already there is left alone.
    pub fn migrate_to(&self, app_version: u32) -> Result<MigrationReport, StoreError> {
        let mut guard = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        let conn = guard.as_mut().ok_or(StoreError::Closed)?;
        let report = migrations::migrate(conn, app_version, 0)?;
        self.schema
            .store(report.to, std::sync::atomic::Ordering::SeqCst);
        Ok(report)
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Runs `f` on the connection, or fails with [`StoreError::Closed`] after [`close`].
    ///
    /// [`close`]: Store::close
    fn with_conn<T>(
        &self,
        f: impl FnOnce(&Connection) -> rusqlite::Result<T>,
    ) -> Result<T, StoreError> {
        // A panic while holding the lock leaves SQLite consistent (transactions roll back),
        // so the poison flag carries no information here.
        let guard = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        let conn = guard.as_ref().ok_or(StoreError::Closed)?;
        Ok(f(conn)?)
    }

    fn select(&self) -> &'static str {
        match self.schema() {
            1 => "SELECT id, name, price_cents FROM items",
            _ => "SELECT id, name, price FROM items",
        }
    }

    fn item_from_row(&self, row: &Row<'_>) -> rusqlite::Result<Item> {
        let id = row.get(0)?;
        let name = row.get(1)?;
        Ok(match self.schema() {
            1 => Item {
                id,
                name,
                price_cents: Some(row.get(2)?),
                price: None,
            },
            _ => {
                let price: String = row.get(2)?;
                Item {
                    id,
                    name,
                    price_cents: parse_price(&price),
                    price: Some(price),
                }
            }
        })
    }

    fn stored_price(&self, cents: i64) -> rusqlite::types::Value {
        match self.schema() {
            1 => cents.into(),
            _ => format_price(cents).into(),
        }
    }

    fn price_column(&self) -> &'static str {
        match self.schema() {
            1 => "price_cents",
            _ => "price",
        }
    }

    /// Every item, by id.
    pub fn list(&self) -> Result<Vec<Item>, StoreError> {
        self.with_conn(|conn| {
            let mut stmt = conn.prepare_cached(&format!("{} ORDER BY id", self.select()))?;
            let items = stmt.query_map([], |r| self.item_from_row(r))?;
            items.collect()
        })
    }

    /// One item.
    pub fn get(&self, id: i64) -> Result<Option<Item>, StoreError> {
        self.with_conn(|conn| {
            conn.prepare_cached(&format!("{} WHERE id = ?1", self.select()))?
                .query_row([id], |r| self.item_from_row(r))
                .optional()
        })
    }

    /// Inserts an item.
    pub fn create(&self, input: &ItemInput) -> Result<Item, StoreError> {
        let id = self.with_conn(|conn| {
            conn.execute(
                &format!(
                    "INSERT INTO items (name, {}) VALUES (?1, ?2)",
                    self.price_column()
                ),
                params![input.name, self.stored_price(input.price_cents)],
            )?;
            Ok(conn.last_insert_rowid())
        })?;
        self.get(id)?
            .ok_or(StoreError::Sqlite(rusqlite::Error::QueryReturnedNoRows))
    }

    /// Replaces an item; `None` if there is no such item.
    pub fn update(&self, id: i64, input: &ItemInput) -> Result<Option<Item>, StoreError> {
        let changed = self.with_conn(|conn| {
            conn.execute(
                &format!(
                    "UPDATE items SET name = ?1, {} = ?2 WHERE id = ?3",
                    self.price_column()
                ),
                params![input.name, self.stored_price(input.price_cents), id],
            )
        })?;
        if changed == 0 {
            return Ok(None);
        }
        self.get(id)
    }

    /// Deletes an item; `false` if there was none.
    pub fn delete(&self, id: i64) -> Result<bool, StoreError> {
        self.with_conn(|conn| conn.execute("DELETE FROM items WHERE id = ?1", [id]))
            .map(|n| n > 0)
    }

    /// Number of items.
    pub fn count(&self) -> Result<i64, StoreError> {
        self.with_conn(|conn| conn.query_row("SELECT count(*) FROM items", [], |r| r.get(0)))
    }

    /// Closes the database cleanly: the last connection to close checkpoints the WAL into
    /// `app.db` and removes it, so the data directory holds one self-contained file.
    /// Later calls fail with [`StoreError::Closed`]; closing twice is a no-op.
    pub fn close(&self) -> Result<(), StoreError> {
        let conn = self.conn.lock().unwrap_or_else(|p| p.into_inner()).take();
        match conn {
            Some(conn) => conn.close().map_err(|(_, e)| StoreError::Sqlite(e)),
            None => Ok(()),
        }
    }
}

/// The `corrupt_data` fault: overwrites every other row (odd ids) with garbage, or inserts a
/// garbage row into an empty table, so the data checksum is sure to change. Returns the
/// number of rows touched.
pub fn corrupt(conn: &Connection, schema: u32) -> rusqlite::Result<usize> {
    let garbage = || format!("\u{fffd}corrupt-{:016x}", rand::random::<u64>());
    let tx = conn.unchecked_transaction()?;
    let ids: Vec<i64> = tx
        .prepare("SELECT id FROM items WHERE id % 2 = 1 ORDER BY id")?
        .query_map([], |r| r.get(0))?
        .collect::<Result<_, _>>()?;
    let (update, insert) = match schema {
        1 => (
            "UPDATE items SET name = ?1, price_cents = ?2 WHERE id = ?3",
            "INSERT INTO items (name, price_cents) VALUES (?1, ?2)",
        ),
        _ => (
            "UPDATE items SET name = ?1, price = ?2 WHERE id = ?3",
            "INSERT INTO items (name, price) VALUES (?1, ?2)",
        ),
    };
    let price = |schema: u32| -> rusqlite::types::Value {
        match schema {
            1 => (-(rand::random::<u32>() as i64) - 1).into(),
            _ => garbage().into(),
        }
    };
    let touched = if ids.is_empty() {
        tx.execute(insert, params![garbage(), price(schema)])?
    } else {
        for id in &ids {
            tx.execute(update, params![garbage(), price(schema), id])?;
        }
        ids.len()
    };
    tx.commit()?;
    Ok(touched)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checksum::checksum_data_dir;

    fn input(name: &str, cents: i64) -> ItemInput {
        ItemInput {
            name: name.into(),
            price_cents: cents,
        }
    }

    #[test]
    fn crud_on_both_schemas() {
        for version in [1, 2] {
            let dir = tempfile::tempdir().unwrap();
            let (store, report) = Store::open(dir.path(), version, 0, false).unwrap();
            assert_eq!(report.items, 0);
            let a = store.create(&input("apple", 1234)).unwrap();
            assert_eq!(a.name, "apple");
            assert_eq!(a.price_cents, Some(1234));
            assert_eq!(a.price.is_some(), version == 2);
            let b = store
                .update(a.id, &input("green apple", 99))
                .unwrap()
                .unwrap();
            assert_eq!(b.price_cents, Some(99));
            assert_eq!(store.list().unwrap(), vec![b.clone()]);
            assert!(store.update(a.id + 100, &input("x", 1)).unwrap().is_none());
            assert!(store.delete(a.id).unwrap());
            assert!(!store.delete(a.id).unwrap());
            assert_eq!(store.get(a.id).unwrap(), None);
            store.close().unwrap();
        }
    }

    #[test]
    fn input_validation() {
        assert!(input("a", 0).validate().is_ok());
        assert!(input("", 1).validate().is_err());
        assert!(input(&"x".repeat(201), 1).validate().is_err());
        assert!(input("a", -1).validate().is_err());
    }

    #[test]
    fn reopen_keeps_data_and_clean_close_leaves_one_file() {
        let dir = tempfile::tempdir().unwrap();
        let (store, report) = Store::open(dir.path(), 1, 4, false).unwrap();
        assert_eq!(report.migration.seeded, 4);
        store.close().unwrap();
        assert!(
            !dir.path().join("app.db-wal").exists(),
            "WAL left after close"
        );
        let (store, report) = Store::open(dir.path(), 1, 4, false).unwrap();
        assert_eq!(report.migration.seeded, 0, "seed only on creation");
        assert_eq!(report.items, 4);
        store.close().unwrap();
    }

    #[test]
    fn corrupt_fault_changes_the_checksum() {
        for (version, seed) in [(1, 3), (2, 3), (2, 0)] {
            let dir = tempfile::tempdir().unwrap();
            Store::open(dir.path(), version, seed, false)
                .unwrap()
                .0
                .close()
                .unwrap();
            let before = checksum_data_dir(dir.path()).unwrap();
            assert_eq!(checksum_data_dir(dir.path()).unwrap(), before);
            let (store, report) = Store::open(dir.path(), version, seed, true).unwrap();
            assert!(report.corrupted > 0);
            store.close().unwrap();
            assert_ne!(checksum_data_dir(dir.path()).unwrap(), before);
        }
    }
}
