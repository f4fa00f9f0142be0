"""``python manage.py createapikey NAME --scope send|read|manage``: prints a new API key once."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError

from ...api.keys import SCOPE_RANK, create_key


class Command(BaseCommand):
    help = (
        "Create an API key for the REST API and print it. Only its hash is stored: "
        "copy it now. The key is the last word of the output."
    )

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("name", help="What the key is for (shown in the admin), e.g. 'billing-service'.")
        parser.add_argument(
            "--scope", choices=list(SCOPE_RANK), default="send",
            help="send: send events only (default); read: send and read; manage: also cancel, replay, pause, invoke.",
        )

    def handle(self, *args: Any, name: str, scope: str, **options: Any) -> None:
        if not name.strip() or len(name) > 100:
            raise CommandError("NAME must be 1 to 100 characters")
        key, raw = create_key(name.strip(), scope)
        self.stdout.write(f"Created API key {key.name!r} (scope {key.scope}, prefix {key.prefix}). "
                          f"It is shown only now; store it safely:\n{raw}")
