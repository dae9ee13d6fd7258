"""Issue 11's findings, each tried as an escaping tool would try it, as root.

Every test shows the attempt failing *and* what the attacker was after staying
untouched on the host (the listener received nothing, the process lives, the
hostname is unchanged). Where a setting is meant to allow something (UDP with
``network="host"``, Unix sockets with ``unix_sockets=True``), the same attempt
is shown to work there, so a test that cannot fail is not mistaken for a
protection.
"""

from __future__ import annotations

import os
import pathlib
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time

import pytest

import execgate
from execgate import Limits, Sandbox
from procs import alive, pids_with

pytestmark = [
    pytest.mark.skipif(sys.platform != "linux", reason="Linux sandbox"),
    pytest.mark.skipif(os.geteuid() != 0, reason="the findings are about a gate running as root"),
]

PYTHON_PATHS = sorted({os.path.realpath(p) for p in (sys.prefix, sys.base_prefix, sys.exec_prefix)})
PY = os.path.realpath(sys.executable)


def py_box(**kw) -> Sandbox:  # type: ignore[no-untyped-def]
    read = [*PYTHON_PATHS, *kw.pop("read", ())]
    kw.setdefault("limits", Limits(wall=20))
    return Sandbox(read=read, **kw)


def attempt(box: Sandbox, code: str, *args: object) -> execgate.Completed:
    """Runs `code` in a sandboxed Python; it prints what it achieved."""
    return box.run([PY, "-c", textwrap.dedent(code), *map(str, args)])


# --- 1. named Unix sockets ---------------------------------------------------------------


def _unix_listener(path: str | bytes) -> tuple[socket.socket, list[bytes]]:
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(path)
    srv.listen(4)
    got: list[bytes] = []

    def serve() -> None:
        while True:
            try:
                conn, _ = srv.accept()
            except OSError:
                return
            with conn:
                conn.settimeout(5)
                try:
                    got.append(conn.recv(100))
                except OSError:
                    pass

    threading.Thread(target=serve, daemon=True).start()
    return srv, got


UNIX_CONNECT = """
import socket, sys
addr = sys.argv[1].encode().replace(b"@", b"\\0", 1)
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.connect(addr)
s.sendall(b"escaped")
print("connected")
"""


@pytest.mark.parametrize("network", ["none", "host", "ports"])
def test_named_unix_socket_outside_every_grant_is_unreachable(
    tmp_path: pathlib.Path, network: str
) -> None:
    hidden = tmp_path / "run"
    hidden.mkdir()
    path = str(hidden / "docker.sock")
    srv, got = _unix_listener(path)
    with srv:
        net = [1] if network == "ports" else network
        done = attempt(py_box(network=net), UNIX_CONNECT, path)  # type: ignore[arg-type]
        assert done.exit_code != 0 and b"connected" not in done.stdout
        assert b"PermissionError" in done.stderr, done.stderr[-300:]
        # socketpair (private, connects to nothing outside) still works.
        pair = attempt(py_box(network=net), "import socket; socket.socketpair(); print('ok')")  # type: ignore[arg-type]
        assert pair.ok and pair.stdout == b"ok\n"
        # The grant is what opens it: the same attempt with unix_sockets=True.
        granted = attempt(py_box(network=net, unix_sockets=True), UNIX_CONNECT, path)  # type: ignore[arg-type]
        assert granted.ok, granted.stderr[-300:]
        time.sleep(0.2)
    assert got == [b"escaped"]  # only the granted run got through


def test_policy_can_take_the_unix_socket_grant_away(tmp_path: pathlib.Path) -> None:
    path = str(tmp_path / "agent.sock")
    srv, got = _unix_listener(path)
    with srv:
        done = py_box(unix_sockets=True).run(
            [PY, "-c", UNIX_CONNECT, path], obligation={"unix_sockets": False}
        )
        assert done.exit_code != 0 and done.sandbox["unix_sockets"] is False
    assert got == []


# --- 2. UDP, raw sockets, abstract Unix sockets in each network mode ------------------


def _udp_listener() -> tuple[socket.socket, int]:
    srv = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    srv.bind(("127.0.0.1", 0))
    srv.settimeout(0.5)
    return srv, srv.getsockname()[1]


UDP_SEND = """
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.sendto(b"exfiltrated", ("127.0.0.1", int(sys.argv[1])))
print("sent")
"""


@pytest.mark.parametrize("network", ["none", "ports", "host"])
def test_udp_to_a_host_listener_only_where_the_network_setting_allows(network: str) -> None:
    srv, port = _udp_listener()
    with srv:
        net = [port] if network == "ports" else network
        done = attempt(py_box(network=net), UDP_SEND, port)  # type: ignore[arg-type]
        try:
            received = srv.recv(100)
        except TimeoutError:
            received = b""
    if network == "host":
        assert done.ok and received == b"exfiltrated"  # the setting allows it
        return
    assert received == b""  # nothing reached the host
    if network == "ports":
        # Landlock's port list covers TCP only; seccomp denies the UDP socket.
        assert done.exit_code != 0 and b"PermissionError" in done.stderr
        assert "inet:tcp" in done.protections["seccomp"]["sockets"]


RAW = """
import socket, sys
kinds = {
    "raw-icmp": (socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP),
    "raw6": (socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6),
    "raw-tcp-nonblock": (socket.AF_INET, socket.SOCK_RAW | socket.SOCK_NONBLOCK, socket.IPPROTO_TCP),
    "packet": (socket.AF_PACKET, socket.SOCK_RAW, 0x0300),
    "packet-dgram": (socket.AF_PACKET, socket.SOCK_DGRAM, 0x0300),
    "netlink-audit": (socket.AF_NETLINK, socket.SOCK_RAW, 9),
    "vsock": (40, socket.SOCK_STREAM, 0),
}
for name, args in kinds.items():
    try:
        socket.socket(*args)
        print("OPENED", name)
    except OSError as e:
        print("denied", name, e.errno)
"""


@pytest.mark.parametrize("network", ["none", "ports", "host"])
def test_raw_packet_and_other_family_sockets_are_denied_in_every_mode(network: str) -> None:
    net = [443] if network == "ports" else network
    done = attempt(py_box(network=net), RAW)  # type: ignore[arg-type]
    assert done.ok, done.stderr[-300:]
    assert b"OPENED" not in done.stdout, done.stdout
    assert done.stdout.count(b"denied") == 7


def test_abstract_unix_socket_of_the_host_is_unreachable() -> None:
    name = f"@execgate-test-{os.getpid()}-{time.monotonic_ns()}"
    srv, got = _unix_listener(b"\0" + name[1:].encode())
    with srv:
        for box in (
            py_box(network="host"),  # no Unix sockets at all (seccomp)
            py_box(network="host", unix_sockets=True),  # Landlock's scope
            py_box(network=[443], unix_sockets=True),
        ):
            done = attempt(box, UNIX_CONNECT, name)
            assert done.exit_code != 0 and b"connected" not in done.stdout
            assert b"PermissionError" in done.stderr, done.stderr[-300:]
        assert py_box(unix_sockets=True, network="host").run(["/bin/true"]).protections[
            "landlock_scopes"
        ] == ["abstract_unix_socket", "signal"]
        time.sleep(0.2)
    assert got == []


# --- 3. root powers ------------------------------------------------------------------------


@pytest.mark.parametrize("hide", ["", "pidns"])
def test_cannot_signal_a_host_process(monkeypatch: pytest.MonkeyPatch, hide: str) -> None:
    """By pid, and by finding it in the host's /proc as an attacker would.
    With the PID namespace hidden, Landlock's signal scope alone must hold.

    The sweep only signals processes carrying this test's marker, so that a
    regression fails this test instead of killing the machine's processes."""
    monkeypatch.setenv("EXECGATE_TEST_UNAVAILABLE", hide)
    marker = f"600.{time.monotonic_ns() % 10**9:09d}"
    victim = subprocess.Popen(["sleep", marker])
    try:
        code = """
        import os, signal, sys
        # Given in two halves, so that this process's own cmdline lacks it.
        target, marker = int(sys.argv[1]), (sys.argv[2] + sys.argv[3]).encode()
        try:
            os.kill(target, signal.SIGKILL)
            print("KILLED")
        except OSError as e:
            print("denied", e.errno)
        for p in os.listdir("/proc"):
            try:
                with open(f"/proc/{p}/cmdline", "rb") as f:
                    if marker not in f.read().split(b"\\0"):
                        continue
                os.kill(int(p), signal.SIGKILL)
                print("KILLED", p)
            except (OSError, ValueError):
                pass
        """
        done = attempt(py_box(), code, victim.pid, marker[:5], marker[5:])
        assert b"KILLED" not in done.stdout and b"denied" in done.stdout, done.stdout
        assert done.protections["pidns"] is (hide != "pidns")
        time.sleep(0.1)
        assert victim.poll() is None and alive(victim.pid)  # the host process lives
    finally:
        victim.kill()
        victim.wait()


def test_cannot_set_the_hostname() -> None:
    # The same name again: the kernel checks the permission whatever the
    # value, and a regression cannot rename the machine.
    before = socket.gethostname()
    done = attempt(
        py_box(), "import socket, sys; socket.sethostname(sys.argv[1]); print('set')", before
    )
    assert done.exit_code != 0 and b"PermissionError" in done.stderr
    assert b"set" not in done.stdout and socket.gethostname() == before


SYSCALLS = """
import ctypes, os, sys
libc = ctypes.CDLL(None, use_errno=True)
buf = ctypes.create_string_buffer(4096)
def report(name, r):
    print(name, "OK" if r >= 0 else f"denied {ctypes.get_errno()}")
report("klogctl", libc.klogctl(3, buf, 4096))  # SYSLOG_ACTION_READ_ALL
report("klogctl-size", libc.klogctl(10, None, 0))  # SYSLOG_ACTION_SIZE_BUFFER
attr = (ctypes.c_uint32 * 8)(2, 4, 4, 16)  # BPF_MAP_TYPE_ARRAY, key 4, value 4, 16 entries
report("bpf", libc.syscall(321, 0, attr, 32))  # bpf(BPF_MAP_CREATE)
report("mknod", libc.mknod(sys.argv[1].encode(), 0o20644, os.makedev(1, 3)))
report("ptrace", libc.ptrace(16, int(sys.argv[2]), None, None))  # PTRACE_ATTACH
report("keyctl", libc.syscall(250, 0, -3, 0, 0, 0))  # KEYCTL_GET_KEYRING_ID, session
report("unshare-user", libc.unshare(0x10000000))
report("mount", libc.mount(b"none", sys.argv[3].encode(), b"tmpfs", 0, None))
report("perf_event_open", libc.syscall(298, buf, 0, -1, -1, 0))
report("userfaultfd", libc.syscall(323, 0))
report("io_uring_setup", libc.syscall(425, 8, buf))
report("setuid0", libc.setuid(0))
print(open("/proc/self/status").read())
"""


def test_no_root_power_survives(tmp_path: pathlib.Path) -> None:
    victim = subprocess.Popen(["sleep", "600"])
    try:
        node = tmp_path / "null"
        mnt = tmp_path / "mnt"  # a regression would mount here, not over /tmp
        mnt.mkdir()
        done = attempt(py_box(write=[tmp_path]), SYSCALLS, node, victim.pid, mnt)
    finally:
        victim.kill()
        victim.wait()
        subprocess.run(["umount", str(mnt)], stderr=subprocess.DEVNULL, check=False)
    assert done.ok, done.stderr[-500:]
    lines = dict(
        line.split(" ", 1) for line in done.stdout.decode().splitlines() if line and " " in line
    )
    for call in (
        "klogctl",
        "klogctl-size",
        "bpf",
        "mknod",
        "ptrace",
        "keyctl",
        "unshare-user",
        "mount",
        "perf_event_open",
        "userfaultfd",
        "io_uring_setup",
        "setuid0",
    ):
        assert lines[call].startswith("denied"), (call, lines[call])
    assert not node.exists()
    status = dict(
        line.split(":\t", 1) for line in done.stdout.decode().splitlines() if ":\t" in line
    )
    for cap in ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"):
        assert int(status[cap], 16) == 0, (cap, status[cap])
    assert status["NoNewPrivs"].strip() == "1" and status["Seccomp"].strip() == "2"
    assert status["Uid"].split()[0] == "65534"
    p = done.protections
    assert p["uid"] == 65534 and p["userns"] and p["capabilities"] == []
    assert {"ptrace", "bpf", "syslog", "mount", "keyctl", "perf_event_open"} <= set(
        p["seccomp"]["denied"]
    )


def test_granted_paths_stay_writable_and_system_binaries_run(tmp_path: pathlib.Path) -> None:
    out = tmp_path / "out"
    out.mkdir(mode=0o700)  # root-only, as pytest's own tmp dirs are
    done = Sandbox(write=[out]).run(
        ["/bin/sh", "-c", f"echo data > {out}/f && ls {out} && id -u && /usr/bin/env true"]
    )
    assert done.ok and done.stdout == b"f\n65534\n", done.stderr
    assert (out / "f").read_text() == "data\n"
    assert (out / "f").stat().st_uid == os.geteuid()  # the gate's files, outside


def test_threads_and_subprocesses_still_work() -> None:
    """clone3 answers ENOSYS (its flags are out of the filter's reach): libc
    falls back to clone, so threads and posix_spawn keep working."""
    code = """
    import subprocess, threading
    out = []
    t = threading.Thread(target=out.append, args=("thread",))
    t.start(); t.join()
    out.append(subprocess.run(["/bin/echo", "child"], capture_output=True, text=True).stdout.strip())
    print(" ".join(out))
    """
    done = attempt(py_box(), code)
    assert done.ok and done.stdout == b"thread child\n", done.stderr[-300:]


def test_parent_environ_is_unreadable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EXECGATE_TEST_SECRET", "sk-withheld")
    for target in (os.getpid(), os.getppid(), 1):
        done = Sandbox().run(["/bin/cat", f"/proc/{target}/environ"])
        assert b"sk-withheld" not in done.stdout
        assert done.exit_code != 0, target


# --- 4. outliving the wall: the gate killed --------------------------------------------------

GATE = """
import os, sys
from execgate import Limits, Sandbox
box = Sandbox(write=[sys.argv[1]], limits=Limits(wall=60))
print(os.getpid(), flush=True)
box.run(["/bin/sh", "-c", sys.argv[2]])
"""


def _cgroup_dirs(pid: int) -> list[pathlib.Path]:
    return [
        d
        for c in ("memory", "pids")
        for d in pathlib.Path(f"/sys/fs/cgroup/{c}/execgate").glob(f"{pid}-*")
    ]


def _box_procs(pid: int) -> list[str]:
    return [p for d in _cgroup_dirs(pid) for p in (d / "cgroup.procs").read_text().split()]


def test_killing_the_gate_takes_the_box_with_it(tmp_path: pathlib.Path) -> None:
    """The tool tries `kill -9` on the gate (its pid passed in, as an attacker
    would find it), then starts a setsid double-forked grandchild. The gate
    survives the attempt; when the gate is then killed from outside, the
    grandchild dies with it, and the next run removes the dead gate's cgroups."""
    marker = f"600.{time.monotonic_ns() % 10**9:09d}"
    script = (
        f"while [ ! -s {tmp_path}/gate ]; do sleep 0.05; done; "
        f"kill -9 $(cat {tmp_path}/gate); echo $? > {tmp_path}/killed; "
        f"(setsid sh -c 'sleep {marker}' & ) ; sleep 0.1; echo ready > {tmp_path}/ready; sleep 600"
    )
    gate = subprocess.Popen(
        [sys.executable, "-c", GATE, str(tmp_path), script],
        stdout=subprocess.PIPE,
    )
    try:
        assert gate.stdout is not None
        gate_pid = int(gate.stdout.readline())
        assert gate_pid == gate.pid
        (tmp_path / "gate").write_text(str(gate_pid))
        deadline = time.monotonic() + 20
        while not (tmp_path / "ready").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert (tmp_path / "ready").exists()
        assert (tmp_path / "killed").read_text().strip() != "0"  # kill failed
        assert gate.poll() is None  # the gate lives
        grandchildren = pids_with(marker)
        assert len(grandchildren) == 1
        assert _cgroup_dirs(gate_pid)
        gate.send_signal(signal.SIGKILL)  # the gate dies anyway (OOM, a crash)
        gate.wait()
        deadline = time.monotonic() + 5
        while pids_with(marker) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not pids_with(marker), "the grandchild outlived the gate"
        # the box's other processes die with it too, but are reaped asynchronously
        while _box_procs(gate_pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert _box_procs(gate_pid) == []  # nothing left in the box
        Sandbox().run(["/bin/true"])  # the next open sweeps the dead gate's groups
        assert _cgroup_dirs(gate_pid) == []
    finally:
        if gate.poll() is None:
            gate.kill()
            gate.wait()
        if gate.stdout is not None:
            gate.stdout.close()
        for pid in pids_with(marker):  # what a regression would leave behind
            os.kill(pid, signal.SIGKILL)


def test_wall_holds_for_a_double_forked_grandchild_that_left_the_session(
    tmp_path: pathlib.Path,
) -> None:
    marker = f"600.{time.monotonic_ns() % 10**9:09d}"
    done = Sandbox(limits=Limits(wall=1)).run(
        ["/bin/sh", "-c", f"(setsid sh -c 'sleep {marker}' &); sleep 600"]
    )
    assert done.limit_hit == "wall" or done.signal is not None
    deadline = time.monotonic() + 5
    while pids_with(marker) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not pids_with(marker)


# --- 5. widening the policy's clamp ------------------------------------------------------

CLAMP = """
package execgate
decision := {"allow": true, "obligations": {"sandbox": {"write": [data.w]}}}
"""


def _clamped_gate(w: pathlib.Path) -> execgate.Gate:
    return execgate.Gate(CLAMP, data={"w": str(w)})


def test_dot_dot_cannot_widen_the_write_clamp(tmp_path: pathlib.Path) -> None:
    w = tmp_path / "w"
    w.mkdir()
    gate = _clamped_gate(w)
    done = gate.run(
        ["/bin/sh", "-c", f"echo x > {w}/../escaped; echo y > {w}/inside"],
        sandbox=Sandbox(write=[w / ".."]),
    )
    assert not (tmp_path / "escaped").exists()
    assert (w / "inside").exists()  # the clamp itself is what was granted
    assert done.sandbox["write"] == [str(w.resolve())]


def test_symlink_inside_the_clamp_pointing_out_is_refused(tmp_path: pathlib.Path) -> None:
    w, outside = tmp_path / "w", tmp_path / "outside"
    w.mkdir()
    outside.mkdir()
    (w / "link").symlink_to(outside)
    gate = _clamped_gate(w)
    done = gate.run(
        ["/bin/sh", "-c", f"echo x > {w}/link/escaped"], sandbox=Sandbox(write=[w / "link"])
    )
    assert done.exit_code != 0 and not (outside / "escaped").exists()
    assert done.sandbox["write"] == []


def test_unresolvable_requested_path_is_refused(tmp_path: pathlib.Path) -> None:
    gate = _clamped_gate(tmp_path)
    with pytest.raises(execgate.SandboxError, match="cannot resolve"):
        gate.run(["/bin/true"], sandbox=Sandbox(write=[tmp_path / "missing" / "x"]))
    with pytest.raises(execgate.SandboxError, match="cannot resolve"):
        Sandbox(read=[tmp_path / "missing"]).run(["/bin/true"])
