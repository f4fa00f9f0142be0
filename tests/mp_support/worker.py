"""``python -m mp_support.worker [runworkers options]``: one ``runworkers`` process that
also knows the test-only functions of ``mp_support.workflows``.

Run with the repository root and ``tests/`` on PYTHONPATH, and DATABASE_URL pointing at the
test database; runworkers' own options (``--concurrency N``) are passed through.
"""

from __future__ import annotations

import os
import sys


def main() -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "testproject.settings")
    import django

    django.setup()
    from django.core.management import call_command

    import mp_support.workflows  # noqa: F401  (registers the test-only functions)

    call_command("runworkers", *sys.argv[1:])


if __name__ == "__main__":
    main()
