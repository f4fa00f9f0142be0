"""The test project's settings with optional PostgreSQL connection tweaks, for experiments.

    BENCH_SERVER_SIDE_BINDING=1   psycopg server-side binding: statements get prepared
                                  after a few executions (no parse/plan each time)
    BENCH_PG_OPTIONS="-c synchronous_commit=off"   libpq options for every connection
    BENCH_PG_HOST=/var/run/postgresql   connect through this Unix socket directory instead

Used by bench_engine.py's --server-side-binding, --pg-options and --pg-host flags; engine code and
testproject/settings.py are unchanged.
"""

import os

from testproject.settings import *  # noqa: F403
from testproject.settings import DATABASES

_options = DATABASES["default"].setdefault("OPTIONS", {})
if os.environ.get("BENCH_SERVER_SIDE_BINDING") == "1":
    _options["server_side_binding"] = True
if os.environ.get("BENCH_PG_OPTIONS"):
    _options["options"] = os.environ["BENCH_PG_OPTIONS"]
if os.environ.get("BENCH_PG_HOST"):
    DATABASES["default"]["HOST"] = os.environ["BENCH_PG_HOST"]
