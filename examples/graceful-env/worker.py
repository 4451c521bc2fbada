"""Counts steps; on SIGTERM it writes a checkpoint and exits cleanly."""

import argparse
import os
import signal
import sys
import time

ap = argparse.ArgumentParser()
ap.add_argument("--steps", type=int, required=True)
ap.add_argument("--checkpoint", required=True)
a = ap.parse_args()

step = 0


def save(reason: str) -> None:
    with open(a.checkpoint, "w") as f:
        f.write(f"{reason} at step {step}\n")


def on_term(signum: int, frame: object) -> None:
    print(f"SIGTERM received: saving checkpoint at step {step}", flush=True)
    save("stopped")
    sys.exit(0)


signal.signal(signal.SIGTERM, on_term)
print(os.environ["GREETING"], flush=True)
pause = float(os.environ.get("STEP_SECONDS", "0.1"))
print(f"worker started: {a.steps} steps", flush=True)
for i in range(1, a.steps + 1):
    step = i
    time.sleep(pause)
print(f"done: {a.steps} steps", flush=True)
save("finished")
