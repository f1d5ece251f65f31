//! Schema versions and the migrations between them.
//!
//! The schema version is SQLite's `PRAGMA user_version` (0 = new, empty file).
//!
//! - schema 1 (app version 1): `items(id, name, price_cents INTEGER)`.
//! - schema 2 (app versions 2 and later): `items(id, name, price TEXT)` holding "12.34 EUR".
//!
//! The 1 → 2 step rewrites every row and drops `price_cents`, so it cannot be undone by
//! running the old binary again: a version 1 binary refuses a schema 2 database, and only
//! restoring the data taken before the upgrade makes a rollback work, as with real releases.

use rusqlite::{params, Connection, Transaction};

/// The newest schema any version of this binary knows.
pub const LATEST_SCHEMA: u32 = 2;

/// The schema an application version runs on (and migrates up to).
pub fn schema_for_version(app_version: u32) -> u32 {
    if app_version >= 2 {
        2
    } else {
        1
    }
}

/// Why the database could not be brought to the schema this version needs.
#[derive(Debug, thiserror::Error)]
pub enum MigrationError {
    /// The database was migrated by a newer release; running on it would misread the data.
    #[error(
        "database schema version {db_schema} is newer than schema version {supported} \
         supported by app version {app_version}; refusing to start (a rollback needs the \
         data from before the upgrade restored)"
    )]
    SchemaTooNew {
        /// Schema version found in the database.
        db_schema: u32,
        /// Schema version this app version runs on.
        supported: u32,
        /// The running app version.
        app_version: u32,
    },
    /// One migration step failed; its transaction was rolled back.
    #[error("migrating the database from schema version {from} to {to} failed: {source}")]
    Step {
        /// Schema version before the step.
        from: u32,
        /// Schema version the step was to reach.
        to: u32,
        /// The SQLite error.
        #[source]
        source: rusqlite::Error,
    },
    /// Reading the schema version failed.
    #[error("reading the database schema version failed: {0}")]
    Sqlite(#[from] rusqlite::Error),
}

/// What [`migrate`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MigrationReport {
    /// Schema version found (0 = new database).
    pub from: u32,
    /// Schema version now.
    pub to: u32,
    /// Items inserted by seeding a new database.
    pub seeded: u32,
}

/// The schema version stored in the database.
pub fn schema_version(conn: &Connection) -> rusqlite::Result<u32> {
    conn.query_row("PRAGMA user_version", [], |r| r.get(0))
}

/// Brings the database to the schema of `app_version`, creating (and seeding with `seed`
/// items) a new database at schema 1 first so that every database, new or old, goes
/// through the same steps and ends with the same content.
pub fn migrate(
    conn: &mut Connection,
    app_version: u32,
    seed: u32,
) -> Result<MigrationReport, MigrationError> {
    let target = schema_for_version(app_version);
    let from = schema_version(conn)?;
    if from > target {
        return Err(MigrationError::SchemaTooNew {
            db_schema: from,
            supported: target,
            app_version,
        });
    }
    let mut seeded = 0;
    let mut current = from;
    while current < target {
        let next = current + 1;
        let step = |source| MigrationError::Step {
            from: current,
            to: next,
            source,
        };
        let tx = conn.transaction().map_err(step)?;
        match next {
            1 => seeded = create_v1(&tx, seed).map_err(step)?,
            2 => v1_to_v2(&tx).map_err(step)?,
            _ => unreachable!("schema_for_version never exceeds LATEST_SCHEMA"),
        }
        tx.pragma_update(None, "user_version", next).map_err(step)?;
        tx.commit().map_err(step)?;
        current = next;
    }
    Ok(MigrationReport {
        from,
        to: current,
        seeded,
    })
}

/// Formats cents as the schema 2 price text: 1234 → "12.34 EUR".
pub fn format_price(cents: i64) -> String {
    let sign = if cents < 0 { "-" } else { "" };
    let abs = cents.unsigned_abs();
    format!("{sign}{}.{:02} EUR", abs / 100, abs % 100)
}

/// Parses the schema 2 price text back into cents; `None` for anything else.
pub fn parse_price(price: &str) -> Option<i64> {
    let amount = price.strip_suffix(" EUR")?;
    let (neg, amount) = match amount.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, amount),
    };
    let (units, cents) = amount.split_once('.')?;
    if cents.len() != 2 || units.is_empty() {
        return None;
    }
    let all_digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    if !all_digits(units) || !all_digits(cents) {
        return None;
    }
    let v = units
        .parse::<i64>()
        .ok()?
        .checked_mul(100)?
        .checked_add(cents.parse::<i64>().ok()?)?;
    Some(if neg { -v } else { v })
}

/// Deterministic seed item `i` (1-based), so seeded databases are identical everywhere.
pub fn seed_item(i: u32) -> (String, i64) {
    (format!("item-{i:04}"), 100 + (i64::from(i) * 7919) % 9900)
}

fn create_v1(tx: &Transaction<'_>, seed: u32) -> rusqlite::Result<u32> {
    // Plain CREATE TABLE: a file with tables but no schema version is not ours, and
    // failing here is better than adopting it.
    tx.execute_batch(
        "CREATE TABLE items (
             id INTEGER PRIMARY KEY AUTOINCREMENT,
             name TEXT NOT NULL,
             price_cents INTEGER NOT NULL
         );",
    )?;
    let mut insert = tx.prepare("INSERT INTO items (id, name, price_cents) VALUES (?1, ?2, ?3)")?;
    for i in 1..=seed {
        let (name, cents) = seed_item(i);
        insert.execute(params![i, name, cents])?;
    }
    Ok(seed)
}

fn v1_to_v2(tx: &Transaction<'_>) -> rusqlite::Result<()> {
    // Rebuild rather than ALTER: the new column is NOT NULL and the old one must go.
    tx.execute_batch(
        "CREATE TABLE items_v2 (
             id INTEGER PRIMARY KEY AUTOINCREMENT,
             name TEXT NOT NULL,
             price TEXT NOT NULL
         );",
    )?;
    {
        let mut read = tx.prepare("SELECT id, name, price_cents FROM items ORDER BY id")?;
        let mut write = tx.prepare("INSERT INTO items_v2 (id, name, price) VALUES (?1, ?2, ?3)")?;
        let mut rows = read.query([])?;
        while let Some(row) = rows.next()? {
            let id: i64 = row.get(0)?;
            let name: String = row.get(1)?;
            let cents: i64 = row.get(2)?;
            write.execute(params![id, name, format_price(cents)])?;
        }
    }
    // RENAME carries the AUTOINCREMENT counter (sqlite_sequence) over to the new name.
    tx.execute_batch("DROP TABLE items; ALTER TABLE items_v2 RENAME TO items;")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mem() -> Connection {
        Connection::open_in_memory().unwrap()
    }

    #[test]
    fn version_to_schema() {
        assert_eq!(schema_for_version(1), 1);
        assert_eq!(schema_for_version(2), 2);
        assert_eq!(schema_for_version(3), 2);
        assert!(schema_for_version(u32::MAX) <= LATEST_SCHEMA);
    }

    #[test]
    fn prices_round_trip() {
        for (c, s) in [
            (0, "0.00 EUR"),
            (5, "0.05 EUR"),
            (1234, "12.34 EUR"),
            (100, "1.00 EUR"),
            (-250, "-2.50 EUR"),
        ] {
            assert_eq!(format_price(c), s);
            assert_eq!(parse_price(s), Some(c));
        }
        for bad in [
            "12.34",
            "12.3 EUR",
            "x.00 EUR",
            ".50 EUR",
            "12.34 USD",
            "1.+2 EUR",
        ] {
            assert_eq!(parse_price(bad), None, "{bad}");
        }
    }

    #[test]
    fn new_database_is_created_seeded_and_migrated() {
        let mut c = mem();
        let r = migrate(&mut c, 1, 3).unwrap();
        assert_eq!(
            r,
            MigrationReport {
                from: 0,
                to: 1,
                seeded: 3
            }
        );
        let n: i64 = c
            .query_row("SELECT count(*) FROM items", [], |r| r.get(0))
            .unwrap();
        assert_eq!(n, 3);

        let mut c2 = mem();
        assert_eq!(migrate(&mut c2, 2, 0).unwrap().to, 2);
    }

    #[test]
    fn v2_migration_rewrites_the_data() {
        let mut c = mem();
        migrate(&mut c, 1, 0).unwrap();
        c.execute(
            "INSERT INTO items (name, price_cents) VALUES ('apple', 1234), ('pear', 5)",
            [],
        )
        .unwrap();
        let r = migrate(&mut c, 2, 0).unwrap();
        assert_eq!((r.from, r.to, r.seeded), (1, 2, 0));
        assert_eq!(schema_version(&c).unwrap(), 2);

        let rows: Vec<(i64, String, String)> = c
            .prepare("SELECT id, name, price FROM items ORDER BY id")
            .unwrap()
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(
            rows,
            vec![
                (1, "apple".into(), "12.34 EUR".into()),
                (2, "pear".into(), "0.05 EUR".into())
            ]
        );
        // The old column is gone: nothing a version 1 binary could read is left.
        assert!(c.prepare("SELECT price_cents FROM items").is_err());
        // Ids keep counting after the rebuild.
        c.execute(
            "INSERT INTO items (name, price) VALUES ('fig', '1.00 EUR')",
            [],
        )
        .unwrap();
        assert_eq!(c.last_insert_rowid(), 3);
    }

    #[test]
    fn version_1_refuses_a_schema_2_database() {
        let mut c = mem();
        migrate(&mut c, 2, 2).unwrap();
        let err = migrate(&mut c, 1, 0).unwrap_err();
        assert!(
            matches!(
                err,
                MigrationError::SchemaTooNew {
                    db_schema: 2,
                    supported: 1,
                    app_version: 1
                }
            ),
            "{err:?}"
        );
        let msg = err.to_string();
        assert!(
            msg.contains("schema version 2") && msg.contains("schema version 1"),
            "{msg}"
        );
        // Refusing must not touch the data.
        assert_eq!(schema_version(&c).unwrap(), 2);
    }

    #[test]
    fn version_3_is_a_no_op_on_schema_2() {
        let mut c = mem();
        migrate(&mut c, 2, 2).unwrap();
        let r = migrate(&mut c, 3, 0).unwrap();
        assert_eq!((r.from, r.to), (2, 2));
        // And version 2 still runs after version 3.
        assert_eq!(migrate(&mut c, 2, 0).unwrap().to, 2);
    }

    #[test]
    fn foreign_database_is_not_adopted() {
        let mut c = mem();
        c.execute_batch("CREATE TABLE items (x TEXT);").unwrap();
        let err = migrate(&mut c, 1, 0).unwrap_err();
        assert!(
            matches!(err, MigrationError::Step { from: 0, to: 1, .. }),
            "{err:?}"
        );
        assert_eq!(schema_version(&c).unwrap(), 0);
    }
}
