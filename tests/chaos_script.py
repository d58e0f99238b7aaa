"""The script the chaos test's workers run as their trials (see tests/test_chaos.py).

It works for a random half second to second and a half, then appends
``TRIAL_ID WORKER_PID TIME`` to ``$CHAOS_ENDS`` (the sign that it ran to its end)
and writes its result, ``x``, as JSON to ``$ORCHARD_RESULTS_PATH``. It does not
import Orchard, so that it starts fast.
"""

from __future__ import annotations

import json
import os
import random
import sys
import time

x = float(next(arg.split("=", 1)[1] for arg in sys.argv[1:] if arg.startswith("--x=")))
time.sleep(random.uniform(0.5, 1.5))
with open(os.environ["CHAOS_ENDS"], "a") as ends:
    ends.write(f"{os.environ['ORCHARD_TRIAL_ID']} {os.getppid()} {time.time()!r}\n")
with open(os.environ["ORCHARD_RESULTS_PATH"], "w") as results:
    json.dump({"objective": x}, results)
