#!/usr/bin/env python3
"""Data for benches/snapshot/shapes.sh (a benchmark, not a test).

  datagen.py sqlite DB [MIB]      create a SQLite database of text rows, about MIB MiB (1100)
  datagen.py update DB PERCENT    update PERCENT% of its rows, chosen at random
  datagen.py touch TREE PERCENT   rewrite PERCENT% of the files of a copied tree (one byte
                                  changed in the middle of each, so sizes stay the same)

The rows look like an application's: an order table with a customer, a status, a JSON-ish
body of about 900 bytes of words from a 5,000-word vocabulary, and timestamps; one index.
Deterministic (fixed seeds), so two runs make the same bytes.
"""
import os
import random
import sqlite3
import sys


def vocabulary(rnd):
    letters = "abcdefghijklmnopqrstuvwxyz"
    return ["".join(rnd.choice(letters) for _ in range(rnd.randint(3, 10))) for _ in range(5000)]


def body(rnd, words, n=900):
    out, size = [], 0
    while size < n:
        w = rnd.choice(words)
        out.append(w)
        size += len(w) + 1
    return '{"note": "' + " ".join(out) + '"}'


def create(path, mib):
    rnd = random.Random(1)
    words = vocabulary(rnd)
    if os.path.exists(path):
        os.remove(path)
    db = sqlite3.connect(path)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=OFF")
    db.execute(
        "CREATE TABLE orders (id INTEGER PRIMARY KEY, customer TEXT NOT NULL, status TEXT NOT NULL,"
        " body TEXT NOT NULL, created INTEGER NOT NULL, updated INTEGER NOT NULL)"
    )
    db.execute("CREATE INDEX orders_customer ON orders (customer)")
    rows = mib * 1024 * 1024 // 1040
    statuses = ["new", "paid", "shipped", "delivered", "returned"]
    batch = []
    for i in range(rows):
        t = 1_700_000_000 + i * 7
        batch.append((f"customer-{rnd.randrange(100_000):06d}", rnd.choice(statuses), body(rnd, words), t, t))
        if len(batch) == 10_000:
            db.executemany("INSERT INTO orders (customer, status, body, created, updated) VALUES (?,?,?,?,?)", batch)
            batch.clear()
    db.executemany("INSERT INTO orders (customer, status, body, created, updated) VALUES (?,?,?,?,?)", batch)
    db.commit()
    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    db.execute("PRAGMA journal_mode=DELETE")
    db.close()
    print(f"{rows} rows, {os.path.getsize(path) / 2**20:.0f} MiB")


def update(path, percent):
    rnd = random.Random(2)
    words = vocabulary(random.Random(1))
    db = sqlite3.connect(path)
    (count,) = db.execute("SELECT max(id) FROM orders").fetchone()
    ids = rnd.sample(range(1, count + 1), int(count * percent / 100))
    db.executemany(
        "UPDATE orders SET status = ?, body = ?, updated = updated + 1 WHERE id = ?",
        [("returned", body(rnd, words), i) for i in ids],
    )
    db.commit()
    db.close()
    print(f"updated {len(ids)} of {count} rows")


def touch(tree, percent):
    rnd = random.Random(3)
    files = sorted(
        os.path.join(d, f) for d, _, fs in os.walk(tree) for f in fs
        if os.path.isfile(os.path.join(d, f)) and not os.path.islink(os.path.join(d, f))
    )
    chosen = [p for p in rnd.sample(files, max(1, len(files) * percent // 100)) if os.path.getsize(p) > 0]
    for p in chosen:
        size = os.path.getsize(p)
        with open(p, "r+b") as f:
            f.seek(size // 2)
            b = f.read(1)
            f.seek(size // 2)
            f.write(bytes([b[0] ^ 0x5A]))
    print(f"changed {len(chosen)} of {len(files)} files")


if __name__ == "__main__":
    cmd = sys.argv[1]
    if cmd == "sqlite":
        create(sys.argv[2], int(sys.argv[3]) if len(sys.argv) > 3 else 1100)
    elif cmd == "update":
        update(sys.argv[2], float(sys.argv[3]))
    elif cmd == "touch":
        touch(sys.argv[2], int(sys.argv[3]))
    else:
        sys.exit(__doc__)
