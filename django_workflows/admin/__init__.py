"""The Django admin as the run console: runs with their timeline, functions, events, workers.

Autodiscovered by ``django.contrib.admin`` (``django_workflows.admin``); each page lives in
a module of its own.
"""

from . import api_keys, events, functions, runs, workers  # noqa: F401  (each registers its ModelAdmin)
