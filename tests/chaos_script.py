"""The script the chaos test's workers run as their trials (see tests/test_chaos.py).

It works for a random half second to second and a half, then appends
``TRIAL_ID WORKER_PID TIME`` to ``$CHAOS_ENDS`` (the sign that it ran to its end)
and writes its result, ``x``, as JSON to ``$ORCHARD_RESULTS_PATH``. Without
``$CHAOS_REPORTS`` it does not import Orchard, so that it starts fast.

With ``$CHAOS_REPORTS`` set it works in ``$CHAOS_STEPS`` steps and reports a curve
with :func:`orchard.report` after each: ``x + 1/step`` plus a jitter below 1e-6 drawn
once per script, so that a stored value names the run that reported it. Around
each report it appends ``TRIAL_ID WORKER_PID SCRIPT_PID STEP VALUE WHAT`` to
``$CHAOS_REPORTS``: ``sent`` before the call, then ``acked`` once it returned
(the worker's verdict on that step came back), ``refused`` if it raised. It ends
early (exit 0, no result, no end line) when :func:`orchard.should_prune` says so.
"""

from __future__ import annotations

import json
import os
import random
import sys
import time

x = float(next(arg.split("=", 1)[1] for arg in sys.argv[1:] if arg.startswith("--x=")))
work = random.uniform(0.5, 1.5)
if os.environ.get("CHAOS_REPORTS"):
    import orchard
    from orchard.report import VERDICT_ENV

    steps, jitter = int(os.environ["CHAOS_STEPS"]), random.uniform(0.0, 1e-6)
    run = f"{os.environ['ORCHARD_TRIAL_ID']} {os.getppid()} {os.getpid()}"

    def note(step: int, value: float, what: str) -> None:
        with open(os.environ["CHAOS_REPORTS"], "a") as log:
            log.write(f"{run} {step} {value!r} {what}\n")

    def answered(step: int) -> bool:
        """Whether the verdict file answers ``step`` (``report`` returns unanswered after a long wait too)."""
        try:
            with open(os.environ[VERDICT_ENV]) as verdict:
                return int(json.load(verdict)["step"]) >= step
        except (OSError, ValueError, KeyError):
            return False

    for step in range(1, steps + 1):
        time.sleep(work / steps)
        value = x + 1.0 / step + jitter
        note(step, value, "sent")
        try:
            orchard.report(value, step)
        except ValueError as err:
            note(step, value, "refused")
            sys.exit(f"report at step {step} refused: {err}")
        note(step, value, "acked" if answered(step) else "unanswered")
        if orchard.should_prune():
            sys.exit(0)
else:
    time.sleep(work)
with open(os.environ["CHAOS_ENDS"], "a") as ends:
    ends.write(f"{os.environ['ORCHARD_TRIAL_ID']} {os.getppid()} {time.time()!r}\n")
with open(os.environ["ORCHARD_RESULTS_PATH"], "w") as results:
    json.dump({"objective": x}, results)
