"""Benchmark: invalidation fan-out to many listener processes on one Redis, against plain
XREAD processes in the same run.

    .venv/bin/python bench/fanout.py [--sizes 10,100,200] [--modes listener,xread,old]
                                     [--rate 20] [--seconds 5] [--idle 10]

Starts its own redis-server on a free loopback port. For each size N and each mode it forks
N processes tailing one stream:

- `listener`: cachework's `Listener` and `Tracker` on `RedisLog.for_listener` (a blocking
  XREAD with the cursor check pipelined behind it; the checked Lua read only on reconnect
  or when the cursor's entry is gone), applying to a trivial target;
- `xread`: a plain `XREAD BLOCK 5000` loop (the floor: what any stream reader costs);
- `old`: the loop before issue 19 (a Lua read, then `XREAD BLOCK 500 COUNT 1`; a Lua read
  per event), for comparison.

Per (mode, N): Redis CPU while idle (`INFO cpu` used_cpu_sys+user over `--idle` seconds,
minus the empty server's own, per process per second; and the commands per process per
second); then `--rate` events/s for `--seconds`: publish-to-applied latency over every
(event, process) delivery (p50/p99) and until every process had it (p99 of the slowest),
Redis CPU per event per listener (the window's CPU minus the idle rate and the publisher's
own cost, measured alone first), events missing and drops. Ratios against `xread` at the
same N. Absolute figures vary with the machine's load; read the ratios.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import sys
import tempfile
import threading
import time
import traceback
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import redis

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cachework.cache.invalidation import Listener, RedisLog, Tracker
from cachework.cache.invalidation.events import Event
from tests.invalidation_helpers import OwnRedis

KEY = "cachework:invalidations"


class Target:
    """A trivial cached-table registry: records when each event's key was applied."""

    def __init__(self) -> None:
        self.cursor = "0"
        self.listener: dict = {}
        self.applied: dict[int, float] = {}

    def names(self) -> list[str]:
        return ["categories"]

    def coerce_key(self, name: str, key: object) -> object:
        return int(key)

    def invalidate(self, name: str, keys: list | None) -> None:
        now = time.time()
        for key in keys or ():
            self.applied.setdefault(key, now)

    def drop_all(self, reason: str) -> None:
        pass


class OldListener(Listener):
    """The loop before issue 19: a Lua read, then a short XREAD BLOCK, every iteration."""

    def on_iteration(self) -> None:
        if self.tracker.poll(self.log) == 0:
            self.log.wait(self.tracker.cursor, 0.5, self._stop)


def _child(mode: str, url: str, folder: Path, ready_key: str) -> None:
    """One listener process: follow the stream until SIGTERM, then write what it applied."""
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    applied: dict = {}
    drops = 0
    if mode == "xread":
        client = redis.Redis.from_url(url, socket_timeout=15)
        last = client.xinfo_stream(KEY)["last-generated-id"] if client.exists(KEY) else "0-0"

        def loop() -> None:
            nonlocal last
            while not done.is_set():
                try:
                    reply = client.xread({KEY: last}, count=500, block=5000)
                except redis.RedisError:
                    return
                now = time.time()
                for _key, entries in reply or []:
                    for entry_id, fields in entries:
                        applied[json.loads(fields[b"e"])["keys"][0]] = now
                        last = entry_id

        threading.Thread(target=loop, daemon=True).start()
        ready = redis.Redis.from_url(url)
        ready.incr(ready_key)
        ready.close()
        done.wait(600)
    else:
        target = Target()
        log = RedisLog.for_listener(url)
        kind = Listener if mode == "listener" else OldListener
        listener = kind(Tracker(target, log), log).start()
        deadline = time.monotonic() + 60
        while not target.listener.get("connected") and time.monotonic() < deadline:
            time.sleep(0.01)
        ready = redis.Redis.from_url(url)
        ready.incr(ready_key)
        ready.close()
        done.wait(600)
        listener.stop(2)
        applied = target.applied
        drops = target.listener.get("drops", 0)
    (folder / f"{os.getpid()}.json").write_text(json.dumps({"applied": applied, "drops": drops}))


def _fork_children(n: int, mode: str, url: str, folder: Path, ready_key: str) -> list[int]:
    pids = []
    for _ in range(n):
        pid = os.fork()
        if pid == 0:
            code = 0
            try:
                _child(mode, url, folder, ready_key)
            except BaseException:
                traceback.print_exc()
                code = 1
            os._exit(code)
        pids.append(pid)
    return pids


def _cpu(client: redis.Redis) -> float:
    info = client.info("cpu")
    return float(info["used_cpu_sys"]) + float(info["used_cpu_user"])


def _commands(client: redis.Redis) -> dict[str, tuple[int, float]]:
    stats = client.info("commandstats")
    return {k.removeprefix("cmdstat_"): (v["calls"], v["usec"]) for k, v in stats.items()}


def _proc_cpu(pids: list[int]) -> float:
    """CPU seconds (user + system) the processes `pids` have used, from /proc."""
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime (clock ticks)
    return total / os.sysconf("SC_CLK_TCK")


def _reads(commands: dict[str, tuple[int, float]]) -> tuple[int, float]:
    """Calls and usec of everything but the publisher's and the bench's own commands."""
    skip = {"xadd", "info", "config|resetstat", "incr", "get", "ping", "client|list"}
    calls = sum(c for name, (c, _u) in commands.items() if name not in skip)
    usec = sum(u for name, (_c, u) in commands.items() if name not in skip)
    return calls, usec


def _publish(client: redis.Redis, rate: float, seconds: float, first: int) -> dict[int, float]:
    sent: dict[int, float] = {}
    count = int(rate * seconds)
    start = time.perf_counter()
    for i in range(count):
        delay = start + i / rate - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        key = first + i
        data = Event("categories", (key,)).to_json()
        sent[key] = time.time()
        client.xadd(KEY, {"e": data}, maxlen=100_000, approximate=True)
    return sent


def _quantiles(values: list[float]) -> tuple[float, float]:
    if len(values) < 2:
        return (values[0], values[0]) if values else (float("nan"), float("nan"))
    q = statistics.quantiles(values, n=100)
    return q[49], q[98]


@dataclass
class Window:
    """What one measuring window cost: the Redis server's CPU seconds, the wall seconds,
    the listener processes' own CPU seconds, and the commands Redis ran in it."""

    cpu: float
    seconds: float
    own: float
    commands: dict[str, tuple[int, float]]


def _measured(client: redis.Redis, pids: list[int], during: Callable[[], object]) -> Window:
    """Reset Redis's command stats, run `during`, and read what the window cost."""
    client.config_resetstat()
    cpu0, t0, own0 = _cpu(client), time.monotonic(), _proc_cpu(pids)
    during()
    cpu1, t1, own1 = _cpu(client), time.monotonic(), _proc_cpu(pids)
    return Window(cpu1 - cpu0, t1 - t0, own1 - own0, _commands(client))


def _wait_ready(client: redis.Redis, ready_key: str, n: int, mode: str) -> None:
    deadline = time.monotonic() + 120
    while int(client.get(ready_key) or 0) < n:
        if time.monotonic() > deadline:
            raise RuntimeError(f"only {client.get(ready_key)} of {n} {mode} processes ready")
        time.sleep(0.05)


def _stop_children(pids: list[int]) -> None:
    for pid in pids:
        os.kill(pid, signal.SIGTERM)
    for pid in pids:
        os.waitpid(pid, 0)


def _collect(folder: Path) -> list[dict]:
    """What every child wrote on its way out; the folder is removed."""
    results = [json.loads(p.read_text()) for p in folder.glob("*.json")]
    for p in folder.glob("*.json"):
        p.unlink()
    folder.rmdir()
    return results


def run_one(mode: str, n: int, url: str, args, base: dict, counter: list[int]) -> dict:
    """Fork `n` processes of `mode`, measure an idle window then an events window."""
    client = redis.Redis.from_url(url)
    folder = Path(tempfile.mkdtemp(prefix=f"cachework-fanout-{mode}-{n}-"))
    ready_key = f"bench:ready:{uuid.uuid4().hex[:8]}"
    pids = _fork_children(n, mode, url, folder, ready_key)
    sent: dict[int, float] = {}

    def publish() -> None:
        sent.update(_publish(client, args.rate, args.seconds, counter[0]))
        counter[0] += len(sent)
        time.sleep(1.0)

    try:
        _wait_ready(client, ready_key, n, mode)
        time.sleep(1.0)
        connections = int(client.info("clients")["connected_clients"]) - 1
        idle = _measured(client, pids, lambda: time.sleep(args.idle))
        window = _measured(client, pids, publish)
    finally:
        _stop_children(pids)
    results = _collect(folder)
    client.close()
    row = {"mode": mode, "n": n, "processes_reported": len(results)}
    row["connections_per_process"] = connections / n
    return row | _costs(n, idle, window, len(sent), base) | _latencies(sent, results)


def _costs(n: int, idle: Window, window: Window, events: int, base: dict) -> dict:
    """Redis's and the listeners' own costs, idle per process per second and per event
    per listener (the events window minus its idle share and the publisher's cost)."""
    idle_rate = idle.cpu / idle.seconds  # server CPU seconds per second, all processes
    idle_per_process = max(0.0, idle_rate - base["idle"]) / n
    idle_calls, idle_usec = _reads(idle.commands)
    ev_calls, ev_usec = _reads(window.commands)
    window_cpu = window.cpu - idle_rate * window.seconds - base["publish_per_event"] * events
    own_idle_rate = idle.own / idle.seconds
    return {
        "idle_cpu_us_per_process_s": idle_per_process * 1e6,
        "idle_calls_per_process_s": idle_calls / n / idle.seconds,
        "idle_cmd_us_per_process_s": idle_usec / n / idle.seconds,
        "event_cpu_us_per_listener": max(0.0, window_cpu) / (events * n) * 1e6,
        "event_calls_per_listener": ev_calls / (events * n),
        "event_cmd_us_per_listener": ev_usec / (events * n),
        "event_commands": {
            name: (calls / (events * n), usec / max(calls, 1))
            for name, (calls, usec) in window.commands.items()
            if name in ("xread", "xrange", "evalsha")
        },
        "idle_own_cpu_us_per_process_s": idle.own / n / idle.seconds * 1e6,
        "event_own_cpu_us_per_process": max(0.0, window.own - own_idle_rate * window.seconds)
        / (events * n)
        * 1e6,
    }


def _latencies(sent: dict[int, float], results: list[dict]) -> dict:
    """Publish-to-applied over every delivery, and until every process had the event."""
    deliveries: list[float] = []
    slowest: list[float] = []
    missing = 0
    for key, at in sent.items():
        times = [r["applied"].get(str(key)) for r in results]
        got = [t for t in times if t is not None]
        missing += len(times) - len(got)
        deliveries += [(t - at) * 1000 for t in got]
        if len(got) == len(times):
            slowest.append((max(got) - at) * 1000)
    p50, p99 = _quantiles(deliveries)
    _s50, s99 = _quantiles(slowest)
    return {
        "p50": p50,
        "p99": p99,
        "p99_all": s99,
        "events": len(sent),
        "missing": missing,
        "drops": sum(r["drops"] for r in results),
    }


def baseline(url: str, args) -> dict:
    """The empty server's own idle CPU, and the publisher's CPU per event with no reader."""
    client = redis.Redis.from_url(url)
    cpu0, t0 = _cpu(client), time.monotonic()
    time.sleep(min(args.idle, 5))
    idle = (_cpu(client) - cpu0) / (time.monotonic() - t0)
    cpu1, t1 = _cpu(client), time.monotonic()
    sent = _publish(client, args.rate * 5, args.seconds, 10**9)
    cpu2 = _cpu(client)
    publish = max(0.0, cpu2 - cpu1 - idle * (time.monotonic() - t1)) / len(sent)
    client.delete(KEY)
    client.close()
    return {"idle": idle, "publish_per_event": publish}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10,100,200", help="Listener processes per run.")
    parser.add_argument("--modes", default="listener,xread,old", help="Which loops to run.")
    parser.add_argument("--rate", type=float, default=20.0, help="Events per second.")
    parser.add_argument("--seconds", type=float, default=5.0, help="Seconds of publishing.")
    parser.add_argument("--idle", type=float, default=10.0, help="Seconds of idle measuring.")
    parser.add_argument("--json", help="Also write the rows to this file.")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    modes = [m.strip() for m in args.modes.split(",")]
    if not set(modes) <= {"listener", "xread", "old"}:
        parser.error(f"--modes {args.modes!r}: each one of listener, xread, old")

    folder = Path(tempfile.mkdtemp(prefix="cachework-bench-fanout-"))
    server = OwnRedis(folder / "redis", args=("--maxclients", "10000")).start()
    rows: list[dict] = []
    try:
        base = baseline(server.url, args)
        client = redis.Redis.from_url(server.url)
        RedisLog(client).append(Event("categories", (0,)).to_json())  # stream and epoch
        client.close()
        print(
            f"fan-out on one Redis: {args.rate:.0f} events/s for {args.seconds:.0f}s, "
            f"idle {args.idle:.0f}s; empty server {base['idle'] * 1e6:.0f} us CPU/s, "
            f"publisher {base['publish_per_event'] * 1e6:.1f} us CPU/event"
        )
        counter = [1]
        for n in sizes:
            by_mode = {}
            for mode in modes:
                row = run_one(mode, n, server.url, args, base, counter)
                rows.append(row)
                by_mode[mode] = row
                print(_line(row), flush=True)
            floor = by_mode.get("xread")
            if floor is not None:
                for mode, row in by_mode.items():
                    if mode != "xread":
                        print(_ratios(row, floor))
    finally:
        server.stop()
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))


def _line(r: dict) -> str:
    return (
        f"  {r['mode']:<8} N={r['n']:<4} p50 {r['p50']:6.2f} ms  p99 {r['p99']:7.2f} ms  "
        f"p99 all-applied {r['p99_all']:7.2f} ms  missing {r['missing']}  drops {r['drops']}  "
        f"| idle: {r['idle_calls_per_process_s']:.2f} calls/s, "
        f"{r['idle_cmd_us_per_process_s']:.2f} us cmd/s, "
        f"{r['idle_cpu_us_per_process_s']:.1f} us CPU/s per process  "
        f"| per event per listener: {r['event_calls_per_listener']:.2f} calls, "
        f"{r['event_cmd_us_per_listener']:.2f} us cmd, "
        f"{r['event_cpu_us_per_listener']:.1f} us CPU  "
        f"| {r['connections_per_process']:.2f} connections/process\n"
        f"           listener processes' own CPU: idle {r['idle_own_cpu_us_per_process_s']:.0f} "
        f"us/s per process, {r['event_own_cpu_us_per_process']:.0f} us per event per process"
        f"  | commands per event per listener (calls, us/call): "
        + ", ".join(f"{k} {c:.2f} x {u:.2f}" for k, (c, u) in sorted(r["event_commands"].items()))
    )


def _ratios(r: dict, floor: dict) -> str:
    def ratio(key: str) -> str:
        return f"{r[key] / floor[key]:.2f}x" if floor[key] > 0 else "n/a"

    return (
        f"    {r['mode']} / xread at N={r['n']}: p50 {ratio('p50')}  p99 {ratio('p99')}  "
        f"idle CPU/process {ratio('idle_cpu_us_per_process_s')}  "
        f"idle calls/process {ratio('idle_calls_per_process_s')}  "
        f"event CPU/listener {ratio('event_cpu_us_per_listener')}  "
        f"event cmd us/listener {ratio('event_cmd_us_per_listener')}  "
        f"own CPU per event {ratio('event_own_cpu_us_per_process')}"
    )


if __name__ == "__main__":
    main()
