"""The demo's home page sends the demo events and links each run to the run console."""

from __future__ import annotations

import pytest
from django.urls import reverse

from django_workflows.models import Run
from django_workflows.testing import drain

pytestmark = pytest.mark.django_db


def test_the_home_page_links_the_console_and_each_run(client):
    response = client.post(reverse("send-demo-event", args=["signup"]))
    assert response.status_code == 302
    drain()
    run = Run.objects.get()
    page = client.get(reverse("home")).content.decode()
    assert reverse("admin:django_workflows_run_changelist") in page
    assert reverse("admin:django_workflows_run_change", args=[run.pk]) in page
