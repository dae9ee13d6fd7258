"""Same-process A/B of two builds: a candidate against a baseline wheel.

    .venv/bin/python benches/ab.py BASELINE.whl [CANDIDATE.whl] [--quick]
    .venv/bin/python benches/ab.py BASELINE.whl [CANDIDATE.whl] --instructions  # valgrind

The candidate is the installed execgate unless a wheel is given. Each wheel (for
example a commit's ``maturin build --release``) is unpacked into a temporary
directory with its package renamed (``execgate_baseline``, ``execgate_candidate``),
so both builds are imported into this one process and
measured in interleaved rounds, on the same inputs and the same policy files (this
checkout's example policy). Drift in machine load hits both alike; the figures
that matter are the ratios.

``--receipts`` times the record paths instead (issue 14): each build's check
with a signed receipt appended, with a chained record in checkpoint mode, and a
guarded call with both records signed, against its own bare check; then one
thread against two on one signed log, and one writer process against two on
one signed log, the builds alternating.

``--instructions`` counts instructions per call instead of timing them: each
build runs in its own process under ``valgrind --tool=callgrind`` twice, with two
call counts, and the difference divided by the difference in calls is the cost of
one call without start-up. Instruction counts do not depend on what else the
machine is doing.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import zipfile
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import execgate
from measure import DENIED, QUICK, Call, Sizes, Stats, interleaved
from workloads import CASES, TOOLS, _hash_loop, _one_vs_two

POLICY = Path(execgate.__file__).parent / "policies"
# Import statements and resource lookups that name the package.
_NAMES = re.compile(r"(^\s*from\s+|^\s*import\s+|resources\.files\()(['\"]?)execgate\b", re.M)
AB = Sizes(**{**QUICK.__dict__, "iterations": 30_000, "rounds": 10, "warmup": 1_000})
ROLES = ("baseline", "candidate")
TLS = "glibc.rtld.optional_static_tls"


def unpack(wheel: Path, into: Path, name: str) -> None:
    """Unpacks ``wheel``'s package under ``into`` as the package ``name``."""
    with tempfile.TemporaryDirectory() as tmp:
        with zipfile.ZipFile(wheel) as archive:
            archive.extractall(tmp)
        shutil.move(Path(tmp) / "execgate", into / name)
    for source in (into / name).rglob("*.py"):
        text = source.read_text()
        source.write_text(_NAMES.sub(lambda m: f"{m[1]}{m[2]}{name}", text))


def module_names(wheels: dict[str, Path | None], into: Path) -> dict[str, str]:
    """The module of each role: unpacked from its wheel, or the installed one."""
    names = {}
    for role, wheel in wheels.items():
        names[role] = "execgate"
        if wheel is not None:
            names[role] = f"execgate_{role}"
            unpack(wheel, into, names[role])
    sys.path.insert(0, str(into))
    return names


def scenarios(module: ModuleType, tag: str) -> dict[str, list[Call]]:
    gate = module.Gate(str(POLICY / "agent.rego"), data=str(POLICY / "agent_data.json"))
    guarded = [gate.guard(action=c.action, principal=c.principal)(TOOLS[c.action]) for c in CASES]
    return {
        f"{tag} gate.check": [
            (gate.check, (c.action, c.args), {"principal": c.principal}) for c in CASES
        ],
        f"{tag} guarded call": [(g, (), c.args) for g, c in zip(guarded, CASES, strict=True)],
    }


def receipt_scenarios(module: ModuleType, tag: str, tmp: Path) -> dict[str, list[Call]]:
    """The record paths of one build: logs in ``tmp``, durability "none"."""
    key = module.SigningKey.generate()
    policy = {"data": str(POLICY / "agent_data.json")}
    gates = {
        "signed": module.Gate(
            str(POLICY / "agent.rego"), audit=module.AuditLog(tmp / f"{tag}.jsonl", key), **policy
        ),
        "chained": module.Gate(
            str(POLICY / "agent.rego"),
            audit=module.AuditLog(
                tmp / f"{tag}-checkpoint.jsonl",
                key,
                signing="checkpoint",
                checkpoint_every=1000,
                checkpoint_interval=1.0,
            ),
            **policy,
        ),
    }
    signed = gates["signed"]
    guarded = [signed.guard(action=c.action, principal=c.principal)(TOOLS[c.action]) for c in CASES]
    return {
        **scenarios(module, tag),
        f"{tag} check + signed receipt": [
            (signed.check, (c.action, c.args), {"principal": c.principal}) for c in CASES
        ],
        f"{tag} check + chained record": [
            (gates["chained"].check, (c.action, c.args), {"principal": c.principal}) for c in CASES
        ],
        f"{tag} guarded call, signed": [
            (g, (), c.args) for g, c in zip(guarded, CASES, strict=True)
        ],
    }


def _threads(module: ModuleType, path: Path, calls: int, n: int) -> float:
    """Checks per second of ``n`` threads on one Gate with a signed log."""
    key = module.SigningKey.generate()
    gate = module.Gate(
        str(POLICY / "agent.rego"),
        data=str(POLICY / "agent_data.json"),
        audit=module.AuditLog(path, key),
    )

    def work() -> None:
        for i in range(calls):
            c = CASES[i % len(CASES)]
            gate.check(c.action, c.args, principal=c.principal)

    work()  # warm
    pool = [threading.Thread(target=work) for _ in range(n)]
    t0 = time.perf_counter()
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    elapsed = time.perf_counter() - t0
    gate.close()
    if not module.verify_log(path, key.verify_key).ok:
        raise SystemExit(f"{path} does not verify")
    return n * calls / elapsed


# One writer process: ``calls`` checks through one Gate on the shared log.
_WRITER = """
import importlib, json, sys, time
name, where, log, key, calls, policy, data, cases = sys.argv[1:]
sys.path.insert(0, where)
m = importlib.import_module(name)
cases = json.loads(cases)
gate = m.Gate(policy, data=data, audit=m.AuditLog(log, m.SigningKey.from_pem(key)))
for action, args, principal in cases * 20:  # warm (the detectors' DFAs build on first use)
    gate.check(action, args, principal=principal)
print("ready", flush=True)
sys.stdin.readline()
t0 = time.monotonic_ns()
for i in range(int(calls)):
    action, args, principal = cases[i % len(cases)]
    if gate.check(action, args, principal=principal).error == "audit":
        raise SystemExit("a decision was not recorded")
print(t0, time.monotonic_ns(), flush=True)
gate.close()
"""


def _processes(name: str, into: Path, path: Path, key: Path, calls: int, n: int) -> float:
    """Checks per second of ``n`` processes appending to one signed log."""
    argv = [name, str(into), str(path), str(key), str(calls)]
    argv += [str(POLICY / "agent.rego"), str(POLICY / "agent_data.json")]
    argv.append(json.dumps([(c.action, c.args, c.principal) for c in CASES]))
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _WRITER, *argv],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(n)
    ]
    for p in procs:
        assert p.stdout is not None and p.stdout.readline().strip() == "ready"
    for p in procs:
        assert p.stdin is not None
        p.stdin.write("go\n")
        p.stdin.flush()
    spans = []
    for p in procs:
        out, _ = p.communicate(timeout=600)
        if p.returncode != 0:
            raise SystemExit(f"a writer process failed ({p.returncode})")
        spans.append([int(x) for x in out.split()])
    elapsed = (max(e for _, e in spans) - min(s for s, _ in spans)) / 1e9
    return n * calls / elapsed


def scaling(names: dict[str, str], into: Path, rounds: int, calls: int) -> None:
    modules = {role: importlib.import_module(name) for role, name in names.items()}
    key = into / "writer.pem"
    next(iter(modules.values())).SigningKey.generate().to_pem(key)
    rates: dict[tuple[str, str], list[float]] = {}
    for r in range(rounds):
        for role, module in modules.items():
            for n in (1, 2):
                path = into / f"{role}-threads-{r}-{n}.jsonl"
                rates.setdefault((role, f"{n} thread"), []).append(_threads(module, path, calls, n))
                path = into / f"{role}-procs-{r}-{n}.jsonl"
                rates.setdefault((role, f"{n} process"), []).append(
                    _processes(names[role], into, path, key, calls, n)
                )
        one, two = _one_vs_two(_hash_loop, 200, 1)
        rates.setdefault(("ceiling", ""), []).append(two / one)
    print(f"\nsigned log (durability none), {calls:,} checks per thread/process, {rounds} rounds")
    print(
        f"  (ceiling: 2 threads of sha256(64 KiB) ran "
        f"{statistics.median(rates['ceiling', '']):.2f}x one thread, median of the rounds)"
    )
    print(f"  {'':<12}{'':<12}{'checks/s':>10}{'x one':>8}")
    for role in modules:
        for unit in ("thread", "process"):
            one = statistics.median(rates[role, f"1 {unit}"])
            two = statistics.median(rates[role, f"2 {unit}"])
            print(f"  {role:<12}{'1 ' + unit:<12}{one:>10,.0f}")
            print(
                f"  {role:<12}{'2 ' + unit + 'es' if unit == 'process' else '2 threads':<12}"
                f"{two:>10,.0f}{two / one:>8.2f}"
            )


def compared(
    names: dict[str, str],
    sizes: Sizes,
    scenarios_of: Callable[[ModuleType, str], dict[str, list[Call]]],
    width: int,
) -> tuple[dict[str, ModuleType], dict[str, Stats], dict[str, list[int]]]:
    """Both builds' scenarios run in interleaved rounds, their table printed;
    also the samples (sample i is input i % len(CASES))."""
    modules = {role: importlib.import_module(name) for role, name in names.items()}
    both = {k: v for role, m in modules.items() for k, v in scenarios_of(m, role).items()}
    denied = (*DENIED, *(m.ActionDenied for m in modules.values()))
    samples = interleaved(both, sizes, denied=denied)
    stats = {k: Stats.of(v) for k, v in samples.items()}
    print(
        f"same process, {sizes.iterations:,} calls per scenario in {sizes.rounds} "
        f"interleaved rounds, cycling {len(CASES)} inputs of the example policy"
    )
    print(f"  {'':<{width}}{'p50 µs':>10}{'p99 µs':>10}{'mean µs':>10}")
    for name, s in stats.items():
        print(f"  {name:<{width}}{s.p50:>10.2f}{s.p99:>10.2f}{s.mean:>10.2f}")
    return modules, stats, samples


def receipts(names: dict[str, str], into: Path, sizes: Sizes) -> None:
    modules, stats, samples = compared(
        names, sizes, lambda m, role: receipt_scenarios(m, role, into), 38
    )
    # Most inputs are denied (no completion record): the p50 of the mix is a
    # denied call's, so the allowed inputs are also shown on their own.
    gate = execgate.Gate(str(POLICY / "agent.rego"), data=str(POLICY / "agent_data.json"))
    n = len(CASES)
    allowed = [
        i
        for i, c in enumerate(CASES)
        if gate.check(c.action, c.args, principal=c.principal).allowed
    ]
    only = {k: Stats.of([t for i in allowed for t in v[i::n]]) for k, v in samples.items()}
    for title, table in (("all inputs", stats), (f"the {len(allowed)} allowed inputs", only)):
        print(f"  p50 ratios, {title:<26}{'baseline':>9}{'candidate':>10}")
        for what, over in (
            ("check + signed receipt", "gate.check"),
            ("check + chained record", "gate.check"),
            ("guarded call, signed", "check + signed receipt"),
        ):
            line = "".join(
                f"{table[f'{role} {what}'].p50 / table[f'{role} {over}'].p50:>9.2f} "
                for role in modules
            )
            print(f"  {what + ' / ' + over:<38}{line}")
        for what in ("check + signed receipt", "check + chained record", "guarded call, signed"):
            old, new = table[f"baseline {what}"], table[f"candidate {what}"]
            print(f"  {what}: candidate / baseline = {new.p50 / old.p50:.3f} (p50)")


def timed(names: dict[str, str], sizes: Sizes) -> None:
    _, stats, samples = compared(names, sizes, scenarios, 28)
    for what in ("gate.check", "guarded call"):
        old, new = stats[f"baseline {what}"], stats[f"candidate {what}"]
        print(
            f"  {what}: candidate / baseline = {new.p50 / old.p50:.3f} (p50), "
            f"{new.mean / old.mean:.3f} (mean)"
        )
    # By action, because the mix hides that only shell.exec runs the regexes.
    n = len(CASES)
    print(f"  {'p50 ratio by action':<28}{'gate.check':>11}{'guarded':>9}")
    for action in dict.fromkeys(c.action for c in CASES):
        inputs = [i for i, c in enumerate(CASES) if c.action == action]
        ratios = []
        for what in ("gate.check", "guarded call"):
            old, new = (
                Stats.of([t for i in inputs for t in samples[f"{role} {what}"][i::n]])
                for role in ROLES
            )
            ratios.append(new.p50 / old.p50)
        print(f"  {action + f' ({len(inputs)} inputs)':<28}{ratios[0]:>11.3f}{ratios[1]:>9.3f}")


def _count(module_name: str, scenario: str, calls: int) -> None:
    """The body run under callgrind: ``calls`` calls of one scenario."""
    module = importlib.import_module(module_name)
    denied = (*DENIED, module.ActionDenied)
    with tempfile.TemporaryDirectory() as tmp:
        work = receipt_scenarios(module, "x", Path(tmp))[f"x {scenario}"]
        for i in range(calls):
            fn, args, kwargs = work[i % len(work)]
            try:
                fn(*args, **kwargs)
            except denied:
                pass


def instructions(names: dict[str, str], into: Path, what: tuple[str, ...]) -> None:
    if shutil.which("valgrind") is None:
        raise SystemExit("--instructions needs valgrind (apt install valgrind)")
    low, high = len(CASES) * 20, len(CASES) * 220
    print(f"instructions per call (callgrind, ({high} - {low}) calls of {len(CASES)} inputs)")
    for scenario in what:
        per_call = {}
        for role, module_name in names.items():
            totals = []
            for calls in (low, high):
                with tempfile.TemporaryDirectory() as out:
                    valgrind = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}/cg"]
                    count = ["--count", module_name, scenario, str(calls), "--path", str(into)]
                    run = subprocess.run(
                        [*valgrind, sys.executable, __file__, *count],
                        capture_output=True,
                        text=True,
                    )
                if run.returncode != 0:
                    raise SystemExit(f"{role} under valgrind failed:\n{run.stderr[-3000:]}")
                totals.append(int(re.findall(r"Collected : (\d+)", run.stderr)[-1]))
            per_call[role] = (totals[1] - totals[0]) / (high - low)
        old, new = per_call["baseline"], per_call["candidate"]
        print(
            f"  {scenario:<24} baseline {old:>10,.0f}  candidate {new:>10,.0f}  "
            f"ratio {new / old:.3f}"
        )


def main(argv: list[str]) -> None:
    if TLS not in os.environ.get("GLIBC_TUNABLES", ""):
        # Three copies of the extension in one process (the installed one that
        # the benchmark helpers import, and the two builds) need more static
        # TLS than the loader keeps spare by default.
        env = {**os.environ, "GLIBC_TUNABLES": f"{TLS}=65536"}
        os.execve(sys.executable, [sys.executable, __file__, *argv], env)
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("wheels", nargs="*", type=Path, help="BASELINE.whl [CANDIDATE.whl]")
    parser.add_argument("--quick", action="store_true", help="a third of the calls")
    parser.add_argument("--instructions", action="store_true", help="count with callgrind")
    parser.add_argument("--receipts", action="store_true", help="the record paths (issue 14)")
    parser.add_argument("--count", nargs=3, metavar=("MODULE", "SCENARIO", "CALLS"))
    parser.add_argument("--path", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.count:
        sys.path.insert(0, str(args.path))
        module_name, scenario, calls = args.count
        _count(module_name, scenario, int(calls))
        return
    if not 1 <= len(args.wheels) <= 2:
        parser.error("give the baseline wheel, and optionally the candidate's")
    wheels = dict(zip(ROLES, [*args.wheels, None], strict=False))
    with tempfile.TemporaryDirectory() as tmp:
        names = module_names(wheels, Path(tmp))
        if args.instructions:
            what = ("gate.check", "guarded call")
            if args.receipts:
                what = ("check + signed receipt", "check + chained record", "guarded call, signed")
            instructions(names, Path(tmp), what)
            return
        sizes = AB
        if args.quick:
            sizes = Sizes(**{**AB.__dict__, "iterations": AB.iterations // 3})
        if args.receipts:
            receipts(names, Path(tmp), sizes)
            scaling(names, Path(tmp), rounds=5, calls=2_000 if args.quick else 6_000)
            return
        timed(names, sizes)


if __name__ == "__main__":
    main(sys.argv[1:])
