"""Reload storm (issue 13): 8 threads checking while the policy is swapped.

Release build (`make release`), then

    .venv/bin/python benches/soak_reload.py [--seconds 60] [--threads 8] [--log PATH]

Two policies: A allows only action "a", B allows only "b" (each with a
distinct digest). Eight threads check random actions as fast as they can; a
ninth reloads A, B, A, ... without pause, and every 50th reload is a policy
that does not compile (it must be refused and the old one kept). Every
decision is checked against the policy it names (`decision.policy_digest`):
allowed exactly when its action is the one that policy allows; a decision
naming any other digest, an error, or an exception counts as wrong. RSS is
sampled every second. With `--log` the decisions go to a checkpoint-mode
audit log, which is verified at the end. Prints one JSON summary; exits 1 if
any decision was wrong, a bad policy was installed, or the log does not verify.
"""

from __future__ import annotations

import argparse
import json
import random
import threading
import time

import execgate
from measure import rss_mb

RULE = 'package execgate\ndecision := {{"allow": input.action.name == "{}"}}\n'
BROKEN = "package execgate\ndecision := {\n"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=60)
    ap.add_argument("--threads", type=int, default=8)
    ap.add_argument("--log", default=None)
    args = ap.parse_args()
    key = execgate.SigningKey.generate()
    audit = execgate.AuditLog(args.log, key, signing="checkpoint") if args.log else None
    # A generous deadline: a loaded machine must not turn checks into limit denies (this
    # is not a test of the deadline).
    gate = execgate.Gate(RULE.format("a"), audit=audit, timeout=10)
    allowed_by = {gate.policy_digest: "a"}
    allowed_by[execgate.Gate(RULE.format("b")).policy_digest] = "b"
    stop = threading.Event()
    counts = {"checks": 0, "wrong": 0, "reloads": 0, "refused": 0, "bad_installed": 0}
    lock = threading.Lock()
    wrong_examples: list[str] = []

    def checker(seed: int) -> None:
        rnd = random.Random(seed)
        n = wrong = 0
        while not stop.is_set():
            action = rnd.choice("ab")
            try:
                d = gate.check(action)
                ok = d.error is None and allowed_by.get(d.policy_digest) is not None
                ok = ok and d.allowed == (allowed_by[d.policy_digest] == action)
            except Exception as e:
                ok = False
                d = e  # type: ignore[assignment]
            n += 1
            if not ok:
                wrong += 1
                with lock:
                    if len(wrong_examples) < 5:
                        wrong_examples.append(repr(d))
        with lock:
            counts["checks"] += n
            counts["wrong"] += wrong

    def reloader() -> None:
        i = 0
        while not stop.is_set():
            i += 1
            if i % 50 == 0:
                before = gate.policy_digest
                try:
                    gate.reload(BROKEN)
                except execgate.PolicyError:
                    counts["refused"] += 1
                if gate.policy_digest != before:
                    counts["bad_installed"] += 1
                continue
            gate.reload(RULE.format("ab"[i % 2]))
            counts["reloads"] += 1

    threads = [threading.Thread(target=checker, args=(s,)) for s in range(args.threads)]
    threads.append(threading.Thread(target=reloader))
    start = time.monotonic()
    samples = [rss_mb()]
    for t in threads:
        t.start()
    while time.monotonic() - start < args.seconds:
        time.sleep(1)
        samples.append(rss_mb())
    stop.set()
    for t in threads:
        t.join()
    elapsed = time.monotonic() - start
    result: dict[str, object] = {
        **counts,
        "seconds": round(elapsed, 1),
        "checks_per_s": round(counts["checks"] / elapsed),
        "reloads_per_s": round(counts["reloads"] / elapsed, 1),
        "rss_mb_start": round(samples[0], 1),
        "rss_mb_after_10s": round(samples[min(10, len(samples) - 1)], 1),
        "rss_mb_max": round(max(samples), 1),
        "rss_mb_end": round(samples[-1], 1),
        "wrong_examples": wrong_examples,
    }
    good = counts["wrong"] == 0 and counts["bad_installed"] == 0
    if audit is not None:
        gate.close()
        report = execgate.verify_log(args.log, key.verify_key)
        result.update(log_ok=report.ok, log_records=report.records, log_reason=report.reason)
        good = good and report.ok
    print(json.dumps(result))
    raise SystemExit(0 if good else 1)


if __name__ == "__main__":
    main()
