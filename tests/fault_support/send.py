"""``python -m fault_support.send COUNT DATA_JSON``: send COUNT events that start the test
function, with ``wf.send`` on the database of DATABASE_URL (the fault cluster's), in one
transaction. Prints the number of event ids.

The test process itself runs on the main test database; this small process is how it
uses the public API against the fault cluster.
"""

from __future__ import annotations

import json
import os
import sys


def main() -> None:
    count, data = int(sys.argv[1]), json.loads(sys.argv[2])
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "testproject.settings")
    import django

    django.setup()
    import django_workflows as wf

    from . import EVENT

    ids = wf.send([wf.Event(name=EVENT, data=dict(data)) for _ in range(count)])
    print(len(ids))


if __name__ == "__main__":
    main()
