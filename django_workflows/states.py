"""Status and kind choices, importable before the app registry is ready."""

from __future__ import annotations

from django.db import models
from django.utils.translation import gettext_lazy as _


class RunStatus(models.TextChoices):
    QUEUED = "queued", _("Queued")
    RUNNING = "running", _("Running")
    COMPLETED = "completed", _("Completed")
    FAILED = "failed", _("Failed")
    CANCELLED = "cancelled", _("Cancelled")


FINISHED_STATUSES = (RunStatus.COMPLETED, RunStatus.FAILED, RunStatus.CANCELLED)


class StepKind(models.TextChoices):
    RUN = "run", _("Run")
    SLEEP = "sleep", _("Sleep")
    WAIT_FOR_EVENT = "wait_for_event", _("Wait for event")
    INVOKE = "invoke", _("Invoke")
    SEND_EVENT = "send_event", _("Send event")


class StepStatus(models.TextChoices):
    COMPLETED = "completed", _("Completed")
    FAILED = "failed", _("Failed")
    RETRYING = "retrying", _("Retrying")
    WAITING = "waiting", _("Waiting")


class QueueKind(models.TextChoices):
    EVENT = "event", _("Process an event")
    RUN = "run", _("Run or resume a run")
    BRANCH = "branch", _("Run one parallel branch")
    CRON = "cron", _("Fire a cron schedule")


class WaiterKind(models.TextChoices):
    WAIT = "wait", _("wait_for_event")
    CANCEL = "cancel", _("Cancel on event")
