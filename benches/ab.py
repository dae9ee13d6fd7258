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

``--instructions`` counts instructions per call instead of timing them: each
build runs in its own process under ``valgrind --tool=callgrind`` twice, with two
call counts, and the difference divided by the difference in calls is the cost of
one call without start-up. Instruction counts do not depend on what else the
machine is doing.
"""

from __future__ import annotations

import argparse
import importlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path
from types import ModuleType

import execgate
from measure import DENIED, QUICK, Call, Sizes, Stats, interleaved
from workloads import CASES, TOOLS

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


def timed(names: dict[str, str], sizes: Sizes) -> None:
    modules = {role: importlib.import_module(name) for role, name in names.items()}
    both = {k: v for role, m in modules.items() for k, v in scenarios(m, role).items()}
    denied = (*DENIED, *(m.ActionDenied for m in modules.values()))
    stats = {k: Stats.of(v) for k, v in interleaved(both, sizes, denied=denied).items()}
    print(
        f"same process, {sizes.iterations:,} calls per scenario in {sizes.rounds} "
        f"interleaved rounds, cycling {len(CASES)} inputs of the example policy"
    )
    print(f"  {'':<28}{'p50 µs':>10}{'p99 µs':>10}{'mean µs':>10}")
    for name, s in stats.items():
        print(f"  {name:<28}{s.p50:>10.2f}{s.p99:>10.2f}{s.mean:>10.2f}")
    for what in ("gate.check", "guarded call"):
        old, new = stats[f"baseline {what}"], stats[f"candidate {what}"]
        print(
            f"  {what}: candidate / baseline = {new.p50 / old.p50:.3f} (p50), "
            f"{new.mean / old.mean:.3f} (mean)"
        )


def _count(module_name: str, scenario: str, calls: int) -> None:
    """The body run under callgrind: ``calls`` calls of one scenario."""
    module = importlib.import_module(module_name)
    work = scenarios(module, "x")[f"x {scenario}"]
    denied = (*DENIED, module.ActionDenied)
    for i in range(calls):
        fn, args, kwargs = work[i % len(work)]
        try:
            fn(*args, **kwargs)
        except denied:
            pass


def instructions(names: dict[str, str], into: Path) -> None:
    if shutil.which("valgrind") is None:
        raise SystemExit("--instructions needs valgrind (apt install valgrind)")
    low, high = len(CASES) * 20, len(CASES) * 220
    print(f"instructions per call (callgrind, ({high} - {low}) calls of {len(CASES)} inputs)")
    for scenario in ("gate.check", "guarded call"):
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
            f"  {scenario:<14} baseline {old:>10,.0f}  candidate {new:>10,.0f}  "
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
            instructions(names, Path(tmp))
            return
        sizes = AB
        if args.quick:
            sizes = Sizes(**{**AB.__dict__, "iterations": AB.iterations // 3})
        timed(names, sizes)


if __name__ == "__main__":
    main(sys.argv[1:])
