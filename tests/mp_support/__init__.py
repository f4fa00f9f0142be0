"""Support for tests/test_multiprocess.py: names shared by the test and its worker processes.

Importing this package registers nothing; ``mp_support.workflows`` (imported only by the
worker subprocesses, see ``mp_support.worker``) defines the test-only functions.
"""

# Raw tables the step bodies write to; created and dropped by the test, not by migrations.
EXEC_TABLE = "mp_exec"  # one row per execution of a step body, committed at once
ATOMIC_TABLE = "mp_atomic"  # one row per *committed* execution of the atomic step

STEPS_EVENT = "mp.steps"  # data: {"delay": seconds per step body, "atomic": bool}
SLOW_EVENT = "mp.slow"  # data: {"seconds": how long the "slow" step takes}

STEPS_FUNCTION = "mp-steps"
SLOW_FUNCTION = "mp-slow"

WAIT_START_EVENT = "mp.wait.start"  # data: {"key": ...}: the run waits for WAIT_DONE_EVENT
WAIT_DONE_EVENT = "mp.wait.done"  # data: {"key": ...}: resumes the run waiting on that key
WAIT_FUNCTION = "mp-waiter"
