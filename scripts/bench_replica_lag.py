#!/usr/bin/env python3
"""Replica lag driver, run by scripts/bench-replica-lag (which builds and starts S3 first).

A primary (`walrust watch`, default settings) and a replica (`walrust replicate --interval 1s`) share a fresh S3
prefix. The writer commits one row at a time, at random gaps of 100-900 ms, recording the wall-clock time right
after each COMMIT returns; a reader connection opened once on the replica polls every 5 ms and records when each
row becomes visible. Lag = visible - committed. (An idle poll is one LIST; tests/replicate.rs counts it.)

Environment: WALRUST_BENCH_COMMITS (default 120), WALRUST_BENCH_INTERVAL (default 1s), WALRUST_TEST_S3_ENDPOINT,
WALRUST_TEST_S3_BUCKET, AWS_*.
"""
import os
import random
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import uuid

WALRUST = "target/release/walrust"
ENDPOINT = os.environ["WALRUST_TEST_S3_ENDPOINT"]
BUCKET = os.environ["WALRUST_TEST_S3_BUCKET"]
COMMITS = int(os.environ.get("WALRUST_BENCH_COMMITS", "120"))
INTERVAL = os.environ.get("WALRUST_BENCH_INTERVAL", "1s")


def wait_for(what, pred, secs=60):
    end = time.monotonic() + secs
    while not pred():
        if time.monotonic() > end:
            sys.exit(f"timed out waiting for {what}")
        time.sleep(0.02)


def pct(sorted_values, p):
    if not sorted_values:
        return float("nan")
    k = min(len(sorted_values) - 1, max(0, round(p / 100 * (len(sorted_values) - 1))))
    return sorted_values[k]


def main():
    tmp = tempfile.mkdtemp(prefix="walrust-lag-")
    url = f"s3://{BUCKET}/bench-lag-{uuid.uuid4().hex[:12]}/"
    storage = ["-b", url, "--endpoint", ENDPOINT]
    primary = os.path.join(tmp, "app.db")
    replica = os.path.join(tmp, "replica.db")
    procs = []
    try:
        c = sqlite3.connect(primary, isolation_level=None)
        c.execute("PRAGMA journal_mode=WAL")
        c.execute("CREATE TABLE lag(id INTEGER PRIMARY KEY, at REAL)")
        wlog = open(os.path.join(tmp, "watch.log"), "w")
        rlog = open(os.path.join(tmp, "replicate.log"), "w")
        procs.append(subprocess.Popen([WALRUST, "watch", primary, *storage], stderr=wlog))
        time.sleep(1.0)
        procs.append(
            subprocess.Popen(
                [WALRUST, "replicate", "app", *storage, "--local", replica, "--interval", INTERVAL], stderr=rlog
            )
        )
        wait_for("the replica's bootstrap", lambda: os.path.exists(replica + "-walrust-replica"))
        committed = {}
        seen = {}
        done = threading.Event()

        def reader():
            r = sqlite3.connect(f"file:{replica}?mode=ro", uri=True, isolation_level=None)
            last = 0
            while not done.is_set():
                try:
                    rows = r.execute("SELECT id FROM lag WHERE id > ?", (last,)).fetchall()
                except sqlite3.OperationalError as e:  # busy
                    print(f"reader: {e}", flush=True)
                    rows = []
                now = time.time()
                for (i,) in rows:
                    seen.setdefault(i, now)
                    last = max(last, i)
                time.sleep(0.005)

        t = threading.Thread(target=reader)
        t.start()
        rng = random.Random(7)
        print(f"{COMMITS} commits, replicate --interval {INTERVAL}, watch defaults (interval 1s)", flush=True)
        for i in range(1, COMMITS + 1):
            c.execute("INSERT INTO lag(id, at) VALUES (?, ?)", (i, time.time()))
            committed[i] = time.time()
            time.sleep(rng.uniform(0.1, 0.9))
        wait_for("every commit on the replica", lambda: len(seen) == COMMITS, secs=30)
        done.set()
        t.join()
        lags = sorted(seen[i] - committed[i] for i in committed)
        ms = lambda v: f"{v * 1000:.0f} ms"  # noqa: E731
        print(
            f"replica lag over {len(lags)} commits: p50 {ms(pct(lags, 50))}, p90 {ms(pct(lags, 90))}, "
            f"p99 {ms(pct(lags, 99))}, max {ms(lags[-1])}, min {ms(lags[0])}",
            flush=True,
        )
        for p in procs:
            p.terminate()
        codes = [p.wait(timeout=30) for p in procs]
        if codes != [0, 0]:
            sys.exit(f"watch/replicate exited {codes}; logs in {tmp}")
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
