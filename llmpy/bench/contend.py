"""A busy machine on demand: one CPU-burning process per core, for the benchmarks' contended mode.

    with busy_cpus() as n:      # n burners, one per core this process may run on
        ... time the default against one thread ...

The burners are plain Python loops in child processes (no shared memory with the benchmark), started
before the timed work and killed when the block ends, also on Ctrl-C or an exception.
"""

import contextlib
import subprocess
import sys
import time

from llmpy.threads import allowed_cpus

BURN = "while True: pass"
SETTLE_SECONDS = 0.5  # the burners' interpreters start and reach their loops


@contextlib.contextmanager
def busy_cpus(count=None):
    """Run `count` burners (default: one per CPU of this process's affinity set) for the block; yields count."""
    if count is None:
        count = len(allowed_cpus())
    procs = [subprocess.Popen([sys.executable, "-c", BURN], stdin=subprocess.DEVNULL) for _ in range(count)]
    try:
        time.sleep(SETTLE_SECONDS)
        yield count
    finally:
        for p in procs:
            p.kill()
        for p in procs:
            p.wait()
