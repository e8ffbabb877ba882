"""Soak: the features pipeline and a stream of jobs at fixed rates for a bounded time, with faults on
a schedule, on a private stack this script starts and stops (``--secure``: the secure stack, every
process as its own principal, the HTTP API over TLS with a bearer token).

Processes: the features stream worker (exactly-once), the control app, one job worker (all
``mystocks-gpu`` subprocesses); this script produces ticks at ``--tick-rate`` (``ts_event`` = the
wall clock at produce time, a per-symbol ``seq``), submits ``echo`` jobs at ``--job-rate`` over
HTTP, and consumes ``features.ticks`` (read_committed).

Faults (default schedule at 25 %, 50 % and 75 % of the run; ``--faults KIND@SECONDS,...``):
``worker_kill`` (SIGKILL the stream worker and the job worker, restart both), ``broker_restart``
(stop and start Kafka, data kept), ``redis_restart`` (stop and start Redis: it comes back empty).

Reported (printed and ``--json``): records in == out checked by key + seq (every produced tick has
exactly one feature vector: missing and duplicates counted; input offsets from delivery reports),
RSS of every process over time (flat within ``--rss-growth``: median of the last third over the
median of the second sixth, after warm-up, on the last incarnation of each process; not this
checker, which keeps every key it saw), consumer lag over time (max, final 0), tick->feature
latency p50/p99 per window and overall, jobs submitted == succeeded with their p99 latency, each
fault with its recovery time (watched while sampling goes on; over ``--recovery-timeout`` fails).
A process that exits on its own is restarted, as a supervisor would (listed in ``restarts``
with its exit code; processes wait up to ``--recovery-timeout`` for a broker that a fault took
down). Exit 1 when a check fails. ``--quick``: 90 s, sampled every 2 s.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from confluent_kafka import TopicPartition  # noqa: E402

from mystocks_gpu.infra.config import Settings, StackConfig, load_settings  # noqa: E402
from mystocks_gpu.infra.exceptions import StackError  # noqa: E402
from mystocks_gpu.infra.kafka_clients import make_consumer, make_producer  # noqa: E402
from mystocks_gpu.infra.stack import LocalStack  # noqa: E402
from mystocks_gpu.infra.stack_secure import SecureStack  # noqa: E402
from mystocks_gpu.schemas import AvroCodec  # noqa: E402
from mystocks_gpu.schemas.schema_store import default_store  # noqa: E402
from mystocks_gpu.topics import all_specs  # noqa: E402
from mystocks_gpu.topics.admin import TopicAdmin  # noqa: E402

FAULTS = ("worker_kill", "broker_restart", "redis_restart")
#: the checker's own clients: no connection-refused lines while a fault takes the broker down (critical only)
QUIET = {"log_level": 2}
#: what a server says when a port drawn free was bound by another process first
PORT_CLASH = ("is taken by another process", "Address already in use", "address already in use")


def _free_ports(n: int) -> list[int]:
    out: list[int] = []
    rng = np.random.default_rng()
    while len(out) < n:
        p = int(rng.integers(20000, 32000))
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", p))
            except OSError:
                continue
        if p not in out:
            out.append(p)
    return out


def _rss_mb(pid: int | None) -> float | None:
    if not pid:
        return None
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def _pct(xs: list[float], q: float) -> float | None:
    return float(np.percentile(xs, q)) if xs else None


class Soak:
    """One soak run (see the module docstring)."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.tag = uuid.uuid4().hex[:6]
        self.web_port = 0  # the control app binds a port of the kernel's choice; read from its log
        home = ROOT / ".stack" / f"soak-{os.getpid()}"
        self.stack: LocalStack = self._make_stack(home)
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.logs = home / "logs"
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.t0 = 0.0
        self.produced: dict[str, int] = {}  # symbol -> records produced (seq 0..n-1)
        self.delivered_offsets: set[tuple[int, int]] = set()
        self.delivery_errors = 0
        self.out_counts: dict[tuple[str, int], int] = {}
        self.lat_window: list[float] = []
        self.lat_all: list[float] = []
        self.jobs: dict[str, dict[str, Any]] = {}
        self.job_errors: list[str] = []
        self.timeline: list[dict[str, Any]] = []
        self.fault_log: list[dict[str, Any]] = []
        self.token: str | None = None
        self.not_run: list[str] = []
        self.spawned: dict[str, tuple[str, tuple[str, ...]]] = {}
        self.restarts: list[dict[str, Any]] = []
        self.closing = False

    def _make_stack(self, home: Path) -> LocalStack:
        kp, cp, rp = _free_ports(3)
        cfg = StackConfig(kafka_port=kp, controller_port=cp, redis_port=rp, home=str(home),
                          startup_timeout_s=self.args.startup_timeout)
        return SecureStack(cfg) if self.args.secure else LocalStack(cfg)

    def stack_up(self, attempts: int = 3) -> None:
        """Start the stack; when a port drawn free is bound by another process before the stack binds
        it (a race with other programs), start again on new ports (``attempts`` in all)."""
        for attempt in range(1, attempts + 1):
            try:
                self.stack.up()
                return
            except StackError as exc:
                self.stack.down()
                if attempt == attempts or not any(c in str(exc) for c in PORT_CLASH):
                    raise
                shutil.rmtree(self.stack.home, ignore_errors=True)
                print(f"  a port was taken before the stack bound it; new ports (attempt {attempt + 1})", flush=True)
                self.stack = self._make_stack(self.stack.home)

    # ---- settings per principal ----------------------------------------------------------
    def env(self, principal: str) -> dict[str, str]:
        base = {k: v for k, v in os.environ.items() if not k.startswith("MYSTOCKS_")}
        # a process (re)started while a fault has the broker down waits for it instead of exiting
        base.update({"PYTHONUNBUFFERED": "1", "MYSTOCKS_BACKEND": "cpu",
                     "MYSTOCKS_KAFKA__CONNECT_TIMEOUT_S": str(self.args.recovery_timeout)})
        if isinstance(self.stack, SecureStack):
            base.update(self.stack.env(principal))
            pki = self.stack.pki
            base.update({"MYSTOCKS_API__AUTH_FILE": str(self.stack.home / "tokens.json"),
                         "MYSTOCKS_API__TLS_CERT_FILE": str(pki.cert), "MYSTOCKS_API__TLS_KEY_FILE": str(pki.key),
                         "MYSTOCKS_API__SUBMIT_BURST": "1000", "MYSTOCKS_API__SUBMIT_RATE_PER_S": "100"})
        else:
            base.update({"MYSTOCKS_KAFKA__BOOTSTRAP_SERVERS": self.stack.bootstrap,
                         "MYSTOCKS_REDIS__URL": self.stack.redis_url})
        return base

    def settings(self, principal: str = "admin") -> Settings:
        return load_settings(environ={k: v for k, v in self.env(principal).items() if k.startswith("MYSTOCKS_")})

    @property
    def url(self) -> str:
        if not self.web_port:
            self.web_port = self._read_port()
        return f"{'https' if self.args.secure else 'http'}://127.0.0.1:{self.web_port}"

    # ---- processes -----------------------------------------------------------------------
    def spawn(self, name: str, principal: str, *args: str) -> None:
        self.logs.mkdir(parents=True, exist_ok=True)
        log = open(self.logs / f"{name}.log", "ab")  # noqa: SIM115
        self.procs[name] = subprocess.Popen([sys.executable, "-m", "mystocks_gpu.cli", *args], cwd=ROOT, stdout=log,
                                            stderr=subprocess.STDOUT, env=self.env(principal))
        self.spawned[name] = (principal, args)

    def supervise(self) -> None:
        """Restart a process that exited on its own (as a supervisor would; counted and reported with
        its exit code: a component that gives up during a fault shows here)."""
        for name, p in list(self.procs.items()):
            rc = p.poll()
            if rc is not None and not self.closing:
                self.restarts.append({"t_s": round(time.monotonic() - self.t0, 1), "process": name, "exit_code": rc})
                print(f"  {name} exited ({rc}): restarted", flush=True)
                principal, args = self.spawned[name]
                if name == "control":
                    self.web_port = 0  # it binds a new port: read again from its log
                self.spawn(name, principal, *args)

    def start_features(self) -> None:
        self.spawn("features", "stream", "run", "features", "--group", f"mystocks.soak-{self.tag}", "--worker-id",
                   "soak-0", "--linger-ms", "20")

    def start_jobworker(self) -> None:
        self.spawn("jobworker", "jobworker", "worker", "--id", f"soak-{self.tag}", "--namespace", f"soak{self.tag}",
                   "--kinds", "echo,sleep", "--heartbeat-ttl", "3", "--heartbeat-interval", "0.5")

    def start_control(self) -> None:
        self.spawn("control", "control", "control", "--port", "0", "--namespace", f"soak{self.tag}",
                   "--app-id", f"mystocks-soak-{self.tag}", "--heartbeat-ttl", "3", "--tick", "0.25")

    def kill(self, name: str) -> None:
        p = self.procs[name]
        if p.poll() is None:
            p.send_signal(signal.SIGKILL)
            p.wait(timeout=30)

    # ---- HTTP ------------------------------------------------------------------------------
    def http(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        import ssl

        data = json.dumps(body).encode() if body is not None else None
        headers = {"Content-Type": "application/json"}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        ctx = ssl.create_default_context(cafile=str(self.stack.pki.ca)) if isinstance(self.stack, SecureStack) else None
        req = urllib.request.Request(self.url + path, data=data, method=method, headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=15, context=ctx) as r:
                return r.status, json.loads(r.read() or b"null")
        except urllib.error.HTTPError as exc:
            try:
                return exc.code, json.loads(exc.read() or b"null")
            except ValueError:
                return exc.code, None
        except (OSError, ValueError) as exc:
            return 0, str(exc)

    def _read_port(self) -> int:
        """The control app's port from its log (the latest start's), 0 while it is not listening yet."""
        try:
            bound = re.findall(r"control web server on https?://[^ ]+:(\d+)",
                               (self.logs / "control.log").read_text(errors="replace"))
        except OSError:
            return 0
        return int(bound[-1]) if bound else 0

    def _control_ready(self) -> bool:
        if not self.web_port:
            self.web_port = self._read_port()
            if not self.web_port:
                return False
        st, body = self.http("GET", "/health")
        return st == 200 and isinstance(body, dict) and bool(body.get("ready"))

    # ---- load ------------------------------------------------------------------------------
    def produce_loop(self) -> None:
        codec = AvroCodec(default_store())
        producer = make_producer(self.settings("ingest" if self.args.secure else "admin").kafka,
                                 **{"linger.ms": 5, **QUIET})
        syms = [f"SK{self.tag.upper()}{k:03d}" for k in range(self.args.symbols)]
        rng = np.random.default_rng(11)
        mids = {s: 100.0 for s in syms}

        def on_delivery(err: Any, msg: Any) -> None:
            with self.lock:
                if err is not None:
                    self.delivery_errors += 1
                else:
                    self.delivered_offsets.add((msg.partition(), msg.offset()))

        period = 1.0 / self.args.tick_rate
        nxt = time.monotonic()
        i = 0
        while not self.stop.is_set():
            sym = syms[i % len(syms)]
            mid = mids[sym] = max(1.0, mids[sym] * (1 + rng.normal(0, 1e-4)))
            trade = i % 3 == 0
            seq = self.produced.get(sym, 0)
            ts_ns = time.time_ns()
            rec = {"symbol": sym, "ts_event": ts_ns, "seq": seq, "kind": "TRADE" if trade else "QUOTE",
                   "price": mid, "size": 100.0 if trade else 0.0, "side": 1 if trade else 0, "bid": mid - 0.01,
                   "ask": mid + 0.01, "bid_size": 500.0, "ask_size": 500.0}
            value = codec.encode("mystocks.md.Tick", rec)
            while True:
                try:
                    producer.produce("md.ticks", key=sym.encode(), value=value, timestamp=ts_ns // 1_000_000,
                                     on_delivery=on_delivery)
                    break
                except BufferError:
                    producer.poll(0.05)
            with self.lock:
                self.produced[sym] = seq + 1
            i += 1
            producer.poll(0)
            nxt += period
            delay = nxt - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            elif delay < -1.0:
                nxt = time.monotonic()  # fell behind (a fault): no burst to catch up
        producer.flush(120)

    def consume_loop(self, start: dict[int, int]) -> None:
        s = self.settings("admin")
        c = make_consumer(s.kafka, f"mystocks-soakread-{self.tag}", **{"isolation.level": "read_committed", **QUIET})
        c.assign([TopicPartition("features.ticks", p, o) for p, o in start.items()])
        fid = default_store().by_name("mystocks.features.FeatureVector").id
        while not self.stop.is_set() or not self.drained.is_set():
            for m in c.consume(2000, timeout=0.5):
                if m.error() or m.value() is None:
                    continue
                v = m.value()
                if struct.unpack(">I", v[1:5])[0] != fid:
                    continue
                seq, ts = _seq_ts(v)
                now = time.time_ns()
                key = (m.key().decode(), seq)
                with self.lock:
                    self.out_counts[key] = self.out_counts.get(key, 0) + 1
                    lat = (now - ts) / 1e6
                    self.lat_window.append(lat)
                    self.lat_all.append(lat)
        c.close()

    def job_loop(self) -> None:
        period = 1.0 / self.args.job_rate
        nxt = time.monotonic()
        n = 0
        last_poll = 0.0
        while not self.stop.is_set():
            if time.monotonic() >= nxt:
                jid = f"soak-{self.tag}-{n}"
                n += 1
                self.jobs[jid] = {"submitted": time.time(), "state": "submitting"}
                nxt += period
            for jid, j in list(self.jobs.items()):  # (re)submit what is not accepted yet: same id, idempotent
                if j["state"] == "submitting":
                    st, body = self.http("POST", "/jobs", {"kind": "echo", "spec": {"message": jid}, "job_id": jid,
                                                           "bypass_cache": True})
                    if st in (202, 409):
                        j["state"] = "queued"
                    elif len(self.job_errors) < 50:
                        self.job_errors.append(f"{st} {str(body)[:120]}")
                        break
            if time.monotonic() - last_poll > 2.0:
                self.poll_jobs()
                last_poll = time.monotonic()
            time.sleep(0.05)

    def poll_jobs(self) -> None:
        st, body = self.http("GET", "/jobs?limit=100000")
        if st != 200:
            return
        for j in body["jobs"]:
            mine = self.jobs.get(j["job_id"])
            if mine is not None and j["state"] != mine["state"]:
                mine["state"] = j["state"]
                if j["state"] in ("succeeded", "failed", "cancelled", "rejected") and j.get("finished_ns"):
                    mine["latency_s"] = max(0.0, j["finished_ns"] / 1e9 - mine["submitted"])

    # ---- sampling --------------------------------------------------------------------------
    def lag(self) -> int | None:
        try:
            # the group's committed offsets through a consumer of that group that never joins it
            # (no subscribe) -- not AdminClient.list_consumer_group_offsets: librdkafka (2.x) crashes
            # the process (SIGSEGV in rd_kafka_cgrp_op from rd_kafka_handle_OffsetFetch, an admin
            # client has no cgrp) when that call meets a restarting broker's coordinator error
            tps = self._lag_consumer.committed([TopicPartition("md.ticks", p) for p in self._parts], timeout=5)
            committed = {tp.partition: tp.offset for tp in tps}
            total = 0
            for p, hi in self._high_watermarks().items():
                total += max(0, hi - max(committed.get(p, self._start_in.get(p, 0)), 0))
            return total
        except Exception:  # noqa: BLE001 - the broker may be restarting: no sample
            return None

    def _high_watermarks(self) -> dict[int, int]:
        out = {}
        for p in self._parts:
            _, hi = self._wm.get_watermark_offsets(TopicPartition("md.ticks", p), timeout=5)
            out[p] = hi
        return out

    def sample(self) -> dict[str, Any]:
        t = time.monotonic() - self.t0
        pids = {"kafka": self.stack.pid("kafka"), "redis": self.stack.pid("redis"), "soak": os.getpid(),
                **{n: p.pid if p.poll() is None else None for n, p in self.procs.items()}}
        with self.lock:
            lat, self.lat_window = self.lat_window, []
            out_n = len(self.out_counts)
            produced = sum(self.produced.values())
        row = {"t_s": round(t, 1), "rss_mb": {k: (round(v, 1) if v is not None else None)
                                               for k, v in ((n, _rss_mb(p)) for n, p in pids.items())},
               "pid": dict(pids), "lag": self.lag(), "p50_ms": _pct(lat, 50), "p99_ms": _pct(lat, 99), "n_lat": len(lat),
               "produced": produced, "out_unique": out_n,
               "jobs_done": sum(1 for j in self.jobs.values() if j["state"] == "succeeded")}
        self.timeline.append(row)
        return row

    # ---- faults ----------------------------------------------------------------------------
    def fault(self, kind: str) -> dict[str, Any]:
        """Inject one fault now; its recovery is watched by :meth:`check_recoveries` (sampling goes on)."""
        t = time.monotonic()
        with self.lock:
            before_out = len(self.out_counts)
        done_before = {j for j, v in list(self.jobs.items()) if v["state"] == "succeeded"}
        if kind == "worker_kill":
            self.kill("features")
            self.kill("jobworker")
            self.start_features()
            self.start_jobworker()
        elif kind == "broker_restart":
            self.stack.restart_kafka()
        elif kind == "redis_restart":
            self.stack._stop("redis")
            self.stack.start_redis()
        else:
            raise SystemExit(f"unknown fault {kind}; faults: {', '.join(FAULTS)}")
        took = time.monotonic() - t
        entry = {"at_s": round(t - self.t0, 1), "kind": kind, "action_s": round(took, 1), "recovered_s": None,
                 "_t": t, "_out": before_out, "_done": done_before}
        print(f"  fault {kind} at {entry['at_s']} s: done in {took:.1f} s", flush=True)
        return entry

    def check_recoveries(self) -> None:
        """A fault has recovered once new feature vectors flow (over 10 more than before it) and a job
        that had not succeeded before it has succeeded; the time from the fault is recorded."""
        now = time.monotonic()
        for f in self.fault_log:
            if f["recovered_s"] is not None or "_t" not in f:
                continue
            with self.lock:
                flowing = len(self.out_counts) > f["_out"] + 10
            jobs_ok = any(v["state"] == "succeeded" and j not in f["_done"] for j, v in list(self.jobs.items()))
            if flowing and jobs_ok:
                f["recovered_s"] = round(now - f["_t"], 1)
                print(f"  fault {f['kind']} at {f['at_s']} s: recovered in {f['recovered_s']} s", flush=True)

    # ---- the run ---------------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        a = self.args
        print(f"soak {self.tag}: {a.duration:.0f} s, {a.tick_rate:.0f} ticks/s, {a.job_rate:g} jobs/s, "
              f"{'SECURE ' if a.secure else ''}stack in {self.stack.home}", flush=True)
        self.stack_up()
        admin_s = self.settings("admin")
        TopicAdmin(admin_s.kafka).create(all_specs())
        if isinstance(self.stack, SecureStack):
            from mystocks_gpu.infra.api_tokens import TokenStore

            store = TokenStore()
            self.token = store.add("soak", ["admin"])
            store.save(self.stack.home / "tokens.json")
        self._lag_consumer = make_consumer(admin_s.kafka, f"mystocks.soak-{self.tag}",
                                           **{"isolation.level": "read_uncommitted", **QUIET})
        self._wm = make_consumer(admin_s.kafka, f"mystocks-soakwm-{self.tag}", **QUIET)
        self._parts = sorted(self._wm.list_topics("md.ticks", timeout=10).topics["md.ticks"].partitions)
        # (just created: leaders may not be elected yet)
        self._start_in = _retry(self._high_watermarks, "md.ticks watermarks")
        out_parts = sorted(self._wm.list_topics("features.ticks", timeout=10).topics["features.ticks"].partitions)
        start_out = _retry(lambda: {p: self._wm.get_watermark_offsets(TopicPartition("features.ticks", p), timeout=5)[1]
                                    for p in out_parts}, "features.ticks watermarks")
        self.start_control()
        self.start_jobworker()
        self.start_features()
        end = time.monotonic() + 180
        while not self._control_ready():
            if time.monotonic() > end or self.procs["control"].poll() is not None:
                raise SystemExit(f"control app not ready in 180 s; see {self.logs}/control.log")
            time.sleep(0.5)
        self.drained = threading.Event()
        threads = [threading.Thread(target=self.produce_loop, daemon=True),
                   threading.Thread(target=self.consume_loop, args=(start_out,), daemon=True),
                   threading.Thread(target=self.job_loop, daemon=True)]
        self.t0 = time.monotonic()
        for th in threads:
            th.start()
        schedule = sorted(_schedule(a.faults, a.duration), key=lambda f: f[0])
        last = 0.0
        while (now := time.monotonic() - self.t0) < a.duration:
            if schedule and now >= schedule[0][0]:
                self.fault_log.append(self.fault(schedule.pop(0)[1]))
                continue
            self.check_recoveries()
            self.supervise()
            if now - last >= a.sample_s:
                last = now
                row = self.sample()
                print(f"  t={row['t_s']:>6.0f}s lag={row['lag']} p99={_fmt(row['p99_ms'])} ms "
                      f"out={row['out_unique']}/{row['produced']} jobs={row['jobs_done']}/{len(self.jobs)} "
                      f"rss={ {k: v for k, v in row['rss_mb'].items() if v} }", flush=True)
            time.sleep(0.2)
        self.not_run = [k for _, k in schedule]  # a fault that took longer than planned pushed them past the end
        self.stop.set()
        threads[0].join(timeout=150)
        # drain: every produced tick out (or the bound), every job final
        want = sum(self.produced.values())
        end = time.monotonic() + a.drain_timeout
        while time.monotonic() < end:
            self.poll_jobs()
            self.check_recoveries()
            self.supervise()
            if len(self.out_counts) >= want and all(j["state"] in ("succeeded", "failed", "cancelled", "rejected")
                                                    for j in self.jobs.values() if j["state"] != "submitting"):
                break
            time.sleep(1.0)
        self.check_recoveries()
        final_lag = self.lag()
        self.drained.set()
        threads[1].join(timeout=10)
        return self.summary(final_lag)

    def summary(self, final_lag: int | None) -> dict[str, Any]:
        a = self.args
        produced = {(s, q) for s, n in self.produced.items() for q in range(n)}
        out = self.out_counts
        missing = len(produced - set(out))
        dup = sum(c - 1 for c in out.values() if c > 1)
        unexpected = len(set(out) - produced)
        lat_p99 = [r["p99_ms"] for r in self.timeline if r["p99_ms"] is not None]
        rss: dict[str, Any] = {}
        for role in sorted({k for r in self.timeline for k in r["rss_mb"]}):
            # growth is judged on the last incarnation of the process (a SIGKILLed worker restarts small)
            last_pid = next((r["pid"].get(role) for r in reversed(self.timeline) if r["pid"].get(role)), None)
            rows = [r for r in self.timeline if r["rss_mb"].get(role) and r["pid"].get(role) == last_pid]
            # after its warm-up (imports, compiles, first batches): 15 % of the run, at least 20 s
            born = rows[0]["t_s"] if rows else 0.0
            series = [r["rss_mb"][role] for r in rows if r["t_s"] >= born + max(20.0, 0.15 * a.duration)]
            if not series:
                continue
            entry: dict[str, Any] = {"first_mb": series[0], "last_mb": series[-1], "max_mb": max(series),
                                     "samples": len(series), "growth": None}
            if len(series) >= 6:  # median of the last third over the median of the second sixth
                ref = float(np.median(series[len(series) // 6: max(len(series) // 3, len(series) // 6 + 1)]))
                tail = float(np.median(series[-max(1, len(series) // 3):]))
                entry["growth"] = round(tail / ref, 3) if ref else None
            rss[role] = entry
        jobs = list(self.jobs.values())
        jl = [j["latency_s"] for j in jobs if "latency_s" in j]
        lags = [r["lag"] for r in self.timeline if r["lag"] is not None]
        failures = []
        if missing or dup or unexpected:
            failures.append(f"records in != out: {missing} missing, {dup} duplicated, {unexpected} unexpected")
        if len(self.delivered_offsets) != len(produced) or self.delivery_errors:
            failures.append(f"{len(produced)} produced but {len(self.delivered_offsets)} distinct input offsets "
                            f"acknowledged, {self.delivery_errors} delivery errors")
        bad_jobs = [j for j in jobs if j["state"] != "succeeded"]
        if bad_jobs:
            failures.append(f"{len(bad_jobs)} of {len(jobs)} jobs not succeeded: "
                            f"{sorted({j['state'] for j in bad_jobs})}")
        for role, r in rss.items():  # (this script keeps every key it saw to check in == out: not bounded)
            if role != "soak" and r["growth"] is not None and r["growth"] > a.rss_growth:
                failures.append(f"RSS of {role} grew {r['growth']}x (bound {a.rss_growth}x)")
        if lags and max(lags) > a.max_lag:
            failures.append(f"lag reached {max(lags)} records (bound {a.max_lag})")
        if final_lag:
            failures.append(f"lag {final_lag} at the end (not drained)")
        unrecovered = [f["kind"] for f in self.fault_log if f["recovered_s"] is None]
        if unrecovered:
            failures.append(f"no recovery after: {', '.join(unrecovered)}")
        slow = [f"{f['kind']} ({f['recovered_s']} s)" for f in self.fault_log
                if f["recovered_s"] is not None and f["recovered_s"] > a.recovery_timeout]
        if slow:
            failures.append(f"recovery over {a.recovery_timeout:.0f} s after: {', '.join(slow)}")
        faults = [{k: v for k, v in f.items() if not k.startswith("_")} for f in self.fault_log]
        if self.not_run:
            failures.append(f"faults not run (the run ended first): {', '.join(self.not_run)}")
        return {
            "bench": "soak", "secure": a.secure, "duration_s": a.duration, "tick_rate": a.tick_rate,
            "job_rate": a.job_rate, "symbols": a.symbols, "machine": _machine(),
            "records": {"in": len(produced), "out_unique": len(out), "missing": missing, "duplicates": dup,
                        "unexpected": unexpected, "input_offsets_acked": len(self.delivered_offsets)},
            "jobs": {"submitted": len(jobs), "succeeded": len(jobs) - len(bad_jobs),
                     "p50_latency_s": _pct(jl, 50), "p99_latency_s": _pct(jl, 99),
                     "submit_errors_seen": self.job_errors[:5]},
            "latency_ms": {"p50": _pct(self.lat_all, 50), "p99": _pct(self.lat_all, 99),
                           "p99_per_window_max": max(lat_p99) if lat_p99 else None,
                           "p99_per_window_median": float(np.median(lat_p99)) if lat_p99 else None},
            "lag": {"max": max(lags) if lags else None, "final": final_lag},
            "rss": rss, "faults": faults, "faults_not_run": self.not_run, "restarts": self.restarts, "timeline": self.timeline,
            "ok": not failures, "failures": failures,
        }

    def close(self) -> None:
        self.closing = True
        self.stop.set()
        for p in self.procs.values():
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in self.procs.values():
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                p.kill()
        self.stack.down()
        if not self.args.keep:
            shutil.rmtree(self.stack.home, ignore_errors=True)


def _seq_ts(v: bytes) -> tuple[int, int]:
    """``seq`` and ``ts_event`` of a FeatureVector value (symbol string, ts_event, seq varints)."""
    p = 5

    def varint(p: int) -> tuple[int, int]:
        u = shift = 0
        while True:
            b = v[p]
            p += 1
            u |= (b & 0x7F) << shift
            if b < 0x80:
                return (u >> 1) ^ -(u & 1), p
            shift += 7

    n, p = varint(p)
    p += n
    ts, p = varint(p)
    seq, p = varint(p)
    return seq, ts


def _schedule(spec: str | None, duration: float) -> list[tuple[float, str]]:
    if spec is None:
        return [(duration * f, k) for f, k in zip((0.25, 0.5, 0.75), FAULTS, strict=True)]
    out = []
    for part in (x for x in spec.split(",") if x.strip()):
        kind, _, at = part.strip().partition("@")
        if kind not in FAULTS:
            raise SystemExit(f"unknown fault {kind!r}; faults: {', '.join(FAULTS)}")
        out.append((float(at), kind))
    return out


def _retry(fn: Any, what: str, timeout_s: float = 120.0) -> Any:
    """``fn()`` once it stops raising Kafka errors (leaders of new topics being elected), within ``timeout_s``."""
    from confluent_kafka import KafkaException

    end = time.monotonic() + timeout_s
    while True:
        try:
            return fn()
        except KafkaException as exc:
            if time.monotonic() > end:
                raise SystemExit(f"{what}: {exc}") from None
            time.sleep(0.5)


def _fmt(x: float | None) -> str:
    return "-" if x is None else f"{x:.0f}"


def _machine() -> dict[str, Any]:
    import platform

    return {"cores": os.cpu_count(), "python": platform.python_version(), "loadavg_1min": round(os.getloadavg()[0], 2)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--duration", type=float, default=600.0, help="seconds of load (default 600)")
    ap.add_argument("--quick", action="store_true", help="a 90 s run (all three faults)")
    ap.add_argument("--tick-rate", type=float, default=500.0, help="ticks per second (default 500)")
    ap.add_argument("--job-rate", type=float, default=0.5, help="echo jobs per second (default 0.5)")
    ap.add_argument("--symbols", type=int, default=50, help="distinct symbols (default 50)")
    ap.add_argument("--faults", default=None,
                    help="KIND@SECONDS,... (kinds: worker_kill, broker_restart, redis_restart); default: one of "
                         "each at 25/50/75 %% of the run; '' for none")
    ap.add_argument("--sample-s", type=float, default=None,
                    help="sampling period of RSS, lag, latency (default 5; 2 with --quick)")
    ap.add_argument("--rss-growth", type=float, default=1.5, help="bound of RSS growth per process (default 1.5x)")
    ap.add_argument("--max-lag", type=int, default=200_000, help="bound of the consumer lag, records (default 200000)")
    ap.add_argument("--recovery-timeout", type=float, default=180.0,
                    help="seconds a fault may take to recover (feature vectors flow, a later job succeeds)")
    ap.add_argument("--drain-timeout", type=float, default=180.0, help="seconds to drain at the end")
    ap.add_argument("--startup-timeout", type=float, default=300.0, help="seconds Kafka may take to start (default 300)")
    ap.add_argument("--secure", action="store_true", help="run on the secure stack (TLS, SCRAM, ACLs, tokens)")
    ap.add_argument("--keep", action="store_true", help="keep the stack home (logs) after the run")
    ap.add_argument("--json", type=Path, default=None, help="write the summary JSON here")
    args = ap.parse_args(argv)
    if args.quick:
        args.duration = 90.0
    if args.sample_s is None:
        args.sample_s = 2.0 if args.quick else 5.0
    soak = Soak(args)
    try:
        summary = soak.run()
    finally:
        soak.close()
    compact = {k: v for k, v in summary.items() if k != "timeline"}
    print(json.dumps(compact, indent=1, default=str))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(summary, indent=1, default=str))
    print("soak: OK" if summary["ok"] else "soak: FAILED: " + "; ".join(summary["failures"]))
    return 0 if summary["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
