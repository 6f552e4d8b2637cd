#!/usr/bin/env python3
"""Many-databases memory benchmark (issue #4), run by scripts/bench-memory (which builds walrust, installs
Litestream 0.5.17 into .venv and starts S3 first). Python 3 standard library only; reuses scripts/bench_helpers.py.

For each N in BENCH_MEM_COUNTS (default 1,10,100,1000):
  1. 2N databases of ~100 KB (WAL mode; copies of one template made with bench_helpers.make_db), N per tool in
     separate directories. ONE `walrust watch --config walrust.toml` ([[databases]] path = "DIR/*.db", interval 1s,
     [metrics] listen on a free port) and ONE `litestream replicate` (a config listing the N databases, sync-interval
     1s, `addr` for its Prometheus metrics), both against the same S3 server, started together. Waits (at most
     BENCH_MEM_READY_SECS, default 300) until walrust logged "generation ... started at seq" and Litestream
     "snapshot complete" once per database. walrust not ready in time, or exited: an error (exit 1). Litestream
     not ready in time: noted in the table ("k/N snapshots"), it keeps running; Litestream exited: its log tail is
     printed and the case goes on with walrust alone.
  2. Busy: one writer process (bench_helpers.run_writer) holds all 2N connections and commits one ~200-byte row per
     database per second, round-robin, for BENCH_MEM_SECS (default 60). Then VmRSS and VmHWM (peak over the whole
     life of the process, initial snapshots included) of each tool from /proc/PID/status.
  3. Drain: until walrust's request counters stood still for 3 s (at most 30 s), so the last writes' uploads are
     not counted as idle. Idle: no writes for BENCH_MEM_IDLE_SECS (default 60). CPU = utime + stime from /proc/PID/stat (clock ticks)
     over the phase, shown as CPU seconds per minute (1.2 s/min = 2% of one core). S3 requests in the phase:
     walrust's walrust_storage_requests_total{kind} (difference of /metrics before and after); Litestream's
     litestream_replica_operation_total (its own metrics; "n/a" if it exposes none).
  4. Where walrust's memory goes, from /proc/PID/smaps, after the busy and after the idle phase: Rss of the walrust
     binary's mappings (text, data); shared libraries and other files; [heap]; malloc arenas (anonymous rw-p
     mappings followed by a PROT_NONE reservation: glibc's per-thread arenas); thread stacks (approximation:
     anonymous rw-p mappings directly preceded by a PROT_NONE guard of <= 64 KiB, glibc's pthread stack layout);
     other anonymous mappings (large buffers mmap'd by malloc above its threshold); the main [stack]; mappings of
     -shm files (SQLite's shared-memory index, one per database) and how many; SQLite's share of the heap (walrust's
     walrust_sqlite_memory_bytes); threads (status `Threads:` and
     /proc/PID/task, with thread names grouped) and open fds by kind (/proc/PID/fd). Per database = (value at N -
     value at the smallest N) / (N - smallest N).
  5. A summary table (markdown) and the issue's targets: walrust peak RSS <= 8 MB at 100 databases and <= 24 MB at
     1000 (MB = 10^6 bytes), below a quarter of Litestream's at 100; idle CPU < 2% of one core at 1000 (< 1.2 CPU
     s/min); zero S3 requests while idle. Exit 0 even when a target is missed.

Environment: BENCH_MEM_COUNTS, BENCH_MEM_SECS, BENCH_MEM_IDLE_SECS, BENCH_MEM_READY_SECS (integers),
BENCH_KEEP=1 keeps the work dir; WALRUST_TEST_S3_ENDPOINT, WALRUST_TEST_S3_BUCKET, AWS_ACCESS_KEY_ID,
AWS_SECRET_ACCESS_KEY, AWS_REGION (scripts/s3-start). Litestream runs with AWS_CA_BUNDLE unset.
"""
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import bench_helpers as bh  # noqa: E402
import s3util  # noqa: E402

COUNTS = [int(x) for x in os.environ.get("BENCH_MEM_COUNTS", "1,10,100,1000").split(",") if x.strip()]
BUSY_SECS = int(os.environ.get("BENCH_MEM_SECS", "60"))
IDLE_SECS = int(os.environ.get("BENCH_MEM_IDLE_SECS", "60"))
READY_SECS = int(os.environ.get("BENCH_MEM_READY_SECS", "300"))
CLK = os.sysconf("SC_CLK_TCK")
MB = 1e6
log = bh.log


class Broken(Exception):
    """walrust (or the bench itself) failed: the run exits non-zero."""


# ---------------------------------------------------------------------------------------------------------------
# The two processes
# ---------------------------------------------------------------------------------------------------------------

class Proc(bh.Tool):
    """bench_helpers.Tool (ready_count, memory, metrics, stop) started from a config file with metrics on."""

    def __init__(self, name, dbdir, dbs, prefix, work):
        self.name, self.dbs, self.prefix, self.work = name, dbs, prefix, work
        self.log_path = os.path.join(work, f"{name}.log")
        self.metrics_port = bh.free_port()
        env = dict(os.environ)
        if name == "walrust":
            self.config = os.path.join(work, "walrust.toml")
            with open(self.config, "w") as f:
                f.write(f'[s3]\nbucket = "s3://{bh.BUCKET}/{prefix}"\nendpoint = "{bh.ENDPOINT}"\n'
                        f'[sync]\ninterval = "{bh.INTERVAL}"\n'
                        f'[metrics]\nlisten = "127.0.0.1:{self.metrics_port}"\n'
                        f'[[databases]]\npath = "{dbdir}/*.db"\n')
            cmd = [bh.WALRUST, "watch", "--config", self.config]
        else:
            env.pop("AWS_CA_BUNDLE", None)
            self.config = os.path.join(work, "litestream.yml")
            with open(self.config, "w") as f:
                f.write(f'addr: "127.0.0.1:{self.metrics_port}"\ndbs:\n')
                for db in dbs:
                    f.write(f"  - path: {db}\n    replica:\n      type: s3\n      bucket: {bh.BUCKET}\n"
                            f"      path: {prefix}/{bh.stem(db)}\n      endpoint: {bh.ENDPOINT}\n"
                            f"      region: {bh.REGION}\n      force-path-style: true\n"
                            f"      sync-interval: {bh.INTERVAL}\n")
            cmd = [bh.LITESTREAM, "replicate", "-config", self.config]
        self.err = open(self.log_path, "w")
        self.p = subprocess.Popen(cmd, stdout=self.err, stderr=subprocess.STDOUT, env=env)
        self.pid = self.p.pid
        self.ready_at = None  # seconds after start when every database had its initial snapshot
        self.started = time.time()

    def alive(self):
        return self.p.poll() is None

    def cpu(self):
        """utime + stime of the process (all threads), in seconds."""
        with open(f"/proc/{self.pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLK

    def requests(self):
        """Storage requests so far, {kind: count}; None when the tool exposes no such counter."""
        try:
            if self.name == "walrust":
                return self.metrics()
            with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5) as r:
                text = r.read().decode()
        except OSError as e:
            log(f"{self.name}: /metrics unreadable: {e}")
            return None
        out = {}
        for m in re.finditer(r'^litestream_replica_operation_total\{([^}]*)\} (\S+)', text, re.M):
            op = re.search(r'operation="([^"]*)"', m[1])
            k = op[1] if op else "?"
            out[k] = out.get(k, 0) + float(m[2])
        return out if out else None

    def tail(self, n=1500):
        return self.log_text()[-n:]


def sqlite_kib(w):
    """SQLite's heap in walrust (its walrust_sqlite_memory_bytes), KiB; None when unreadable."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{w.metrics_port}/metrics", timeout=5) as r:
            m = re.search(r'^walrust_sqlite_memory_bytes (\S+)', r.read().decode(), re.M)
        return round(float(m[1]) / 1024) if m else None
    except OSError:
        return None


def wait_ready(procs, timeout):
    """Waits until every process has its initial snapshots, has exited, or the deadline passed (whichever first,
    per process). Sets .ready_at."""
    deadline = time.time() + timeout
    pending = list(procs)
    last_report = time.time()
    while pending and time.time() < deadline:
        for p in list(pending):
            if p.ready_count() >= len(p.dbs):
                p.ready_at = time.time() - p.started
                log(f"{p.name}: {len(p.dbs)} initial snapshots in {p.ready_at:.1f} s")
                pending.remove(p)
            elif not p.alive():
                pending.remove(p)
        if time.time() - last_report > 30:
            last_report = time.time()
            log("waiting for initial snapshots: " + ", ".join(f"{p.name} {p.ready_count()}/{len(p.dbs)}"
                                                             for p in pending))
        time.sleep(0.5)


# ---------------------------------------------------------------------------------------------------------------
# /proc
# ---------------------------------------------------------------------------------------------------------------

HDR = re.compile(r"^([0-9a-f]+)-([0-9a-f]+) (\S{4}) \S+ \S+ \d+\s*(.*)$")

PARTS = [  # (key, label) in print order
    ("binary", "walrust binary (text, data)"),
    ("files", "shared libraries, other files"),
    ("heap", "[heap] (main malloc arena)"),
    ("arenas", "malloc arenas of other threads"),
    ("stacks", "thread stacks (anon rw-p > 16 KiB after a guard)"),
    ("altstacks", "signal stacks (anon rw-p <= 16 KiB after a guard)"),
    ("anon", "other anonymous (large buffers)"),
    ("mainstack", "main [stack]"),
    ("shm", "-shm mappings (SQLite shared memory)"),
    ("kernel", "[vdso], [vvar], other"),
]


def smaps(pid):
    """{part: [rss KiB, mappings]} for the parts above, plus "smaps_total"."""
    exe = os.readlink(f"/proc/{pid}/exe").removesuffix(" (deleted)")
    maps = []
    with open(f"/proc/{pid}/smaps") as f:
        for line in f:
            m = HDR.match(line)
            if m:
                maps.append({"start": int(m[1], 16), "end": int(m[2], 16), "perms": m[3],
                             "path": m[4].strip(), "rss": 0})
            elif line.startswith("Rss:"):
                maps[-1]["rss"] = int(line.split()[1])
    out = {k: [0, 0] for k, _ in PARTS}
    for i, m in enumerate(maps):
        path = m["path"].removesuffix(" (deleted)")
        prev = maps[i - 1] if i else None
        nxt = maps[i + 1] if i + 1 < len(maps) else None
        if path == exe:
            k = "binary"
        elif path.endswith("-shm"):
            k = "shm"
        elif path == "[heap]":
            k = "heap"
        elif path == "[stack]":
            k = "mainstack"
        elif path.startswith("["):
            k = "kernel"
        elif path:
            k = "files"
        elif m["perms"].startswith("---"):
            continue  # guard pages and unused arena reservations: nothing resident
        elif (prev and not prev["path"] and prev["perms"].startswith("---") and prev["end"] == m["start"]
              and prev["end"] - prev["start"] <= 64 << 10):
            k = "stacks" if m["end"] - m["start"] > 16 << 10 else "altstacks"
        elif nxt and not nxt["path"] and nxt["perms"].startswith("---") and nxt["start"] == m["end"]:
            k = "arenas"
        else:
            k = "anon"
        out[k][0] += m["rss"]
        out[k][1] += 1
    out["smaps_total"] = [sum(m["rss"] for m in maps), len(maps)]
    return out


def status(pid):
    vals = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            k, _, v = line.partition(":")
            if k in ("VmRSS", "VmHWM", "Threads", "RssAnon", "RssFile", "RssShmem"):
                vals[k] = int(v.split()[0])
    return vals


def fds(pid):
    kinds = {"db": 0, "-wal": 0, "-shm": 0, "socket": 0, "other": 0}
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            t = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if t.endswith(".db"):
            kinds["db"] += 1
        elif t.endswith("-wal"):
            kinds["-wal"] += 1
        elif t.endswith("-shm"):
            kinds["-shm"] += 1
        elif t.startswith("socket:"):
            kinds["socket"] += 1
        else:
            kinds["other"] += 1
    return kinds


def thread_names(pid):
    names = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/comm") as f:
                n = re.sub(r"\d+", "N", f.read().strip())
        except OSError:
            continue
        names[n] = names.get(n, 0) + 1
    return names


def snapshot(pid):
    """Everything about a process's memory at one moment."""
    s = status(pid)
    return {"status": s, "smaps": smaps(pid), "fds": fds(pid), "tasks": len(os.listdir(f"/proc/{pid}/task")),
            "names": thread_names(pid)}


# ---------------------------------------------------------------------------------------------------------------
# One N
# ---------------------------------------------------------------------------------------------------------------

def make_dbs(template, d, n):
    os.makedirs(d)
    paths = [os.path.join(d, f"db{i:04d}.db") for i in range(n)]
    for p in paths:
        shutil.copyfile(template, p)
    return paths


def run_case(n, run, root, template, s3):
    r = {"n": n, "ls_status": "ok", "ls_note": ""}
    work = os.path.join(root, f"n{n}")
    os.makedirs(work)
    dbs = {tool: make_dbs(template, os.path.join(work, f"{tool}-dbs"), n) for tool in ("walrust", "litestream")}
    log(f"=== {n} database{'s' if n > 1 else ''} per tool ({sum(os.path.getsize(p) for p in dbs['walrust']) / MB:.1f}"
        f" MB each set); starting walrust and Litestream")
    procs = {}
    try:
        for tool in ("walrust", "litestream"):
            procs[tool] = Proc(tool, os.path.join(work, f"{tool}-dbs"), dbs[tool], f"{run}/n{n}-{tool}", work)
        w, ls = procs["walrust"], procs["litestream"]
        wait_ready([w, ls], READY_SECS)
        if not w.alive():
            raise Broken(f"walrust exited {w.p.returncode} before its initial snapshots:\n{w.tail()}")
        if w.ready_at is None:
            raise Broken(f"walrust: {w.ready_count()}/{n} initial snapshots after {READY_SECS} s:\n{w.tail()}")
        r["w_ready"], r["ls_ready"] = w.ready_at, ls.ready_at
        if not ls.alive():
            r["ls_status"], r["ls_note"] = "exited", f"exited {ls.p.returncode} before its initial snapshots"
            log(f"litestream exited {ls.p.returncode} with {ls.ready_count()}/{n} snapshots; its log ends:\n"
                f"{ls.tail()}")
        elif ls.ready_at is None:
            r["ls_status"] = "timeout"
            r["ls_note"] = f"{ls.ready_count()}/{n} snapshots after {READY_SECS} s (kept running)"
            log(f"litestream: {r['ls_note']}; its log ends:\n{ls.tail()}")
        time.sleep(3)  # the last initial uploads settle
        active = [t for t in ("walrust", "litestream") if procs[t].alive()]

        # Busy
        c0 = {t: procs[t].cpu() for t in active}
        puts0 = (w.requests() or {}).get("put", 0)
        log(f"busy: 1 write/s on each of {n * len(active)} databases for {BUSY_SECS} s")
        t0 = time.time()
        try:
            wr = bh.run_writer(work, [p for t in active for p in dbs[t]], 1, BUSY_SECS)
        except subprocess.CalledProcessError as e:
            raise Broken(f"the writer failed: {e}")
        busy = time.time() - t0
        r["writes_per_s"] = len(wr["commits"]) / max(wr["t_end"] - wr["t_start"], 1e-9)
        if not w.alive():
            raise Broken(f"walrust exited {w.p.returncode} during the busy phase:\n{w.tail()}")
        if "litestream" in active and not ls.alive():
            r["ls_status"], r["ls_note"] = "exited", f"exited {ls.p.returncode} during the busy phase"
            log(f"litestream exited during the busy phase; its log ends:\n{ls.tail()}")
        active = [t for t in active if procs[t].alive()]
        for t in active:
            r[f"{t}_busy_cpu"] = (procs[t].cpu() - c0[t]) / busy * 60
            r[f"{t}_mem"] = procs[t].memory()
            r[f"{t}_busy_snap"] = snapshot(procs[t].pid)
        r["walrust_busy_snap"]["sqlite_kib"] = sqlite_kib(w)
        mem = "; ".join(f"{t} VmRSS {r[f'{t}_mem'][0]:.1f} MiB, VmHWM {r[f'{t}_mem'][1]:.1f} MiB" for t in active)
        if "litestream_mem" in r:
            mem += f"; walrust/Litestream peak {r['walrust_mem'][1] / r['litestream_mem'][1]:.2f}"
        log(f"after {busy:.0f} s busy ({r['writes_per_s']:.2f} writes/s per database): {mem}")
        # How walrust kept up: its uploads during the busy phase (fewer than the writes when each changeset carries
        # several of them); how long its last writes took to ship is measured just below.
        r["walrust_busy_puts"] = (w.requests() or {}).get("put", 0) - puts0
        log(f"walrust: {r['walrust_busy_puts'] / busy / n:.2f} PUT/s per database while busy")

        # Drain: the last writes are shipped (walrust's request counters unchanged for 3 s, at most 30 s; Litestream's
        # keep moving with its compactions), then idle.
        t0, last, stable_since = time.time(), None, time.time()
        while time.time() - t0 < 30:
            now = w.requests()
            if now != last:
                last, stable_since = now, time.time()
            elif time.time() - stable_since >= 3:
                break
            time.sleep(0.5)
        r["drain"] = time.time() - t0
        log(f"idle: no writes for {IDLE_SECS} s (walrust's last writes were shipped about "
            f"{max(r['drain'] - 3.5, 0):.1f} s after the writer stopped, +-0.5 s: its requests then stayed unchanged "
            f"for 3 s)")
        c0 = {t: procs[t].cpu() for t in active}
        q0 = {t: procs[t].requests() for t in active}
        t0 = time.time()
        while time.time() - t0 < IDLE_SECS:
            if not w.alive():
                raise Broken(f"walrust exited {w.p.returncode} during the idle phase:\n{w.tail()}")
            time.sleep(min(1.0, max(0.0, IDLE_SECS - (time.time() - t0))))
        idle = time.time() - t0
        for t in active:
            if not procs[t].alive():
                continue
            c1, q1 = procs[t].cpu(), procs[t].requests()
            r[f"{t}_idle_cpu"] = (c1 - c0[t]) / idle * 60
            if q0[t] is not None and q1 is not None:
                r[f"{t}_idle_req"] = {k: q1.get(k, 0) - q0[t].get(k, 0) for k in q1 if q1.get(k, 0) - q0[t].get(k, 0)}
            r[f"{t}_idle_snap"] = snapshot(procs[t].pid)
        if "walrust_idle_snap" in r:
            r["walrust_idle_snap"]["sqlite_kib"] = sqlite_kib(w)
        if "walrust_idle_req" not in r:
            raise Broken("walrust's /metrics gave no walrust_storage_requests_total")
        log("idle: " + "; ".join(
            f"{t} {r[f'{t}_idle_cpu']:.2f} CPU s/min, S3 requests "
            + (fmt_req(r[f"{t}_idle_req"]) if f"{t}_idle_req" in r else "n/a") for t in active if f"{t}_idle_cpu" in r))
    finally:
        for t, p in procs.items():
            code = p.stop(30)
            if t == "walrust" and code != 0:
                log(f"walrust exited {code} when stopped; its log ends:\n{p.tail()}")
        if os.environ.get("BENCH_KEEP"):
            log(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
        try:
            keys = [k for _, k in s3.list(bh.BUCKET, f"{run}/n{n}-")]
            for i in range(0, len(keys), 1000):
                s3.delete_many(bh.BUCKET, keys[i:i + 1000])
        except Exception as e:  # noqa: BLE001
            log(f"cleanup of s3://{bh.BUCKET}/{run}/n{n}-* failed: {e}")
    return r


def fmt_req(q):
    return f"{sum(q.values()):.0f}" + (f" ({', '.join(f'{k} {v:.0f}' for k, v in sorted(q.items()))})" if q else "")


# ---------------------------------------------------------------------------------------------------------------
# Tables
# ---------------------------------------------------------------------------------------------------------------

def breakdown_rows(snap):
    """[(label, KiB or None, count or None)] for one snapshot."""
    st, sm, fd = snap["status"], snap["smaps"], snap["fds"]
    rows = [("VmRSS (total)", st["VmRSS"], None)]
    for k, label in PARTS:
        rows.append((label, sm[k][0], sm[k][1]))
    rows.append(("sum of smaps Rss (check)", sm["smaps_total"][0], sm["smaps_total"][1]))
    rows.append(("threads (status / task dir)", None, f"{st['Threads']} / {snap['tasks']}"))
    rows.append(("open fds: total", None, sum(fd.values())))
    for k in ("db", "-wal", "-shm", "socket", "other"):
        note = (" (each pin's file, and the descriptor SQLite keeps of a closed connection while this process "
                "holds locks on the database)") if k == "db" else ""
        rows.append((f"open fds: {k}{note}", None, fd[k]))
    if snap.get("sqlite_kib") is not None:
        after_heap = 2 + [k for k, _ in PARTS].index("heap")
        rows.insert(after_heap, ("of the heap: SQLite's (walrust_sqlite_memory_bytes)", snap["sqlite_kib"], None))
    return rows


def per_db(a, b, na, nb):
    if a is None or b is None or nb == na:
        return ""
    try:
        return f"{(float(b) - float(a)) / (nb - na):.1f}"
    except (TypeError, ValueError):
        return ""


def print_breakdown(r, base):
    n = r["n"]
    b, i = r["walrust_busy_snap"], r.get("walrust_idle_snap")
    rb, ri = breakdown_rows(b), breakdown_rows(i) if i else None
    base_rows = breakdown_rows(base["walrust_busy_snap"]) if base and base["n"] != n else None
    nb = base["n"] if base_rows else None
    print(f"\n#### walrust, {n} database{'s' if n > 1 else ''}: where the memory goes "
          f"(after {BUSY_SECS} s busy / after {IDLE_SECS} s idle)\n")
    hdr = "| part | busy: Rss KiB | busy: mappings/count | idle: Rss KiB | idle: mappings/count |"
    sep = "|---|---:|---:|---:|---:|"
    if base_rows:
        hdr += f" per extra database (busy, vs {nb}): KiB | per extra database: count |"
        sep += "---:|---:|"
    print(hdr)
    print(sep)
    for j, (label, kib, cnt) in enumerate(rb):
        cells = [label, "" if kib is None else f"{kib}", "" if cnt is None else f"{cnt}"]
        if ri:
            cells += ["" if ri[j][1] is None else f"{ri[j][1]}", "" if ri[j][2] is None else f"{ri[j][2]}"]
        else:
            cells += ["", ""]
        if base_rows:
            _, bk, bc = base_rows[j]
            cnt_a = bc.split(" / ")[0] if isinstance(bc, str) else bc
            cnt_b = cnt.split(" / ")[0] if isinstance(cnt, str) else cnt
            cells += [per_db(bk, kib, nb, n), per_db(cnt_a, cnt_b, nb, n)]
        print("| " + " | ".join(cells) + " |")
    names = ", ".join(f"{k} x{v}" for k, v in sorted(b["names"].items(), key=lambda kv: -kv[1]))
    print(f"\nthreads by name (digits as N), busy: {names}")
    if "litestream_busy_snap" in r:
        ls = r["litestream_busy_snap"]
        print(f"Litestream, busy: VmRSS {ls['status']['VmRSS']} KiB (anonymous {ls['status']['RssAnon']}, "
              f"file {ls['status']['RssFile']}, shmem {ls['status']['RssShmem']}), threads {ls['status']['Threads']}, "
              f"open fds {sum(ls['fds'].values())} ({', '.join(f'{k} {v}' for k, v in ls['fds'].items())})")
    sys.stdout.flush()


def f1(x):
    return "n/a" if x is None else f"{x:.1f}" if x >= 1 else f"{x:.2f}"


def print_summary(results, failed):
    print(f"\n### walrust vs Litestream 0.5.17: one process for N databases "
          f"({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {os.cpu_count()} CPUs, ~100 KB databases, "
          f"sync interval {bh.INTERVAL}, {BUSY_SECS} s of 1 write/s per database, then {IDLE_SECS} s idle)\n")
    print("| N | walrust RSS MiB | walrust peak (VmHWM) MiB | Litestream RSS MiB | Litestream peak MiB | "
          "walrust peak / Litestream peak | walrust busy CPU s/min | Litestream busy CPU s/min | "
          "walrust idle CPU s/min | Litestream idle CPU s/min | walrust idle S3 requests | "
          "Litestream idle S3 requests | walrust threads | walrust fds | initial snapshots, s (walrust / Litestream) "
          "| Litestream |")
    print("|" + "---:|" * 15 + "---|")
    for r in results:
        wm, lm = r.get("walrust_mem"), r.get("litestream_mem")
        ratio = f"{wm[1] / lm[1]:.2f}" if wm and lm else "n/a"
        ws = r.get("walrust_busy_snap")
        cells = [str(r["n"]), f1(wm and wm[0]), f1(wm and wm[1]), f1(lm and lm[0]), f1(lm and lm[1]), ratio,
                 f1(r.get("walrust_busy_cpu")), f1(r.get("litestream_busy_cpu")),
                 f1(r.get("walrust_idle_cpu")), f1(r.get("litestream_idle_cpu")),
                 fmt_req(r["walrust_idle_req"]) if "walrust_idle_req" in r else "n/a",
                 fmt_req(r["litestream_idle_req"]) if "litestream_idle_req" in r else "n/a",
                 str(ws["status"]["Threads"]) if ws else "n/a", str(sum(ws["fds"].values())) if ws else "n/a",
                 f"{f1(r.get('w_ready'))} / {f1(r.get('ls_ready'))}",
                 r["ls_status"] + (f": {r['ls_note']}" if r["ls_note"] else "")]
        print("| " + " | ".join(cells) + " |")
    for n, err in failed:
        print(f"| {n} | FAILED: {err.splitlines()[0][:150]} |" + " |" * 14)

    by_n = {r["n"]: r for r in results}

    def peak(n, tool="walrust"):
        m = by_n.get(n, {}).get(f"{tool}_mem")
        return m[1] * 1024 * 1024 if m else None

    rows = []
    for n, limit in ((100, 8), (1000, 24)):
        p = peak(n)
        rows.append((f"walrust peak RSS <= {limit} MB at {n} databases",
                     f"{p / MB:.1f} MB ({p / 2 ** 20:.1f} MiB)" if p else "not measured",
                     None if p is None else p <= limit * MB))
    p, lp = peak(100), peak(100, "litestream")
    rows.append(("walrust peak RSS < 1/4 of Litestream's at 100 databases",
                 f"{p / lp:.2f}x ({p / MB:.1f} vs {lp / MB:.1f} MB)" if p and lp else "not measured",
                 None if not (p and lp) else p < lp / 4))
    cpu = by_n.get(1000, {}).get("walrust_idle_cpu")
    rows.append(("walrust idle CPU < 2% of one core at 1000 databases (< 1.2 CPU s/min)",
                 "not measured" if cpu is None else f"{cpu:.2f} CPU s/min ({cpu / 60 * 100:.2f}% of one core)",
                 None if cpu is None else cpu < 1.2))
    reqs = [(r["n"], sum(r["walrust_idle_req"].values())) for r in results if "walrust_idle_req" in r]
    rows.append(("walrust makes zero S3 requests while idle (every N)",
                 ", ".join(f"{n}: {q:.0f}" for n, q in reqs) or "not measured",
                 None if not reqs else all(q == 0 for _, q in reqs)))
    print("\n| target (issue #4) | measured | |\n|---|---|---|")
    for label, got, ok in rows:
        print(f"| {label} | {got} | {'not measured' if ok is None else 'met' if ok else '**missed**'} |")
    sys.stdout.flush()


# ---------------------------------------------------------------------------------------------------------------

def main():
    if not bh.ENDPOINT or not bh.BUCKET:
        sys.exit("WALRUST_TEST_S3_ENDPOINT and WALRUST_TEST_S3_BUCKET are required (scripts/s3-start)")
    s3 = s3util.S3(bh.ENDPOINT, os.environ["AWS_ACCESS_KEY_ID"], os.environ["AWS_SECRET_ACCESS_KEY"], bh.REGION)
    run = f"bench-memory-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"
    root = tempfile.mkdtemp(prefix="walrust-bench-mem.", dir=os.environ.get("TMPDIR", "/tmp"))
    import resource
    log(f"walrust {bh.WALRUST}, litestream {bh.LITESTREAM}; S3 {bh.ENDPOINT}; prefix {run}; work dir {root}; "
        f"N = {COUNTS}, busy {BUSY_SECS} s, idle {IDLE_SECS} s, ready within {READY_SECS} s; "
        f"fd limit {resource.getrlimit(resource.RLIMIT_NOFILE)[0]}")
    template = os.path.join(root, "template.db")
    bh.make_db(template, 100)
    results, failed = [], []
    started = time.time()
    try:
        for n in COUNTS:
            t0 = time.time()
            try:
                r = run_case(n, run, root, template, s3)
            except Broken as e:
                log(f"{n} databases: FAILED: {e}")
                failed.append((n, str(e)))
                continue
            results.append(r)
            print_breakdown(r, results[0] if results[0] is not r else None)
            log(f"=== {n} databases took {time.time() - t0:.0f} s")
    finally:
        if os.environ.get("BENCH_KEEP"):
            log(f"kept {root} (BENCH_KEEP)")
        else:
            shutil.rmtree(root, ignore_errors=True)
    log(f"total {time.time() - started:.0f} s")
    print_summary(results, failed)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
