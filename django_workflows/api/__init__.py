"""The REST API (Django REST framework): ``path("workflows/api/", include("django_workflows.api.urls"))``.

Endpoints, authentication (API keys with a scope, or staff sessions within their
permissions) and errors: see ``urls.py``, ``views.py`` and ``errors.py``, or the API's own
``schema/`` and ``docs/`` pages.
"""
