#!/usr/bin/env python3
"""Large-database memory benchmark driver, run by `scripts/bench-memory large` (which builds and starts S3 first).

For each backend (s3, file) it measures, and prints one line each plus a final table:
  - storage upload/download of SIZE MiB (target/release/examples/bench_storage, which reports its own VmHWM);
  - `walrust watch` taking the first snapshot of a SIZE MiB SQLite database (peak RSS of the watch process);
  - `walrust restore` of it (peak RSS, speed), checked against the source by a hash of every row.
Peak RSS of a child is its own ru_maxrss, from os.wait4 on its pid.

Environment: WALRUST_BENCH_MIB (default 1024), WALRUST_TEST_S3_ENDPOINT, WALRUST_TEST_S3_BUCKET, AWS_*.
The source database is cached in ${TMPDIR:-/tmp}/walrust-bench/; everything else is deleted afterwards.
Exit status 1 when a target is missed or a round trip is not equal.
"""
import hashlib
import os
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
import uuid

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import s3util  # noqa: E402

TARGET_MIB = 64
WALRUST = "target/release/walrust"
BENCH_STORAGE = "target/release/examples/bench_storage"
MIB = int(os.environ.get("WALRUST_BENCH_MIB", "1024"))
ENDPOINT = os.environ["WALRUST_TEST_S3_ENDPOINT"]
BUCKET = os.environ["WALRUST_TEST_S3_BUCKET"]
CACHE = os.path.join(os.environ.get("TMPDIR", "/tmp"), "walrust-bench")
rows = []  # (measurement, backend, peak MiB, seconds, MiB/s, ok)


def log(msg):
    print(msg, flush=True)


def record(what, backend, peak_mib, secs, mib, ok=True):
    rate = mib / secs if secs > 0 else 0.0
    log(f"{what} ({backend}): peak RSS {peak_mib:.1f} MiB, {secs:.1f} s, {rate:.0f} MiB/s")
    rows.append((what, backend, peak_mib, secs, rate, ok and peak_mib < TARGET_MIB))


def run_measured(cmd, stderr_path, until=None, timeout=1800):
    """Runs cmd; with `until`, waits for that regex in its stderr, then SIGTERMs it.
    Returns (exit code, peak RSS MiB, seconds until the regex matched or the process exited)."""
    with open(stderr_path, "w") as err:
        p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err)
    start, secs = time.monotonic(), None
    while True:  # os.wait4 (not Popen.wait) so that the child's own rusage is returned
        pid, status, usage = os.wait4(p.pid, os.WNOHANG if until else 0)
        if pid:
            break
        if secs is None and re.search(until, open(stderr_path).read()):
            secs = time.monotonic() - start
            p.send_signal(signal.SIGTERM)
        elif time.monotonic() - start > timeout:
            p.kill()
        time.sleep(0.05)
    p.returncode = os.waitstatus_to_exitcode(status)
    if secs is None:
        secs = time.monotonic() - start
    if p.returncode != 0 or (until and not re.search(until, open(stderr_path).read())):
        log(f"  {' '.join(cmd[:2])} exited {p.returncode}; stderr tail:\n" + open(stderr_path).read()[-2000:])
    return p.returncode, usage.ru_maxrss / 1024, secs


def content_hash(path):
    """SHA-256 over every row of t, in id order, plus the integrity check result."""
    h = hashlib.sha256()
    con = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    for rid, blob in con.execute("SELECT id, b FROM t ORDER BY id"):
        h.update(rid.to_bytes(8, "little") + len(blob).to_bytes(4, "little") + blob)
    h.update(con.execute("PRAGMA integrity_check").fetchone()[0].encode())
    con.close()
    return h.hexdigest()


def source_db():
    """The cached SIZE MiB WAL-mode database of random blobs, and its content hash (cached beside it)."""
    os.makedirs(CACHE, exist_ok=True)
    path = os.path.join(CACHE, f"source-{MIB}mib.db")
    if os.path.exists(path + ".sha256"):
        return path, open(path + ".sha256").read().strip()
    log(f"creating {path} ({MIB} MiB of random blobs, cached for reruns)")
    for suffix in ("", "-wal", "-shm"):
        if os.path.exists(path + suffix):
            os.remove(path + suffix)
    con = sqlite3.connect(path)
    con.execute("PRAGMA journal_mode=wal")
    con.execute("CREATE TABLE t(id INTEGER PRIMARY KEY, b BLOB NOT NULL)")
    while os.path.getsize(path) < MIB << 20:  # the main file grows at each automatic checkpoint
        with con:  # one transaction of ~16 MiB (SQLite checkpoints the WAL by itself)
            con.execute("WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c LIMIT 16384) "
                        "INSERT INTO t(b) SELECT randomblob(1000) FROM c")
    con.close()  # checkpoints everything into the main file
    digest = content_hash(path)
    with open(path + ".sha256", "w") as f:
        f.write(digest + "\n")
    return path, digest


def bench_storage(backend, location):
    out = subprocess.run([BENCH_STORAGE, location, str(MIB)], capture_output=True, text=True)
    sys.stderr.write(out.stderr)
    equal = out.returncode == 0 and "equal" in out.stdout
    for m in re.finditer(r"^(upload|download) (\d+) MiB \((\w+)\): peak RSS ([\d.]+) MiB, ([\d.]+) s", out.stdout,
                         re.M):
        record(f"storage {m[1]} {MIB} MiB", backend, float(m[4]), float(m[5]), MIB, equal)
    if not equal:
        log(f"  bench_storage failed (exit {out.returncode}):\n{out.stdout}")
        rows.append((f"storage round trip {MIB} MiB", backend, 0.0, 0.0, 0.0, False))


def bench_watch_restore(backend, location, extra, src, src_hash, work):
    db = os.path.join(work, "bench.db")
    shutil.copyfile(src, db)
    db_mib = os.path.getsize(db) / (1 << 20)
    code, peak, secs = run_measured([WALRUST, "watch", db, "-b", location, *extra], os.path.join(work, "watch.log"),
                                    until=r"generation [0-9a-f]+ started at seq")
    record(f"watch first snapshot {db_mib:.0f} MiB", backend, peak, secs, db_mib, code == 0)

    out = os.path.join(work, "restored.db")
    code, peak, secs = run_measured([WALRUST, "restore", "bench", "-o", out, "-b", location, *extra],
                                    os.path.join(work, "restore.log"))
    equal = code == 0 and content_hash(out) == src_hash
    if code == 0 and not equal:
        log("  restored database differs from the source")
    record(f"restore {db_mib:.0f} MiB", backend, peak, secs, db_mib, equal)


def main():
    src, src_hash = source_db()
    s3 = s3util.S3(ENDPOINT, os.environ["AWS_ACCESS_KEY_ID"], os.environ["AWS_SECRET_ACCESS_KEY"],
                   os.environ.get("AWS_REGION", "us-east-1"))
    prefix = f"bench-{uuid.uuid4().hex[:12]}/"
    work = tempfile.mkdtemp(prefix="walrust-bench-work.", dir=os.environ.get("TMPDIR", "/tmp"))
    try:
        for backend in ("s3", "file"):
            loc = f"s3://{BUCKET}/{prefix}{backend}/" if backend == "s3" else f"file://{work}/store"
            extra = ["--endpoint", ENDPOINT] if backend == "s3" else []
            bench_storage(backend, loc + ("storage/" if backend == "s3" else "-storage"))
            case = os.path.join(work, backend)
            os.makedirs(case)
            bench_watch_restore(backend, loc, extra, src, src_hash, case)
            shutil.rmtree(case)
    finally:
        shutil.rmtree(work, ignore_errors=True)
        keys = [k for _, k in s3.list(BUCKET, prefix)]
        for i in range(0, len(keys), 1000):
            s3.delete_many(BUCKET, keys[i:i + 1000])

    log(f"\n| measurement | backend | peak RSS MiB | seconds | MiB/s | target (< {TARGET_MIB} MiB) |")
    log("|---|---|---:|---:|---:|---|")
    for what, backend, peak, secs, rate, ok in rows:
        log(f"| {what} | {backend} | {peak:.1f} | {secs:.1f} | {rate:.0f} | {'PASS' if ok else 'FAIL'} |")
    return 0 if rows and all(r[5] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
