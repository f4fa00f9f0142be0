"""``python -m fault_support.worker [runworkers options]``: one ``runworkers`` process that
also knows the test function of ``fault_support.workflows``.

Run with the repository root and ``tests/`` on PYTHONPATH and DATABASE_URL pointing at the
fault cluster's database; runworkers' own options (``--concurrency N``) are passed through.

``FAULT_CLOCK_SKEW_SECONDS=120`` (or ``-120``) fakes this worker's clock, not the machine's:
``django.utils.timezone.now`` returns the real time plus the skew. The engine's clock
(``django_workflows.engine.clock``) calls ``timezone.now()`` through the module, and so does
everything else that stamps or compares times, so patching the module attribute is enough.
``time.time()`` is left alone: the step bodies record real times with it.
"""

from __future__ import annotations

import os
import sys
from datetime import timedelta


def skew_clock(seconds: float) -> None:
    from django.utils import timezone

    real_now = timezone.now
    skew = timedelta(seconds=seconds)

    def skewed_now():
        return real_now() + skew

    skewed_now.real_now = real_now  # type: ignore[attr-defined]
    timezone.now = skewed_now


def main() -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "testproject.settings")
    skew = os.environ.get("FAULT_CLOCK_SKEW_SECONDS")
    if skew:
        skew_clock(float(skew))  # before django.setup(): nothing can hold the real one
    import django

    django.setup()
    from django.core.management import call_command

    import fault_support.workflows  # noqa: F401  (registers the test function)

    call_command("runworkers", *sys.argv[1:])


if __name__ == "__main__":
    main()
