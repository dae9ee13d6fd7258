"""The fleet's audit trail in PostgreSQL: shipping local logs into one
append-only table, and verifying it (issue 16). A real server, started by
the fixture in postgres_server.py."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

import execgate
from execgate import AuditLog, SigningKey, telemetry
from execgate.cli import main as cli
from execgate.postgres import verify_postgres
from postgres_server import PostgresServer, postgres_server  # noqa: F401

# Gates here get timeout=10: a loaded machine must not turn a check into a limit deny.
POLICY = """
package execgate
default decision := {"allow": false, "reasons": ["not allowed"]}
decision := {"allow": true, "reasons": ["ok"]} if { input.action.name == "ok" }
"""


@pytest.fixture
def dsn(postgres_server: PostgresServer) -> str:  # noqa: F811
    return postgres_server.database()


@pytest.fixture
def key(tmp_path: Path) -> SigningKey:
    k = SigningKey.generate()
    k.verify_key.to_pem(str(tmp_path / "audit.pub"))
    return k


def wait_for(predicate, what: str, timeout: float = 60.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


@contextlib.contextmanager
def outage(server: PostgresServer) -> Iterator[None]:
    """The server down for the block, and up again (accepting connections)
    after it, also when the block fails: the session's other tests need it."""
    server.stop()
    try:
        yield
    finally:
        server.start()


def local_records(path: Path) -> list[str]:
    """Every record of a (possibly rotated) local log, in chain order."""
    files = sorted(p for p in path.parent.glob(path.name + ".*") if ".torn-" not in p.name)
    lines: list[str] = []
    for f in [*files, path]:
        if f.exists():
            lines += f.read_text().splitlines()
    return lines


def digest(envelope: str) -> str:
    return hashlib.sha256(base64.b64decode(json.loads(envelope)["payload"])).hexdigest()


def rows(dsn: str, log_id: str | None = None) -> list[tuple[str, int, str]]:
    with psycopg.connect(dsn) as conn:
        if log_id is None:
            q = conn.execute("SELECT log_id, seq, envelope FROM execgate_audit ORDER BY 1, 2")
        else:
            q = conn.execute(
                "SELECT log_id, seq, envelope FROM execgate_audit WHERE log_id = %s ORDER BY 2",
                (log_id,),
            )
        return [(r[0], r[1], r[2]) for r in q]


def assert_shipped_exactly(dsn: str, path: Path) -> None:
    """Every record of the local log is in the table once, byte for byte,
    under the log's id (the digest of its first record)."""
    local = local_records(path)
    log_id = digest(local[0])
    table = rows(dsn, log_id)
    assert [seq for _, seq, _ in table] == list(range(1, len(local) + 1))
    assert [env for _, _, env in table] == local


def make_calls(gate: execgate.Gate, n: int) -> None:
    for i in range(n):
        gate.check("ok" if i % 3 else "nope", {"i": i})


def caught_up(gate: execgate.Gate) -> bool:
    status = gate.shipping
    assert status is not None
    return status.lag == 0 and status.shipped_seq == gate.log.seq  # type: ignore[union-attr]


def test_every_record_is_shipped_byte_for_byte_and_verifies(
    tmp_path: Path, key: SigningKey, dsn: str
) -> None:
    path = tmp_path / "audit.jsonl"
    with execgate.Gate(POLICY, timeout=10, key=key, audit=path, ship_to=dsn) as gate:
        make_calls(gate, 40)

        @gate.guard(action="ok")
        def tool(x: int) -> int:
            return x * 2

        assert tool(3) == 6
        wait_for(lambda: caught_up(gate), "the shipper to catch up")
        status = gate.shipping
        assert status is not None
        assert status.connected and status.last_error is None and status.conflicts == ()
        assert status.log_id == digest(local_records(path)[0])
        assert "password" not in status.target
    assert gate.shipping is not None and not gate.shipping.running
    assert_shipped_exactly(dsn, path)
    [(log_id, report)] = verify_postgres(dsn, key.verify_key)
    assert log_id == digest(local_records(path)[0])
    assert report.ok, report
    assert report.records == len(local_records(path)) and report.completions == 1
    assert cli(["verify", "--postgres", dsn, "--key", str(tmp_path / "audit.pub")]) == 0
    assert (
        cli(["verify", "--postgres", dsn, "--key", str(tmp_path / "audit.pub"), "--log-id", log_id])
        == 0
    )
    assert cli(["verify", "--postgres", dsn, "--key", str(tmp_path / "audit.pub"),
                "--log-id", "0" * 64]) == 1  # fmt: skip


def test_triggers_refuse_update_delete_and_truncate(
    tmp_path: Path, key: SigningKey, dsn: str
) -> None:
    with execgate.Gate(
        POLICY, timeout=10, key=key, audit=tmp_path / "a.jsonl", ship_to=dsn
    ) as gate:
        make_calls(gate, 5)
        wait_for(lambda: caught_up(gate), "the shipper to catch up")
    before = rows(dsn)
    with psycopg.connect(dsn, autocommit=True) as conn:  # as the superuser, even
        for statement in (
            "UPDATE execgate_audit SET envelope = 'x' WHERE seq = 2",
            "DELETE FROM execgate_audit WHERE seq = 2",
            "TRUNCATE execgate_audit",
        ):
            with pytest.raises(psycopg.errors.InsufficientPrivilege, match="append-only"):
                conn.execute(statement)
    assert rows(dsn) == before


def tamper(dsn: str, *statements: str) -> None:
    """What a superuser can do: switch the triggers off and change rows."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("ALTER TABLE execgate_audit DISABLE TRIGGER USER")
        for s in statements:
            conn.execute(s)
        conn.execute("ALTER TABLE execgate_audit ENABLE TRIGGER USER")


def forged(envelope: str) -> str:
    """The record with its decision flipped, its signature kept."""
    env = json.loads(envelope)
    payload = json.loads(base64.b64decode(env["payload"]))
    payload["decision"] = "allow" if payload["decision"] == "deny" else "deny"
    canonical = json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    env["payload"] = base64.b64encode(canonical.encode()).decode()
    return json.dumps(env, separators=(",", ":"))


@pytest.mark.parametrize("change", ["delete", "edit", "swap", "replace first", "delete first"])
def test_rows_changed_behind_the_triggers_back_are_named(
    tmp_path: Path, key: SigningKey, dsn: str, change: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with execgate.Gate(
        POLICY, timeout=10, key=key, audit=tmp_path / "a.jsonl", ship_to=dsn
    ) as gate:
        make_calls(gate, 12)
        wait_for(lambda: caught_up(gate), "the shipper to catch up")
    table = {seq: env for _, seq, env in rows(dsn)}
    assert verify_postgres(dsn, key.verify_key)[0][1].ok
    if change == "delete":
        tamper(dsn, "DELETE FROM execgate_audit WHERE seq = 5")
        line, reason = 6, "seq 6 where 5 was expected (deleted record)"
    elif change == "edit":
        tamper(dsn, f"UPDATE execgate_audit SET envelope = '{forged(table[7])}' WHERE seq = 7")
        line, reason = 7, "bad signature"
    elif change == "swap":
        tamper(
            dsn,
            "UPDATE execgate_audit SET seq = seq + 1000 WHERE seq IN (8, 9)",
            "UPDATE execgate_audit SET seq = 1017 - seq WHERE seq IN (1008, 1009)",
        )
        line, reason = 8, "the row stored as seq 8 holds the record of seq 9"
    elif change == "replace first":
        tamper(dsn, f"UPDATE execgate_audit SET envelope = '{forged(table[1])}' WHERE seq = 1")
        line, reason = 1, "not the one the log id names"
    else:
        tamper(dsn, "DELETE FROM execgate_audit WHERE seq = 1")
        line, reason = 2, "seq 2 where 1 was expected"
    [(_, report)] = verify_postgres(dsn, key.verify_key)
    assert not report.ok
    assert report.line == line, report
    assert reason in (report.reason or ""), report
    capsys.readouterr()
    assert cli(["verify", "--postgres", dsn, "--key", str(tmp_path / "audit.pub")]) == 1
    assert f"INVALID at seq {line}: " in capsys.readouterr().out


def test_another_chain_under_a_log_id_is_reported_and_never_mixed_in(
    tmp_path: Path, key: SigningKey, dsn: str
) -> None:
    """A log file copied to a second host: both chains start with the same
    record (one log id) and then diverge."""
    first, clone = tmp_path / "a.jsonl", tmp_path / "clone.jsonl"
    with execgate.Gate(POLICY, timeout=10, key=key, audit=first) as gate:
        make_calls(gate, 6)
    clone.write_bytes(first.read_bytes())
    with execgate.Gate(POLICY, timeout=10, key=key, audit=clone) as gate:
        make_calls(gate, 9)
    with execgate.Gate(POLICY, timeout=10, key=key, audit=first, ship_to=dsn) as gate:
        make_calls(gate, 3)
        wait_for(lambda: caught_up(gate), "the first log to be shipped")
    log_id = digest(local_records(first)[0])
    assert digest(local_records(clone)[0]) == log_id
    shipped = rows(dsn, log_id)
    with execgate.Gate(POLICY, timeout=10, key=key, audit=clone, ship_to=dsn) as gate:
        status = wait_for(lambda: (s := gate.shipping) and s.conflicts and s, "the conflict")
        last = len(shipped)
        assert status.conflicts == (last,)
        assert f"different record for log {log_id[:16]} at seq {last}" in (status.last_error or "")
        assert status.shipped_seq == last and status.lag > 0
        assert gate.check("ok").allowed  # decisions go on
    assert rows(dsn, log_id) == shipped  # nothing of the clone went in
    [(_, report)] = verify_postgres(dsn, key.verify_key)
    assert report.ok and report.records == last


def test_processes_sharing_one_log_ship_each_record_once(
    tmp_path: Path, key: SigningKey, dsn: str
) -> None:
    path = tmp_path / "shared.jsonl"
    gates = [execgate.Gate(POLICY, timeout=10, key=key, audit=path, ship_to=dsn) for _ in range(2)]
    try:
        for _ in range(5):
            for g in gates:
                make_calls(g, 4)
        for g in gates:
            wait_for(lambda g=g: (s := g.shipping) and s.shipped_seq >= g.log.seq, "shipping")  # type: ignore[union-attr]
    finally:
        for g in gates:
            g.close()
    assert_shipped_exactly(dsn, path)
    assert all(g.shipping and g.shipping.conflicts == () for g in gates)
    assert verify_postgres(dsn, key.verify_key)[0][1].ok


def test_rotated_logs_are_shipped_across_files_even_when_started_late(
    tmp_path: Path, key: SigningKey, dsn: str
) -> None:
    path = tmp_path / "rot.jsonl"
    with execgate.Gate(
        POLICY, timeout=10, audit=AuditLog(str(path), key, rotate_bytes=4096)
    ) as gate:
        make_calls(gate, 30)  # several archives before any shipping
    assert len(list(tmp_path.glob("rot.jsonl.*"))) >= 2
    log = AuditLog(str(path), key, rotate_bytes=4096)
    with execgate.Gate(POLICY, timeout=10, audit=log, ship_to=dsn) as gate:
        make_calls(gate, 30)  # and more rotations while shipping
        wait_for(lambda: caught_up(gate), "the shipper to catch up")
    assert_shipped_exactly(dsn, path)
    [(_, report)] = verify_postgres(dsn, key.verify_key)
    archives = len(list(tmp_path.glob("rot.jsonl.*")))
    assert report.ok and archives >= 4 and report.rotations == archives, report


def test_an_outage_never_blocks_decisions_and_shipping_resumes_without_loss(
    tmp_path: Path,
    key: SigningKey,
    dsn: str,
    postgres_server: PostgresServer,  # noqa: F811
) -> None:
    path = tmp_path / "a.jsonl"
    with execgate.Gate(POLICY, timeout=10, key=key, audit=path, ship_to=dsn) as gate:
        make_calls(gate, 10)
        wait_for(lambda: caught_up(gate), "the shipper to catch up")
        with outage(postgres_server):
            make_calls(gate, 20)  # decided and recorded locally while the server is down
            status = wait_for(
                lambda: (s := gate.shipping) and s.last_error and not s.connected and s,
                "the outage to show",
            )
            assert status.lag > 0 and status.lag_seconds > 0
            # The shipping-lag gauge is fed the same lag (as of the last attempt).
            lags = telemetry.shipping_lags
            wait_for(lambda: dict(lags()).get(status.log_id, 0.0) > 0, "a lag reported")
        make_calls(gate, 5)
        wait_for(lambda: caught_up(gate), "the shipper to resume", timeout=120)
        assert gate.shipping is not None and gate.shipping.last_error is None
        log_id = gate.shipping.log_id
        wait_for(lambda: dict(telemetry.shipping_lags()).get(log_id) == 0.0, "lag 0 reported")
    assert log_id not in dict(telemetry.shipping_lags())  # shipping stopped: no data point
    assert_shipped_exactly(dsn, path)
    assert verify_postgres(dsn, key.verify_key)[0][1].ok


def test_ship_to_needs_a_local_log_and_a_connection_string(tmp_path: Path, key: SigningKey) -> None:
    with pytest.raises(TypeError, match="local audit log"):
        execgate.Gate(POLICY, timeout=10, ship_to="postgresql://localhost/x")
    with pytest.raises(TypeError, match="local audit log"):
        execgate.Gate(POLICY, timeout=10, key=key, ship_to="postgresql://localhost/x")
    with pytest.raises(execgate.ConfigurationError, match="connection string"):
        execgate.Gate(
            POLICY, timeout=10, key=key, audit=tmp_path / "a.jsonl", ship_to="not a dsn ==="
        )


WORKER = textwrap.dedent(
    """
    import signal, sys, time, pathlib
    import execgate
    from execgate import SigningKey

    log, keyfile, dsn, calls = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    gate = execgate.Gate(
        'package execgate\\ndefault decision := true', key=keyfile, audit=log, ship_to=dsn
    )
    done = 0
    while not stop and (calls < 0 or done < calls):
        gate.check("tool.call", {"n": done})
        done += 1
        if done == 20:
            print("running", flush=True)
        time.sleep(0.002)
    gate.close()
    status = gate.shipping
    print("lag", status.lag, "error", status.last_error, flush=True)
    """
)


def test_three_workers_a_kill_and_a_server_restart_lose_and_duplicate_nothing(
    tmp_path: Path,
    key: SigningKey,
    dsn: str,
    postgres_server: PostgresServer,  # noqa: F811
) -> None:
    keyfile = tmp_path / "audit.key"
    key.to_pem(str(keyfile))
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    logs = [tmp_path / f"worker{i}.jsonl" for i in range(3)]

    def start(log: Path, calls: int = -1) -> subprocess.Popen[str]:
        return subprocess.Popen(
            [sys.executable, str(script), str(log), str(keyfile), dsn, str(calls)],
            stdout=subprocess.PIPE,
            text=True,
        )

    workers = [start(log) for log in logs]
    try:
        for w in workers:
            assert w.stdout is not None and w.stdout.readline().strip() == "running"
        time.sleep(0.5)
        workers[1].send_signal(signal.SIGKILL)  # mid-run: records written, some not shipped
        workers[1].wait(30)
        with outage(postgres_server):
            time.sleep(1.0)  # the others go on deciding, locally
        time.sleep(1.0)
        for w in (workers[0], workers[2]):
            w.send_signal(signal.SIGTERM)
        for w in (workers[0], workers[2]):
            out, _ = w.communicate(timeout=120)
            assert w.returncode == 0
            assert "lag 0 error None" in out, out
        # The killed worker's log: a new process on it resumes from the server's last seq.
        again = start(logs[1], calls=25)
        out, _ = again.communicate(timeout=120)
        assert again.returncode == 0 and "lag 0 error None" in out, out
    finally:
        for w in workers:
            if w.poll() is None:
                w.kill()
                w.wait()
            if w.stdout is not None:
                w.stdout.close()
    with psycopg.connect(dsn) as conn:
        total = conn.execute("SELECT count(*) FROM execgate_audit").fetchone()
    assert total is not None and total[0] == sum(len(local_records(log)) for log in logs)
    for log in logs:
        assert_shipped_exactly(dsn, log)
    reports = verify_postgres(dsn, key.verify_key)
    assert len(reports) == 3 and all(r.ok for _, r in reports), reports
    assert cli(["verify", "--postgres", dsn, "--key", str(tmp_path / "audit.pub")]) == 0


def test_records_are_shipped_at_interpreter_exit_without_close(
    tmp_path: Path, key: SigningKey, dsn: str
) -> None:
    keyfile = tmp_path / "audit.key"
    key.to_pem(str(keyfile))
    path = tmp_path / "a.jsonl"
    code = (
        "import execgate, sys\n"
        f"gate = execgate.Gate({POLICY!r}, key=sys.argv[1], audit=sys.argv[2], ship_to=sys.argv[3])\n"
        "for i in range(30):\n"
        "    gate.check('ok', {'i': i})\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, str(keyfile), str(path), dsn], capture_output=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert_shipped_exactly(dsn, path)


def test_a_log_whose_first_file_is_gone_is_not_shipped_and_says_why(
    tmp_path: Path, key: SigningKey, dsn: str
) -> None:
    path = tmp_path / "rot.jsonl"
    with execgate.Gate(
        POLICY, timeout=10, audit=AuditLog(str(path), key, rotate_bytes=4096)
    ) as gate:
        make_calls(gate, 20)
    min(tmp_path.glob("rot.jsonl.*")).unlink()  # the archive holding seq 1
    with execgate.Gate(POLICY, timeout=10, key=key, audit=path, ship_to=dsn) as gate:
        status = wait_for(lambda: (s := gate.shipping) and s.last_error and s, "the error")
        assert "first record (seq 1) is not here" in (status.last_error or "")
        assert status.log_id is None and status.shipped_seq == 0
        assert gate.check("ok").allowed
    assert rows(dsn) == []
