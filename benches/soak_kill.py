"""Writers killed mid-write (issue 13). Release build, then

    .venv/bin/python benches/soak_kill.py [--rounds 200] [--writers 4]

Each round starts W processes appending to one log through a gate, each
printing a receipt's id only after `check` returned it; after a random delay
all are SIGKILLed. At the end: the chain verifies (torn tails recovered, no
failure) and every id any writer reported is in the log.
"""

from __future__ import annotations

import argparse
import base64
import json
import pathlib
import random
import signal
import subprocess
import sys
import tempfile
import time

WRITER = r"""
import sys, execgate
key = execgate.SigningKey.from_pem(sys.argv[1])
gate = execgate.Gate("package execgate\ndecision := true\n",
                     audit=execgate.AuditLog(sys.argv[2], key, durability=sys.argv[3]))
i = 0
while True:
    d = gate.check("t", {"i": i})
    if d.receipt is not None:
        sys.stdout.write(d.receipt.id + "\n")
        sys.stdout.flush()
    i += 1
"""


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=200)
    ap.add_argument("--writers", type=int, default=4)
    ap.add_argument("--durability", default="none")
    args = ap.parse_args()
    import execgate

    d = pathlib.Path(tempfile.mkdtemp(prefix="eg-kill-"))
    key = execgate.SigningKey.generate()
    keyfile, log = d / "k.pem", d / "log.jsonl"
    key.to_pem(keyfile)
    reported: set[str] = set()
    t0 = time.perf_counter()
    for _ in range(args.rounds):
        procs = [
            subprocess.Popen(
                [sys.executable, "-c", WRITER, str(keyfile), str(log), args.durability],
                stdout=subprocess.PIPE,
                text=True,
            )
            for _ in range(args.writers)
        ]
        time.sleep(random.uniform(0.15, 0.6))
        for p in procs:
            p.send_signal(signal.SIGKILL)
        for p in procs:
            out, _ = p.communicate()
            reported.update(line for line in out.splitlines() if len(line) == 36)
    ids = set()
    for line in log.read_bytes().splitlines():
        try:
            ids.add(json.loads(base64.b64decode(json.loads(line)["payload"]))["id"])
        except ValueError:
            pass
    rep = execgate.verify_log(log, key.verify_key)
    missing = reported - ids
    print(
        json.dumps(
            {
                "rounds": args.rounds,
                "seconds": round(time.perf_counter() - t0, 1),
                "reported": len(reported),
                "missing": len(missing),
                "records": rep.records,
                "recoveries": rep.recoveries,
                "ok": rep.ok,
                "failure": rep.reason,
                "torn_side_files": len(list(d.glob("log.jsonl.torn-*"))),
            }
        )
    )
    sys.exit(0 if rep.ok and not missing else 1)


if __name__ == "__main__":
    main()
