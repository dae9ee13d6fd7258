"""Limits and history shared by many workers through a real Redis (issue 16).

Every test runs against a redis-server the fixture starts on a free port and
a unix socket in a temporary directory.
"""

from __future__ import annotations

import base64
import json
import multiprocessing
import pathlib
import subprocess
import sys
import threading
import time
import urllib.parse
from collections.abc import Iterator
from importlib import resources

import pytest

import execgate
from certs import LocalCA, local_ca
from execgate.cli import main
from redis_server import RedisServer, redis_binary

POLICY = """
package execgate
default decision := false
decision := true if input.action.name == "free"
decision := {"allow": true, "obligations": {
    "budget": {"key": sprintf("spend:%v", [input.principal.id]), "limit": input.action.args.limit,
               "cost": input.action.args.cost},
}} if input.action.name == "spend"
decision := {"allow": true, "obligations": {
    "rate": {"key": sprintf("calls:%v", [input.action.args.round]), "limit": 5,
             "window_seconds": 3600},
}} if input.action.name == "call"
"""


@pytest.fixture
def redis(tmp_path: pathlib.Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path, redis_binary())
    server.start()
    yield server
    server.stop()


@pytest.fixture
def key(tmp_path: pathlib.Path) -> pathlib.Path:
    path = tmp_path / "k.pem"
    execgate.SigningKey.generate().to_pem(path)
    return path


def _pub(key: pathlib.Path) -> pathlib.Path:
    pub = key.with_suffix(".pub")
    execgate.SigningKey.from_pem(key).verify_key.to_pem(pub)
    return pub


def _init(url: str, key: pathlib.Path, *logs: pathlib.Path) -> None:
    args = ["state", "rebuild", "--state", url, "--key", str(_pub(key))]
    assert main([*args, *map(str, logs)]) == 0


def _allowed(log: pathlib.Path) -> list[dict[str, object]]:
    payloads = [
        json.loads(base64.b64decode(json.loads(line)["payload"]))
        for line in log.read_text().splitlines()
    ]
    return [p for p in payloads if p.get("kind") == "decision" and p["decision"] == "allow"]


# -- many processes racing ----------------------------------------------------

ROUNDS = 3
WORKERS = 6


def _worker(url: str, key: str, log: str, start: object, out: object) -> None:
    gate = execgate.Gate(POLICY, key=key, audit=log, state=url)
    for r in range(ROUNDS):
        start.wait()  # type: ignore[attr-defined]  # every worker is ready: they race
        # Each round spends from a fresh budget (a key the log pseudonymizes).
        with execgate.principal(f"bob{r}@example.com"):
            spent = sum(gate.check("spend", {"limit": 7, "cost": 1}).allowed for _ in range(5))
        called = sum(gate.check("call", {"round": r}).allowed for _ in range(4))
        out.put((r, spent, called))  # type: ignore[attr-defined]
    gate.close()


def test_workers_racing_get_exactly_the_budget_and_the_rate_every_round(
    redis: RedisServer, key: pathlib.Path, tmp_path: pathlib.Path
) -> None:
    _init(redis.url, key)
    ctx = multiprocessing.get_context("spawn")
    start, out = ctx.Barrier(WORKERS + 1), ctx.Queue()
    logs = [tmp_path / f"w{i}.jsonl" for i in range(WORKERS)]
    procs = [
        ctx.Process(target=_worker, args=(redis.url, str(key), str(log), start, out))
        for log in logs
    ]
    for p in procs:
        p.start()
    for r in range(ROUNDS):
        start.wait(timeout=120)
        results = [out.get(timeout=120) for _ in procs]
        assert {res[0] for res in results} == {r}
        assert sum(res[1] for res in results) == 7, results  # the budget, exactly
        assert sum(res[2] for res in results) == 5, results  # the rate, exactly
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    # Every worker's log holds what it was granted: 12 per round in all.
    allowed = [a for log in logs for a in _allowed(log)]
    assert len(allowed) == ROUNDS * 12
    # The store's keys are the pseudonyms the logs record, never the address.
    principal = next(a["principal"] for a in allowed if a["action"]["name"] == "spend")  # type: ignore[index]
    assert "@" not in principal["id"]  # type: ignore[index]
    assert redis.command("EXISTS", "{execgate}:b:spend:" + principal["id"]) == "1"  # type: ignore[index]
    assert redis.command("KEYS", "*example.com*") == "*0"


# -- one process ----------------------------------------------------------------


def test_a_retried_call_does_not_take_twice(redis: RedisServer, key: pathlib.Path) -> None:
    _init(redis.url, key)
    gate = execgate.Gate(POLICY, key=key, state=redis.url)
    spend = {"limit": 2, "cost": 1}
    with execgate.principal("p"):
        with execgate.context(tool_call_id="call_1"):
            assert gate.check("spend", spend).allowed
            assert gate.check("spend", spend).allowed  # the same call again: free
        with execgate.context(tool_call_id="call_2"):
            assert gate.check("spend", spend).allowed
        with execgate.context(tool_call_id="call_3"):
            d = gate.check("spend", spend)
            assert not d.allowed and "budget exceeded" in d.reasons[0]
            assert "has spent 2 of 2" in d.reasons[0]
        # The same id with other arguments is another call: it pays.
        with execgate.context(tool_call_id="call_1"):
            assert not gate.check("spend", {**spend, "note": 1}).allowed


def test_usage_and_limits_use_redis_integer_units(redis: RedisServer, key: pathlib.Path) -> None:
    _init(redis.url, key)
    reads_usage = POLICY.replace(
        'decision := true if input.action.name == "free"',
        'decision := {"allow": true, "reasons": [sprintf("%v", [input.usage.budgets])],'
        ' "obligations": {"budget": {"key": "b", "limit": 1, "cost": 0.1}}}'
        ' if input.action.name == "free"',
    )
    gate = execgate.Gate(reads_usage, key=key, state=redis.unix_url)
    allowed = [gate.check("free") for _ in range(11)]
    assert [d.allowed for d in allowed] == [True] * 10 + [False]  # 10 x 0.1 is exactly 1
    assert "0.9" in allowed[9].reasons[0]
    assert redis.command("GET", "{execgate}:b:b").endswith("1000000")


def test_history_written_by_one_process_is_read_by_another(
    redis: RedisServer, key: pathlib.Path, tmp_path: pathlib.Path
) -> None:
    _init(redis.url, key)
    policy = resources.files("execgate") / "examples" / "no_exfiltration.rego"
    script = (
        "import execgate, sys\n"
        "gate = execgate.Gate(sys.argv[1], key=sys.argv[2], state=sys.argv[3])\n"
        "with execgate.context(session='risky'):\n"
        "    assert gate.check('secrets.read', {'name': 'db'}).allowed\n"
    )
    subprocess.run(
        [sys.executable, "-c", script, str(policy), str(key), redis.url],
        check=True,
        timeout=120,
    )
    gate = execgate.Gate(pathlib.Path(str(policy)), key=key, state=redis.url)
    with execgate.context(session="risky"):
        d = gate.check("http.post", {"url": "https://x"})
    assert not d.allowed
    assert d.reasons == ("no http.post after secrets.read in the same session",)
    assert [h["action"] for h in d.input["history"]] == ["secrets.read"]
    with execgate.context(session="safe"):
        assert gate.check("http.post", {"url": "https://x"}).allowed


def test_redis_stopped_mid_run_denies_every_call_with_limits(
    redis: RedisServer, key: pathlib.Path
) -> None:
    _init(redis.url, key)
    gate = execgate.Gate(POLICY, key=key, state=redis.url, state_timeout=0.2)
    seen: list[tuple[float, str, bool, str | None, str]] = []
    lock = threading.Lock()
    stop = threading.Event()

    def worker(action: str) -> None:
        n = 0
        while not stop.is_set():
            n += 1
            began = time.monotonic()
            d = gate.check(action, {"limit": 1e9, "cost": 1, "round": n})
            with lock:
                seen.append((began, action, d.allowed, d.error, d.reasons[0] if d.reasons else ""))

    threads = [threading.Thread(target=worker, args=(a,)) for a in ("spend", "call", "free")]
    for t in threads:
        t.start()
    time.sleep(0.5)
    redis.stop()
    stopped = time.monotonic()
    time.sleep(0.5)
    stop.set()
    for t in threads:
        t.join()
    before = [s for s in seen if s[0] < stopped]
    after = [s for s in seen if s[0] > stopped]
    assert any(s[2] for s in before if s[1] == "spend")
    limited = [s for s in after if s[1] != "free"]
    assert limited and not any(s[2] for s in limited)
    assert {s[3] for s in limited} == {"state"}
    assert all(redis.url in s[4] for s in limited), limited[0]
    free = [s for s in after if s[1] == "free"]
    assert free and all(s[2] for s in free)  # calls without limits still work


def test_a_store_that_lost_its_data_denies_until_rebuilt_from_the_logs(
    redis: RedisServer, key: pathlib.Path, tmp_path: pathlib.Path
) -> None:
    log = tmp_path / "audit.jsonl"
    # A new store holds no execgate state: limits deny until it is initialized.
    gate = execgate.Gate(POLICY, key=key, audit=log, state=redis.url)
    d = gate.check("spend", {"limit": 5, "cost": 1})
    assert d.error == "state" and "execgate state rebuild" in d.reasons[0]
    assert gate.check("free").allowed
    gate.close()
    log.unlink()
    _init(redis.url, key)
    gate = execgate.Gate(POLICY, key=key, audit=log, state=redis.url)
    with execgate.principal("bob@example.com"):
        assert [gate.check("spend", {"limit": 5, "cost": 1}).allowed for _ in range(3)] == [
            True
        ] * 3
        assert all(gate.check("call", {"round": 0}).allowed for _ in range(4))
    gate.close()

    redis.command("FLUSHALL")
    gate = execgate.Gate(POLICY, key=key, audit=log, state=redis.url)
    with execgate.principal("bob@example.com"):
        d = gate.check("spend", {"limit": 5, "cost": 1})
        assert not d.allowed and d.error == "state" and "holds no execgate state" in d.reasons[0]
        _init(redis.url, key, log)
        # The counts are back: 2 of the budget's 5 and 1 of the rate's 5 remain.
        assert [gate.check("spend", {"limit": 5, "cost": 1}).allowed for _ in range(3)] == [
            True,
            True,
            False,
        ]
        assert [gate.check("call", {"round": 0}).allowed for _ in range(2)] == [True, False]
    gate.close()


def test_rebuild_restores_history_and_counts_retries_once(
    redis: RedisServer, key: pathlib.Path, tmp_path: pathlib.Path
) -> None:
    log = tmp_path / "audit.jsonl"
    policy = pathlib.Path(str(resources.files("execgate") / "examples" / "no_exfiltration.rego"))
    _init(redis.url, key)
    gate = execgate.Gate(policy, key=key, audit=log, state=redis.url)
    with execgate.context(session="risky"):
        assert gate.check("secrets.read", {"name": "db"}).allowed
    gate.close()
    spender = execgate.Gate(POLICY, key=key, audit=tmp_path / "b.jsonl", state=redis.url)
    with execgate.principal("p"), execgate.context(tool_call_id="t1"):
        assert spender.check("spend", {"limit": 2, "cost": 1}).allowed
        assert spender.check("spend", {"limit": 2, "cost": 1}).allowed  # a retry
    spender.close()
    redis.stop()
    redis.start()  # no persistence: everything is gone
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "execgate",
            "state",
            "rebuild",
            "--state",
            redis.url,
            "--key",
            str(_pub(key)),
            str(log),
            str(tmp_path / "b.jsonl"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    assert "3 decisions (1 retries counted once)" in out.stdout
    gate = execgate.Gate(policy, key=key, audit=log, state=redis.url)
    with execgate.context(session="risky"):
        d = gate.check("http.post", {"url": "https://x"})
    assert not d.allowed and "after secrets.read" in d.reasons[0]
    spender = execgate.Gate(POLICY, key=key, state=redis.url)
    with execgate.principal("p"):
        assert spender.check("spend", {"limit": 2, "cost": 1}).allowed  # 1 of 2 was spent
        assert not spender.check("spend", {"limit": 2, "cost": 1}).allowed


def test_rebuild_refuses_a_log_that_does_not_verify(
    redis: RedisServer, key: pathlib.Path, tmp_path: pathlib.Path
) -> None:
    _init(redis.url, key)
    log = tmp_path / "audit.jsonl"
    gate = execgate.Gate(POLICY, key=key, audit=log)
    gate.check("free")
    gate.check("free")
    gate.close()
    lines = log.read_text().splitlines()
    log.write_text("\n".join([lines[1], lines[0]]) + "\n")
    args = ["state", "rebuild", "--state", redis.url, "--key", str(_pub(key)), str(log)]
    assert main(args) != 0
    assert redis.command("EXISTS", "{execgate}:marker") == "1"  # the store is left as it was


def test_state_settings_are_checked(redis: RedisServer, key: pathlib.Path) -> None:
    with pytest.raises(execgate.ConfigurationError, match="signing key"):
        execgate.Gate(POLICY, state=redis.url)
    with pytest.raises(execgate.ConfigurationError, match="not a Redis URL"):
        execgate.Gate(POLICY, key=key, state="http://127.0.0.1/")
    with pytest.raises(execgate.ConfigurationError, match="state_timeout"):
        execgate.Gate(POLICY, key=key, state=redis.url, state_timeout=0)
    # A store that is down does not stop a gate from starting; it denies.
    gate = execgate.Gate(POLICY, key=key, state="redis://127.0.0.1:1/0")
    d = gate.check("spend", {"limit": 1, "cost": 1})
    assert d.error == "state" and "redis://127.0.0.1:1/0" in d.reasons[0]
    assert gate.check("free").allowed
    with pytest.raises(execgate.StateError, match=r"127\.0\.0\.1:1"):
        execgate._core.rebuild_state("redis://127.0.0.1:1/0", [])


def test_units_are_given_back_when_the_decision_cannot_be_recorded(
    redis: RedisServer, key: pathlib.Path, tiny_fs: pathlib.Path
) -> None:
    _init(redis.url, key)
    gate = execgate.Gate(POLICY, key=key, audit=tiny_fs / "log.jsonl", state=redis.url)
    filler = tiny_fs / "filler"
    with open(filler, "wb", buffering=0) as f:
        try:
            while True:
                f.write(b"\0" * 512)
        except OSError:
            pass  # the disk is full
    with execgate.principal("p"):
        d = gate.check("spend", {"limit": 2, "cost": 1})
        assert not d.allowed and d.error == "audit"
        assert redis.command("GET", "{execgate}:b:spend:p") == "0"  # taken, then given back
        filler.unlink()
        assert gate.check("spend", {"limit": 2, "cost": 1}).allowed
        assert gate.check("spend", {"limit": 2, "cost": 1}).allowed
        assert not gate.check("spend", {"limit": 2, "cost": 1}).allowed


def test_rediss_verifies_the_server_and_denies_one_it_cannot_trust(
    tmp_path: pathlib.Path, key: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ca, chain = local_ca(tmp_path)
    server = RedisServer(tmp_path, redis_binary(), tls=chain)
    server.start()
    try:
        # The system's roots, overridden as OpenSSL tools do: this CA only.
        monkeypatch.setenv("SSL_CERT_FILE", str(ca))
        _init(server.tls_url, key)
        gate = execgate.Gate(POLICY, key=key, state=server.tls_url)
        with execgate.principal("p"):
            assert gate.check("spend", {"limit": 1, "cost": 1}).allowed
            d = gate.check("spend", {"limit": 1, "cost": 1})
            assert not d.allowed and "budget exceeded" in d.reasons[0]
        assert server.command("EXISTS", "{execgate}:b:spend:p") == "1"  # over TLS, in that Redis
        # A server whose certificate no trusted CA signed is not a store.
        (tmp_path / "other").mkdir()
        other, _ = local_ca(tmp_path / "other")
        monkeypatch.setenv("SSL_CERT_FILE", str(other))
        for state in (server.tls_url, server.tls_url + "#insecure"):
            d = execgate.Gate(POLICY, key=key, state=state).check("spend", {"limit": 9, "cost": 1})
            assert not d.allowed and d.error == "state", d.reasons
            assert server.tls_url in d.reasons[0]
    finally:
        server.stop()


def test_rediss_client_certificates_are_presented_and_refusals_deny(
    tmp_path: pathlib.Path, key: pathlib.Path
) -> None:
    ca = LocalCA(tmp_path)
    server = RedisServer(tmp_path, redis_binary(), tls=ca.server(), client_ca=ca.path)
    server.start()
    try:
        cert, private = ca.client("worker")

        def url(**files: pathlib.Path) -> str:
            query = urllib.parse.urlencode({"ssl_ca_certs": ca.path, **files})
            return f"{server.tls_url}?{query}"

        good = url(ssl_certfile=cert, ssl_keyfile=private)
        _init(good, key)  # the CLI takes the same URL
        gate = execgate.Gate(POLICY, key=key, state=good)
        with execgate.principal("p"):
            assert gate.check("spend", {"limit": 1, "cost": 1}).allowed
            d = gate.check("spend", {"limit": 1, "cost": 1})
            assert not d.allowed and "budget exceeded" in d.reasons[0]
        assert server.command("EXISTS", "{execgate}:b:spend:p") == "1"
        (tmp_path / "other").mkdir()
        stranger = LocalCA(tmp_path / "other").client("stranger")
        _, another_key = ca.client("another")
        refused = [
            (url(), "CertificateRequired"),  # no certificate
            (url(ssl_certfile=stranger[0], ssl_keyfile=stranger[1]), "UnknownCA"),
            (url(ssl_certfile=cert, ssl_keyfile=another_key), "KeyMismatch"),
        ]
        for state, cause in refused:
            d = execgate.Gate(POLICY, key=key, state=state).check("spend", {"limit": 9, "cost": 1})
            assert not d.allowed and d.error == "state", d.reasons
            # The store is named without the files' query; the cause follows.
            assert f"{server.tls_url}: " in d.reasons[0] and cause in d.reasons[0], d.reasons
        assert server.command("GET", "{execgate}:b:spend:p") == "1000000"  # nothing else taken
    finally:
        server.stop()
    for state, why in [
        (f"{server.tls_url}?ssl_certfile={cert}", "go together"),
        (f"{server.tls_url}?ssl_certfile={cert}&ssl_keyfile={tmp_path}/none.key", "none.key"),
        (f"{server.url}?ssl_ca_certs={ca.path}", "need TLS"),
    ]:
        with pytest.raises(execgate.ConfigurationError, match=why):
            execgate.Gate(POLICY, key=key, state=state)
