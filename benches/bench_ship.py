"""Shipping to PostgreSQL: records/s shipped, lag under load, and what
shipping costs the deciding processes (against the same load without it, in
the same run).

    nice -n 10 .venv/bin/python benches/bench_ship.py [--dsn DSN] [--procs 4] [--seconds 10]

Without ``--dsn`` a throwaway server is started (tests/postgres_server.py).
Phases: (1) bulk: one shipper copies a pre-written log of ``--records``
records into an empty table (records/s); (2) ``--procs`` processes decide
as fast as they can for ``--seconds``, first without ``ship_to`` (baseline),
then with it, sampling ``gate.shipping.lag`` every 50 ms; after the load
stops, the time until every record is in the table.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import psycopg

import execgate
from execgate import SigningKey, _core
from execgate.postgres import _INSERT, Shipper

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

POLICY = "package execgate\ndefault decision := true"

WORKER = textwrap.dedent(
    """
    import json, sys, time, threading
    import execgate
    log, key, dsn, seconds = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4])
    gate = execgate.Gate(POLICY_SOURCE, key=key, audit=log, ship_to=dsn or None)
    lags, lag_s = [], []
    stop = threading.Event()
    def sample():
        while not stop.wait(0.05):
            s = gate.shipping
            if s is not None:
                lags.append(s.lag); lag_s.append(s.lag_seconds)
    t = threading.Thread(target=sample); t.start()
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        gate.check("tool.call", {"n": n}); n += 1
    elapsed = time.perf_counter() - start
    stop.set(); t.join()
    gate.log.close()
    seq = gate.log.seq
    print(json.dumps({"decisions": n, "elapsed": elapsed, "seq": seq, "lags": lags,
                      "lag_s": lag_s}), flush=True)
    gate.close()
    """
).replace("POLICY_SOURCE", repr(POLICY))


def pct(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def count(dsn: str) -> int:
    with psycopg.connect(dsn) as conn:
        row = conn.execute("SELECT count(*) FROM execgate_audit").fetchone()
        return int(row[0]) if row else 0


def bulk(dsn: str, tmp: Path, key: SigningKey, records: int) -> None:
    path = tmp / "bulk.jsonl"
    with execgate.Gate(POLICY, key=key, audit=path) as gate:
        for i in range(records):
            gate.check("tool.call", {"n": i})
        total = gate.log.seq  # type: ignore[union-attr]
    start = time.perf_counter()
    shipper = Shipper(path, dsn)
    while shipper.status.shipped_seq < total:
        time.sleep(0.01)
    elapsed = time.perf_counter() - start
    shipper.stop()
    # Baseline, same run: the same rows inserted by bare psycopg, the same
    # statement and batches, under another log id (no reading, no checks).
    lines = path.read_text().splitlines()
    start = time.perf_counter()
    with psycopg.connect(dsn, autocommit=True) as conn:
        for i in range(0, len(lines), 1000):
            chunk = lines[i : i + 1000]
            seqs = list(range(i + 1, i + 1 + len(chunk)))
            with conn.transaction():
                conn.execute(_INSERT, ("f" * 64, seqs, ["0" * 64] * len(chunk), chunk)).fetchall()
    raw = time.perf_counter() - start
    # And the core's reader alone.
    start = time.perf_counter()
    reader, seq = _core.LogReader(str(path)), 1
    while batch := reader.read_from(seq, 1000)[0]:
        seq = batch[-1] + 1
    read = time.perf_counter() - start
    print(
        f"bulk: {total} records shipped in {elapsed:.2f} s = {total / elapsed:,.0f} records/s "
        f"(one shipper, batches of 1000, from an empty table); bare psycopg insert of the same "
        f"rows {total / raw:,.0f} records/s (shipper/bare time {elapsed / raw:.2f}); "
        f"LogReader alone {total / read:,.0f} records/s"
    )


def load(dsn: str | None, tmp: Path, keyfile: Path, procs: int, seconds: float, tag: str) -> None:
    script = tmp / "worker.py"
    script.write_text(WORKER)
    logs = [tmp / f"{tag}-{i}.jsonl" for i in range(procs)]
    before = count(dsn) if dsn is not None else 0
    workers = [
        subprocess.Popen(
            [sys.executable, str(script), str(log), str(keyfile), dsn or "", str(seconds)],
            stdout=subprocess.PIPE,
            text=True,
        )
        for log in logs
    ]
    results = [json.loads(w.communicate()[0]) for w in workers]
    stopped = time.perf_counter()
    rate = sum(r["decisions"] / r["elapsed"] for r in results)
    line = f"{tag:>10}: {procs} procs, {rate:,.0f} decisions/s in all"
    if dsn is not None:
        total = sum(r["seq"] for r in results)
        while count(dsn) < before + total:
            time.sleep(0.01)
        drained = time.perf_counter() - stopped
        lags = [x for r in results for x in r["lags"]]
        lag_s = [x for r in results for x in r["lag_s"]]
        line += (
            f"; lag (records) p50 {pct(lags, 0.5):.0f} p99 {pct(lags, 0.99):.0f} "
            f"max {max(lags, default=0):.0f}; lag_seconds p50 {pct(lag_s, 0.5):.3f} "
            f"p99 {pct(lag_s, 0.99):.3f}; {total} records, all in the table "
            f"{drained:.2f} s after the load stopped"
        )
    print(line)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--dsn")
    parser.add_argument("--procs", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--records", type=int, default=20000)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    server = None
    if args.dsn is None:
        from postgres_server import PostgresServer, _bindir

        bindir = _bindir()
        if bindir is None:
            sys.exit("no PostgreSQL binaries; give --dsn")
        server = PostgresServer(bindir)
        server.start()
    try:
        with tempfile.TemporaryDirectory() as d:
            tmp = Path(d)
            key = SigningKey.generate()
            keyfile = tmp / "k.pem"
            key.to_pem(str(keyfile))
            dsn = args.dsn or server.database()  # type: ignore[union-attr]
            bulk(dsn, tmp, key, args.records)
            for r in range(args.rounds):  # alternated, so drift in the load hits both
                load(None, tmp, keyfile, args.procs, args.seconds, f"baseline{r}")
                load(dsn, tmp, keyfile, args.procs, args.seconds, f"shipping{r}")
            print(f"table holds {count(dsn)} rows")
    finally:
        if server is not None:
            server.remove()


if __name__ == "__main__":
    main()
