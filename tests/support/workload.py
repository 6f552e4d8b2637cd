#!/usr/bin/env python3
"""An application writing a SQLite database the way real ones do, for walrust's end-to-end tests.

  workload.py write DB --txns N [--seed S] [--autocheckpoint N] [--truncate-every K] [--short-lived]
                        [--die-mid-txn-at K] [--blob-every K] [--pause-ms MS]
  workload.py digest DB      prints a SHA-256 of the schema and every row of every table (logical content)
  workload.py integrity DB   prints the result of PRAGMA integrity_check

`write` runs N random transactions: inserts, updates and deletes of small rows, blobs of 10-200 KB, schema
changes (CREATE/ALTER/DROP TABLE, CREATE INDEX) and an occasional VACUUM. With --die-mid-txn-at K it kills itself
with SIGKILL in the middle of transaction K, after writing part of it (the transaction must never appear in a
backup). It prints `committed N` at the end.
"""
import argparse
import hashlib
import os
import random
import signal
import sqlite3
import sys
import time


def connect(path, autocheckpoint):
    c = sqlite3.connect(path, timeout=30, isolation_level=None)
    c.execute("PRAGMA journal_mode=WAL")
    c.execute("PRAGMA busy_timeout=30000")
    if autocheckpoint is not None:
        c.execute(f"PRAGMA wal_autocheckpoint={autocheckpoint}")
    return c


def tables(c):
    return [r[0] for r in c.execute("SELECT name FROM sqlite_master WHERE type='table' AND name LIKE 't%' ORDER BY name")]


def one_txn(c, rng, i, args):
    c.execute("BEGIN IMMEDIATE")
    if args.die_mid_txn_at == i:
        for k in range(500):
            c.execute("INSERT INTO main_rows(k, v) VALUES (?, ?)", (f"doomed-{k}", os.urandom(500)))
        os.kill(os.getpid(), signal.SIGKILL)
    kind = rng.random()
    if kind < 0.45:
        for _ in range(rng.randint(1, 20)):
            c.execute("INSERT INTO main_rows(k, v) VALUES (?, ?)", (f"k{rng.randint(0, 10**9)}", rng.randbytes(rng.randint(0, 400))))
    elif kind < 0.65:
        c.execute("UPDATE main_rows SET v = ? WHERE id IN (SELECT id FROM main_rows ORDER BY random() LIMIT ?)",
                  (rng.randbytes(rng.randint(0, 300)), rng.randint(1, 30)))
    elif kind < 0.80:
        c.execute("DELETE FROM main_rows WHERE id IN (SELECT id FROM main_rows ORDER BY random() LIMIT ?)", (rng.randint(1, 15),))
    elif kind < 0.90:
        ts = tables(c)
        choice = rng.random()
        if choice < 0.4 or not ts:
            name = f"t{i}_{os.urandom(4).hex()}"
            c.execute(f"CREATE TABLE {name}(id INTEGER PRIMARY KEY, a TEXT, b INTEGER)")
            c.executemany(f"INSERT INTO {name}(a, b) VALUES (?, ?)", [(f"r{j}", j) for j in range(rng.randint(1, 50))])
        elif choice < 0.7:
            t = rng.choice(ts)
            c.execute(f"ALTER TABLE {t} ADD COLUMN c{i}_{os.urandom(4).hex()} TEXT DEFAULT 'x{i}'")
        elif choice < 0.85:
            t = rng.choice(ts)
            c.execute(f"CREATE INDEX IF NOT EXISTS i_{t}_{i}_{os.urandom(4).hex()} ON {t}(a)")
        else:
            c.execute(f"DROP TABLE {rng.choice(ts)}")
    else:
        c.execute("INSERT INTO blobs(b) VALUES (?)", (rng.randbytes(rng.randint(10_000, 200_000)),))
        if rng.random() < 0.3:
            c.execute("DELETE FROM blobs WHERE id IN (SELECT id FROM blobs ORDER BY random() LIMIT 2)")
    c.execute("COMMIT")


def write(args):
    rng = random.Random(args.seed)
    c = connect(args.db, args.autocheckpoint)
    c.execute("CREATE TABLE IF NOT EXISTS main_rows(id INTEGER PRIMARY KEY, k TEXT, v BLOB)")
    c.execute("CREATE TABLE IF NOT EXISTS blobs(id INTEGER PRIMARY KEY, b BLOB)")
    committed = 0
    for i in range(1, args.txns + 1):
        if args.short_lived:
            c.close()
            c = connect(args.db, args.autocheckpoint)
        if args.vacuum_every and i % args.vacuum_every == 0:
            c.execute("VACUUM")
        else:
            one_txn(c, rng, i, args)
        committed += 1
        if args.truncate_every and i % args.truncate_every == 0:
            c.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
        if args.pause_ms:
            time.sleep(args.pause_ms / 1000)
    c.close()
    print(f"committed {committed}")


def digest(args):
    c = sqlite3.connect(f"file:{args.db}?mode=ro", uri=True)
    h = hashlib.sha256()
    for line in c.iterdump():
        h.update(line.encode())
        h.update(b"\n")
    print(h.hexdigest())


def integrity(args):
    c = sqlite3.connect(f"file:{args.db}?mode=ro", uri=True)
    print(c.execute("PRAGMA integrity_check").fetchone()[0])


def main():
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="cmd", required=True)
    w = sub.add_parser("write")
    w.add_argument("db")
    w.add_argument("--txns", type=int, default=1000)
    w.add_argument("--seed", type=int, default=1)
    w.add_argument("--autocheckpoint", type=int, default=None)
    w.add_argument("--truncate-every", type=int, default=0)
    w.add_argument("--vacuum-every", type=int, default=0)
    w.add_argument("--short-lived", action="store_true")
    w.add_argument("--die-mid-txn-at", type=int, default=0)
    w.add_argument("--pause-ms", type=float, default=0)
    for name in ("digest", "integrity"):
        s = sub.add_parser(name)
        s.add_argument("db")
    args = p.parse_args()
    {"write": write, "digest": digest, "integrity": integrity}[args.cmd](args)


if __name__ == "__main__":
    sys.exit(main())
