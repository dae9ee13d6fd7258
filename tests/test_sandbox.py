"""The sandbox, tested as an escaping tool would try: each test asserts the
limit held and was reported."""

from __future__ import annotations

import asyncio
import os
import pathlib
import socket
import subprocess
import sys
import threading
import time

import pytest

import execgate
from execgate import Limits, Sandbox
from procs import pids_with

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="Linux sandbox")

# Python's own files live outside the system directories (pyenv, venv): let the
# child read them so Python tools can start.
PYTHON_PATHS = sorted({os.path.realpath(p) for p in (sys.prefix, sys.base_prefix, sys.exec_prefix)})
PY = os.path.realpath(sys.executable)


def py_box(**kw) -> Sandbox:  # type: ignore[no-untyped-def]
    read = [*PYTHON_PATHS, *kw.pop("read", ())]
    return Sandbox(read=read, **kw)


def sh(box: Sandbox, script: str) -> execgate.Completed:
    return box.run(["/bin/sh", "-c", script])


def test_reports_protections_in_force() -> None:
    done = sh(Sandbox(limits=Limits(cpu=5, memory="256M", processes=32, wall=10)), "echo ok")
    assert done.ok and done.stdout == b"ok\n"
    p = done.protections
    assert p["landlock_abi"] >= 1 and p["no_new_privs"] and p["netns"]
    assert p["rlimits"]["cpu"] == 5 and p["rlimits"]["core"] == 0
    if os.geteuid() == 0:
        assert p["cgroups"] == ["memory", "pids"] and p["process_limit"] == "cgroup-pids"
    assert p["missing"] == []


def test_memory_hog_is_stopped() -> None:
    box = py_box(limits=Limits(memory="64M", wall=30))
    done = box.run([PY, "-c", "x = []\nwhile True: x.append(bytearray(4 << 20))"])
    assert not done.ok
    assert done.limit_hit == "memory", (
        done.limit_hit,
        done.exit_code,
        done.signal,
        done.stderr[-200:],
    )
    assert done.usage["max_rss"] <= 80 << 20


def test_cpu_spin_is_stopped_at_the_cpu_limit() -> None:
    done = sh(Sandbox(limits=Limits(cpu=1, wall=30)), "while :; do :; done")
    assert done.limit_hit == "cpu" and done.signal is not None
    assert 0.9 <= done.usage["user_cpu"] + done.usage["system_cpu"] <= 3


def _marker() -> str:
    """A `sleep` argument no other process has: the tool's processes are found
    by it in the host's /proc (inside its PID namespace their pids differ)."""
    return f"600.{time.monotonic_ns() % 10**9:09d}"


def test_wall_limit_kills_the_whole_tree_including_background_grandchildren(
    tmp_path: pathlib.Path,
) -> None:
    m = _marker()
    box = Sandbox(limits=Limits(wall=1), write=[tmp_path])
    seen: list[int] = []
    watcher = threading.Timer(0.6, lambda: seen.extend(pids_with(m)))
    watcher.start()
    start = time.monotonic()
    done = sh(box, f"sleep {m} & setsid sleep {m} & sleep 600")
    watcher.join()
    assert done.limit_hit == "wall" and time.monotonic() - start < 10
    assert len(seen) == 2  # both were there, and found by their marker
    deadline = time.monotonic() + 5
    while pids_with(m) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not pids_with(m), "a grandchild survived"


def test_background_process_does_not_outlive_a_normal_exit(tmp_path: pathlib.Path) -> None:
    m = _marker()
    done = sh(Sandbox(write=[tmp_path]), f"sleep {m} & sleep 0.1; exit 3")
    assert done.exit_code == 3 and done.limit_hit is None
    time.sleep(0.2)
    assert not pids_with(m)


def test_fork_bomb_is_bounded() -> None:
    box = Sandbox(limits=Limits(processes=20, wall=10, cpu=10))
    done = sh(box, "i=0; while [ $i -lt 200 ]; do sleep 5 & i=$((i+1)); done; wait")
    if os.geteuid() == 0:
        assert done.protections["process_limit"] == "cgroup-pids"
    assert done.limit_hit == "processes", (done.limit_hit, done.stderr[-300:])
    assert b"fork" in done.stderr.lower() or b"resource" in done.stderr.lower()
    # The machine is usable: we can still start processes, and nothing leaked.
    assert subprocess.run(["true"]).returncode == 0


def test_filesystem_rules_hold_even_as_root(tmp_path: pathlib.Path) -> None:
    allowed_w = tmp_path / "out"
    allowed_r = tmp_path / "in"
    secret_dir = tmp_path / "secret"
    for d in (allowed_w, allowed_r, secret_dir):
        d.mkdir()
    (allowed_r / "data.txt").write_text("public")
    (secret_dir / "key.txt").write_text("TOPSECRET")
    box = Sandbox(read=[allowed_r], write=[allowed_w])
    ok = sh(box, f"cat {allowed_r}/data.txt > {allowed_w}/copy.txt && cat {allowed_w}/copy.txt")
    assert ok.ok and ok.stdout == b"public"
    assert (allowed_w / "copy.txt").read_text() == "public"
    assert sh(box, f"echo x > {allowed_r}/new.txt").exit_code != 0  # read-only path
    assert not (allowed_r / "new.txt").exists()
    assert sh(box, f"echo x > {tmp_path}/escape.txt").exit_code != 0
    assert not (tmp_path / "escape.txt").exists()
    leak = sh(box, f"cat {secret_dir}/key.txt")
    assert leak.exit_code != 0 and b"TOPSECRET" not in leak.stdout
    assert sh(box, "cat /etc/shadow").exit_code != 0
    assert (
        sh(box, f"ln -s {secret_dir}/key.txt {allowed_w}/link; cat {allowed_w}/link").stdout == b""
    )


def _listener() -> tuple[socket.socket, int]:
    """A host listener that accepts (and closes) connections until it is closed.

    The accepting thread polls, so it ends when the test closes the socket instead of
    staying blocked in accept() on a descriptor number a later test reuses.
    """
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(8)
    srv.settimeout(0.1)

    def serve() -> None:
        while srv.fileno() != -1:
            try:
                conn, _ = srv.accept()
            except TimeoutError:
                continue
            except OSError:  # closed by the test
                return
            conn.close()

    threading.Thread(target=serve, daemon=True).start()
    return srv, srv.getsockname()[1]


CONNECT = "import socket,sys; socket.create_connection(('127.0.0.1', int(sys.argv[1])), timeout=3); print('connected')"


def test_network_none_cannot_reach_the_host_and_host_can() -> None:
    srv, port = _listener()
    with srv:
        isolated = py_box(limits=Limits(wall=20)).run([PY, "-c", CONNECT, str(port)])
        assert isolated.exit_code != 0 and b"connected" not in isolated.stdout
        assert isolated.protections["netns"]
        host = py_box(network="host", limits=Limits(wall=20)).run([PY, "-c", CONNECT, str(port)])
        assert host.ok and host.stdout.strip() == b"connected"


def test_network_port_list_is_enforced_by_landlock() -> None:
    srv, port = _listener()
    other, other_port = _listener()
    with srv, other:
        box = py_box(network=[port], limits=Limits(wall=20))
        if box.run(["/bin/true"]).protections["landlock_abi"] < 4:
            pytest.skip("Landlock TCP rules need ABI 4")
        assert box.run([PY, "-c", CONNECT, str(port)]).ok
        denied = box.run([PY, "-c", CONNECT, str(other_port)])
        assert denied.exit_code != 0 and b"Permission" in denied.stderr


def test_parent_secrets_are_not_inherited(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-secret")
    monkeypatch.setenv("HARMLESS", "yes")
    assert sh(Sandbox(), "env").stdout.count(b"sk-secret") == 0
    named = sh(Sandbox(env_allow=("OPENAI_API_KEY",)), "echo $OPENAI_API_KEY")
    assert named.stdout == b"sk-secret\n"
    assert sh(Sandbox(env={"X": "1"}), "echo $X$HARMLESS").stdout == b"1\n"
    # Nor through /proc: Landlock keeps the child from reading other processes' environ.
    assert b"sk-secret" not in sh(Sandbox(), f"cat /proc/{os.getpid()}/environ").stdout


def test_output_past_the_cap_is_truncated_and_memory_stays_bounded() -> None:
    box = Sandbox(limits=Limits(output="64k", wall=30))
    done = sh(box, "head -c 200000000 /dev/zero; echo tail >&2")
    assert done.truncated and done.limit_hit == "output"
    assert len(done.stdout) == 64 * 1024 and done.stderr == b"tail\n"
    assert done.exit_code == 0


def test_file_size_limit() -> None:
    with_tmp = pathlib.Path(os.environ.get("TMPDIR", "/tmp"))
    target = with_tmp / f"execgate-fsize-{os.getpid()}"
    try:
        done = sh(
            Sandbox(write=[with_tmp], limits=Limits(file_size="1M")),
            f"head -c 5000000 /dev/zero > {target}",
        )
        assert done.limit_hit == "file_size" and target.stat().st_size == 1 << 20
    finally:
        target.unlink(missing_ok=True)


@pytest.mark.parametrize("missing", ["landlock", "netns", "cgroup", "userns", "pidns", "seccomp"])
def test_strict_refuses_when_a_protection_is_unavailable(
    monkeypatch: pytest.MonkeyPatch, tmp_path: pathlib.Path, missing: str
) -> None:
    monkeypatch.setenv("EXECGATE_TEST_UNAVAILABLE", missing)
    marker = tmp_path / "ran"
    box = Sandbox(strict=True, write=[tmp_path], limits=Limits(memory="64M", processes=10))
    with pytest.raises(execgate.SandboxError, match="strict"):
        sh(box, f"touch {marker}")
    assert not marker.exists()
    relaxed = sh(
        Sandbox(write=[tmp_path], limits=Limits(memory="64M", processes=10)), f"touch {marker}"
    )
    assert marker.exists() and relaxed.protections["missing"]


def test_run_async_does_not_block_the_loop() -> None:
    async def main() -> tuple[int, execgate.Completed]:
        ticks = 0

        async def ticker() -> None:
            nonlocal ticks
            while True:
                await asyncio.sleep(0.01)
                ticks += 1

        t = asyncio.create_task(ticker())
        done = await Sandbox().run_async(["/bin/sleep", "0.3"])
        t.cancel()
        return ticks, done

    ticks, done = asyncio.run(main())
    assert done.ok and ticks >= 10


POLICY = """
package execgate
default decision := {"allow": false, "reasons": ["not allowed"]}
decision := {"allow": true, "obligations": {"sandbox": {"limits": {"wall_seconds": 1}, "network": "none"}}} if {
    input.action.name == "shell.exec"
    input.action.args.argv[0] == "/bin/sh"
}
"""


def test_gate_run_authorizes_tightens_and_receipts(tmp_path: pathlib.Path) -> None:
    key = execgate.SigningKey.generate()
    log = tmp_path / "audit.jsonl"
    with execgate.Gate(POLICY, key=key, audit=log) as gate:
        done = gate.run(
            ["/bin/sh", "-c", "sleep 30"], sandbox=Sandbox(network="host", limits=Limits(wall=60))
        )
        assert done.limit_hit == "wall" and done.duration < 10  # the policy's 1 s wall won
        assert done.sandbox["network"] == "none"
        with pytest.raises(execgate.ActionDenied):
            gate.run(["/bin/rm", "-rf", str(tmp_path)])
        assert log.exists()
        ok = gate.run(["/bin/sh", "-c", "echo fine"])
        assert ok.ok
    report = execgate.verify_log(log, key.verify_key)
    assert report.ok and (report.allowed, report.denied, report.completions) == (2, 1, 2)
    records = [execgate.Receipt.from_json(line) for line in log.read_text().splitlines()]
    first = next(r for r in records if r.kind == "completion").payload["outcome"]
    assert first["limit_hit"] == "wall" and first["status"] == "error"
    assert first["sandbox"]["limits"]["wall_seconds"] == 1
    assert first["protections"]["netns"] is True
    assert set(first) >= {
        "exit_code",
        "signal",
        "usage",
        "stdout_sha256",
        "stderr_sha256",
        "truncated",
    }
    auth = next(r for r in records if r.kind == "decision").payload
    assert "argv" not in str(auth)  # arguments only as a digest


def test_a_policy_cannot_loosen_the_sandbox() -> None:
    loose = POLICY.replace('"network": "none"', '"network": "host"').replace(
        '"wall_seconds": 1', '"wall_seconds": 1000'
    )
    gate = execgate.Gate(loose)
    done = gate.run(["/bin/sh", "-c", "sleep 5"], sandbox=Sandbox(limits=Limits(wall=0.3)))
    assert done.limit_hit == "wall" and done.sandbox["network"] == "none"


def test_unenforceable_obligation_fails_closed() -> None:
    gate = execgate.Gate(POLICY.replace('"network": "none"', '"gpu": "none"'))
    with pytest.raises(execgate.ActionDenied, match="unknown key") as info:
        gate.run(["/bin/sh", "-c", "echo should not run"])
    assert info.value.decision.error == "obligation"


ISOLATING = execgate.Gate(
    "package execgate\ndecision := true\n", key=execgate.SigningKey.generate()
)
ISOLATED_BOX = Sandbox(limits=Limits(memory="128M", wall=30))


@ISOLATING.guard(isolate=ISOLATED_BOX)
def isolated_add(a: int, b: int) -> dict[str, int]:
    print("noise on stdout does not corrupt the result")
    return {"sum": a + b, "pid": os.getpid()}


@ISOLATING.guard(isolate=ISOLATED_BOX)
def isolated_raise(message: str) -> None:
    raise ValueError(message)


@ISOLATING.guard(isolate=ISOLATED_BOX)
def isolated_hog() -> None:
    blocks = []
    while True:
        blocks.append(b"x" * (8 << 20))  # touched pages: resident memory grows


@ISOLATING.guard(isolate=ISOLATED_BOX)
def isolated_read(path: str) -> str:
    with open(path) as f:
        return f.read()


def test_isolated_python_function_runs_in_a_sandboxed_child(tmp_path: pathlib.Path) -> None:
    result = isolated_add(2, 3)
    assert result["sum"] == 5 and result["pid"] != os.getpid()
    with pytest.raises(ValueError, match="bad input"):
        isolated_raise("bad input")
    with pytest.raises(execgate.SandboxError, match="limit memory") as info:
        isolated_hog()
    assert info.value.completed.limit_hit == "memory"  # type: ignore[attr-defined]
    secret = tmp_path / "secret.txt"
    secret.write_text("TOPSECRET")
    with pytest.raises(PermissionError):
        isolated_read(str(secret))


def test_isolate_rejects_what_it_cannot_run() -> None:
    with pytest.raises(TypeError, match="local"):

        @ISOLATING.guard(isolate=ISOLATED_BOX)
        def local() -> None:
            pass


def test_stdin_and_working_directory(tmp_path: pathlib.Path) -> None:
    (tmp_path / "here.txt").write_text("x")
    done = Sandbox(read=[tmp_path], cwd=tmp_path).run(["/bin/sh", "-c", "cat; ls"], stdin="fed\n")
    assert done.ok and done.stdout == b"fed\nhere.txt\n"


def test_huge_output_does_not_grow_the_parent() -> None:
    import resource

    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    done = sh(Sandbox(limits=Limits(output="1M", wall=60)), "head -c 1000000000 /dev/zero")
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    assert done.truncated and len(done.stdout) == 1 << 20
    assert (after - before) * 1024 < 64 << 20  # a gigabyte went through; the peak barely moved
