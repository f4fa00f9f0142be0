"""The REST API (django_workflows.api): every endpoint, status code, scope and validation
rule, on SQLite and PostgreSQL. Paths are the contract's, below ``/workflows/api/``."""

from __future__ import annotations

import hashlib
import io
import json
import time
import uuid
from datetime import datetime, timedelta
from datetime import timezone as dt_timezone

import pytest
from django.contrib.auth.models import Permission
from django.core.management import call_command
from django.core.management.base import CommandError
from django.middleware.csrf import _get_new_csrf_string
from django.test import Client
from django.utils import timezone
from openapi_spec_validator import validate

import django_workflows as wf
from django_workflows.api import keys as keys_module
from django_workflows.api.keys import create_key
from django_workflows.models import ApiKey, Attempt, Event, FunctionState, Run
from django_workflows.testing import drain

pytestmark = pytest.mark.django_db

API = "/workflows/api/"
CALLS = {"flaky": 0}


# -- helpers ----------------------------------------------------------------------------------


class Api:
    """Requests to the API with an API key (or none), answers as (status, JSON)."""

    def __init__(self, client: Client, key: str | None = None) -> None:
        self.client = client
        self.key = key

    def headers(self, key: str | None) -> dict:
        key = key if key is not None else self.key
        return {"HTTP_AUTHORIZATION": f"Bearer {key}"} if key else {}

    def get(self, path, params=None, *, key=None):
        response = self.client.get(API + path, params or {}, **self.headers(key))
        return self._answer(response)

    def post(self, path, body=None, *, key=None, raw=None, content_type="application/json", **extra):
        data = raw if raw is not None else (b"" if body is None else json.dumps(body))
        response = self.client.post(API + path, data=data, content_type=content_type, **self.headers(key), **extra)
        return self._answer(response)

    def _answer(self, response):
        assert response["Content-Type"].startswith("application/json"), response.content[:300]
        body = json.loads(response.content) if response.content else None
        if response.status_code >= 400:
            assert set(body) >= {"code", "message"}, body  # the one error shape, everywhere
        return response.status_code, body


@pytest.fixture
def key():
    """A new API key of a scope: the key itself."""

    def make(scope="manage"):
        return create_key(f"{scope} key", scope)[1]

    return make


@pytest.fixture
def api(client, key):
    return Api(client, key("manage"))


@pytest.fixture
def make_user(django_user_model):
    def make(name, *perms, staff=True, superuser=False):
        user = django_user_model.objects.create_user(username=name, password="x", is_staff=staff, is_superuser=superuser)
        for codename in perms:
            user.user_permissions.add(Permission.objects.get(content_type__app_label="django_workflows", codename=codename))
        return user

    return make


def session_client(user, *, csrf=True):
    """A browser-like client of a logged-in user: CSRF enforced; with its token if ``csrf``."""
    client = Client(enforce_csrf_checks=True)
    client.force_login(user)
    token = _get_new_csrf_string()
    client.cookies["csrftoken"] = token
    if csrf:
        client.defaults["HTTP_X_CSRFTOKEN"] = token
    return Api(client)


def define_functions():
    def flaky():
        CALLS["flaky"] += 1
        if CALLS["flaky"] == 1:
            raise ValueError("first try fails")
        return "flaky ok"

    @wf.function(id="api-greet", trigger="api.greet", retries=2)
    def greet(ctx):
        """Greets, with a flaky step."""
        hello = ctx.step.run("hello", lambda: f"hello {ctx.event.data.get('who', 'world')}")
        ctx.step.run("flaky", flaky)
        return {"hello": hello, "event_id": ctx.event.id, "data": ctx.event.data}

    @wf.function(id="api-sleeper", trigger="api.sleep")
    def sleeper(ctx):
        ctx.step.run("before", lambda: 1)
        ctx.step.sleep("nap", "1h")
        return "woke"

    @wf.function(id="api-fail", trigger="api.fail", retries=0)
    def fail(ctx):
        ctx.step.run("first", lambda: "kept")
        ctx.step.run("explode", lambda: (_ for _ in ()).throw(wf.NonRetriableError("kaput")))

    @wf.function(id="team/api-echo", trigger="api.echo")
    def echo(ctx):
        return ctx.event.data

    return greet


@pytest.fixture
def functions():
    CALLS["flaky"] = 0
    return define_functions()


def ms(moment: datetime) -> int:
    return int(moment.timestamp() * 1000)


# -- authentication and scopes ----------------------------------------------------------------

RUN_ID = "01a1f9b0-0000-7000-8000-000000000000"
EVENT_ID = "01a1f9b0-0000-7000-8000-000000000001"
# Every endpoint with the scope it needs.
ENDPOINTS = [
    ("get", "events", "read"),
    ("post", "events", "send"),
    ("get", f"events/{EVENT_ID}", "read"),
    ("get", "runs", "read"),
    ("get", f"runs/{RUN_ID}", "read"),
    ("post", f"runs/{RUN_ID}/cancel", "manage"),
    ("post", f"runs/{RUN_ID}/replay", "manage"),
    ("post", "runs/replay", "manage"),
    ("post", "runs/cancel", "manage"),
    ("get", "functions", "read"),
    ("get", "functions/api-greet", "read"),
    ("post", "functions/api-greet/pause", "manage"),
    ("post", "functions/api-greet/resume", "manage"),
    ("post", "functions/api-greet/invoke", "manage"),
]
RANK = {"send": 0, "read": 1, "manage": 2}


@pytest.mark.parametrize(("method", "path", "_scope"), ENDPOINTS)
def test_without_credentials_every_endpoint_answers_401_in_json(client, functions, method, path, _scope):
    response = getattr(client, method)(API + path, content_type="application/json")
    assert response.status_code == 401
    assert response.json()["code"] == "not_authenticated"
    assert response["WWW-Authenticate"].startswith("Bearer")


@pytest.mark.parametrize("header", ["Bearer wf_not-a-key", "Bearer", "Bearer a b", "Bearer nope", "bearer wf_" + "x" * 300])
def test_a_bad_key_is_401(client, functions, header):
    response = client.get(API + "runs", HTTP_AUTHORIZATION=header)
    assert response.status_code == 401
    assert response.json()["code"] == "authentication_failed"


@pytest.mark.parametrize("scope", ["send", "read", "manage"])
@pytest.mark.parametrize(("method", "path", "needed"), ENDPOINTS)
def test_each_scope_reaches_what_it_covers_and_gets_403_beyond(client, key, functions, scope, method, path, needed):
    api = Api(client, key(scope))
    status, body = getattr(api, method)(path, {} if method == "post" else None)
    if RANK[scope] >= RANK[needed]:
        assert status not in (401, 403), body
    else:
        assert status == 403, body
        assert body["code"] == "permission_denied"
        assert f"scope {scope!r}" in body["message"] and repr(needed) in body["message"]


def test_revoked_key_is_401_at_once(client, key, functions):
    raw = key("manage")
    api = Api(client, raw)
    assert api.get("runs")[0] == 200
    ApiKey.objects.filter(prefix=raw[:11]).update(revoked_at=timezone.now())
    status, body = api.get("runs")
    assert status == 401 and body["code"] == "authentication_failed"
    assert Api(client).post(f"e/{raw}", {"name": "api.greet"})[0] == 401


def test_keys_are_stored_and_compared_as_hashes(client, functions):
    row, raw = create_key("hashed", "read")
    assert row.key_hash == hashlib.sha256(raw.encode()).hexdigest()
    assert raw not in {row.name, row.prefix, row.key_hash} and row.prefix == raw[:11]
    api = Api(client, raw)
    assert api.get("runs")[0] == 200
    # The row is found by the hash of what is presented: another key's hash, another key.
    other = "wf_" + "z" * 43
    ApiKey.objects.filter(pk=row.pk).update(key_hash=hashlib.sha256(other.encode()).hexdigest())
    assert api.get("runs")[0] == 401
    assert Api(client, other).get("runs")[0] == 200
    # A key that only shares the prefix is refused.
    assert Api(client, raw[:11] + "x" * 40).get("runs")[0] == 401


def test_the_stored_hash_is_compared_in_constant_time(client, functions, monkeypatch):
    compared = []
    real = keys_module.hmac.compare_digest

    def spy(a, b):
        compared.append((a, b))
        return real(a, b)

    monkeypatch.setattr(keys_module.hmac, "compare_digest", spy)
    row, raw = create_key("spied", "read")
    assert Api(client, raw).get("runs")[0] == 200
    assert compared == [(row.key_hash, hashlib.sha256(raw.encode()).hexdigest())]


def test_last_used_at_is_recorded(client, functions):
    row, raw = create_key("used", "read")
    assert row.last_used_at is None
    Api(client, raw).get("runs")
    row.refresh_from_db()
    assert row.last_used_at is not None


def test_createapikey_prints_the_key_as_the_last_word_and_it_works(client, functions):
    out = io.StringIO()
    call_command("createapikey", "billing-service", "--scope", "read", stdout=out)
    raw = out.getvalue().split()[-1]
    row = ApiKey.objects.get(name="billing-service")
    assert row.scope == "read" and raw.startswith(row.prefix)
    api = Api(client, raw)
    assert api.get("runs")[0] == 200
    assert api.post("events", {"name": "api.greet"})[0] == 201  # read covers send
    assert api.post("functions/api-greet/pause")[0] == 403
    with pytest.raises(CommandError):
        call_command("createapikey", "x", "--scope", "admin", stdout=io.StringIO(), stderr=io.StringIO())


def test_createapikey_defaults_to_scope_send(client, functions):
    out = io.StringIO()
    call_command("createapikey", "sender", stdout=out)
    api = Api(client, out.getvalue().split()[-1])
    assert api.post("events", {"name": "api.greet"})[0] == 201
    assert api.get("runs")[0] == 403


# -- staff sessions ---------------------------------------------------------------------------


def test_staff_session_within_its_permissions(make_user, functions):
    viewer = session_client(make_user("viewer", "view_run"))
    assert viewer.get("runs")[0] == 200
    assert viewer.get("events")[0] == 403  # needs view_event
    assert viewer.get("functions")[0] == 403  # needs view_functionstate
    assert viewer.post("events", {"name": "api.greet"})[0] == 403  # needs change_event
    assert viewer.post(f"runs/{RUN_ID}/cancel")[0] == 403  # needs change_run

    sender = session_client(make_user("sender", "change_event", "view_event"))
    status, body = sender.post("events", {"name": "api.greet"})
    assert status == 201 and len(body["ids"]) == 1
    assert sender.get("events")[0] == 200

    operator = session_client(make_user("operator", "view_run", "change_run", "view_functionstate"))
    assert operator.post(f"runs/{RUN_ID}/cancel")[0] == 404  # allowed; no such run
    assert operator.post("functions/api-greet/invoke", {"data": {}})[0] == 201
    assert operator.post("functions/api-greet/pause")[0] == 403  # needs change_functionstate
    assert operator.get("functions/api-greet")[0] == 200

    switcher = session_client(make_user("switcher", "change_functionstate"))
    assert switcher.post("functions/api-greet/pause")[0] == 200

    admin = session_client(make_user("root", superuser=True))
    for method, path, _scope in ENDPOINTS:
        assert getattr(admin, method)(path, {} if method == "post" else None)[0] not in (401, 403), path


def test_session_posts_need_the_csrf_token(make_user, functions):
    user = make_user("root", superuser=True)
    without = session_client(user, csrf=False)
    status, body = without.post("events", {"name": "api.greet"})
    assert status == 403 and body["code"] == "permission_denied" and "CSRF" in body["message"]
    assert without.get("runs")[0] == 200  # reading needs no token
    assert Event.objects.count() == 0


def test_non_staff_users_are_refused(make_user, functions):
    user = make_user("customer", "view_run", staff=False)
    status, body = session_client(user).get("runs")
    assert status == 403 and "staff" in body["message"]


def test_a_key_wins_over_a_session_and_keeps_its_scope(make_user, key, functions):
    api = session_client(make_user("root", superuser=True))
    api.key = key("send")
    assert api.get("runs")[0] == 403


# -- sending events ---------------------------------------------------------------------------


def test_send_one_event_stores_it_and_starts_its_runs(api, functions):
    status, body = api.post("events", {"name": "api.greet", "data": {"who": "ada"}})
    assert status == 201
    [event_id] = body["ids"]
    event = Event.objects.get(pk=event_id)
    assert (event.name, event.data, event.dedup_id) == ("api.greet", {"who": "ada"}, "")
    drain(advance_time=True)  # its flaky step is retried
    run = Run.objects.get(event_id=event_id)
    assert run.status == "completed" and run.output["hello"] == "hello ada"


def test_send_a_list_keeps_the_order_and_defaults_data(api, functions):
    status, body = api.post("events", [
        {"name": "api.echo", "data": {"n": 1}},
        {"name": "api.echo"},
        {"name": "api.echo", "data": None, "id": "sender-3"},
    ])
    assert status == 201 and len(body["ids"]) == 3
    events = [Event.objects.get(pk=pk) for pk in body["ids"]]
    assert [e.data for e in events] == [{"n": 1}, {}, {}]
    assert events[2].dedup_id == "sender-3"
    assert events[0].received_at < events[1].received_at < events[2].received_at
    assert api.post("events", [])[1] == {"ids": []}


def test_an_id_seen_in_the_last_24_hours_is_stored_but_starts_nothing(api, functions):
    first = api.post("events", {"name": "api.echo", "id": "order-1", "data": {"n": 1}})[1]["ids"][0]
    drain()
    second = api.post("events", {"name": "api.echo", "id": "order-1", "data": {"n": 2}})[1]["ids"][0]
    drain()
    assert Event.objects.filter(pk__in=[first, second]).count() == 2
    assert list(Run.objects.values_list("event_id", flat=True)) == [uuid.UUID(first)]
    status, body = api.get(f"events/{second}")
    assert status == 200 and body["runs"] == [] and body["sender_id"] == "order-1"


@pytest.mark.parametrize("form", ["ms", "iso", "iso-offset"])
def test_a_future_ts_delays_the_runs(api, functions, form):
    later = timezone.now() + timedelta(hours=1)
    ts = {
        "ms": ms(later),
        "iso": later.astimezone(dt_timezone.utc).isoformat().replace("+00:00", "Z"),
        "iso-offset": later.astimezone(dt_timezone(timedelta(hours=2))).isoformat(),
    }[form]
    [event_id] = api.post("events", {"name": "api.echo", "data": {"late": True}, "ts": ts})[1]["ids"]
    assert abs(Event.objects.get(pk=event_id).ts - later) < timedelta(milliseconds=2)
    drain()
    run = Run.objects.get(event_id=event_id)
    assert run.status == "queued"
    drain(advance_time=True)
    run.refresh_from_db()
    assert run.status == "completed" and run.started_at >= later - timedelta(milliseconds=2)


def test_a_past_or_zero_ts_starts_at_once(api, functions):
    ids = api.post("events", [
        {"name": "api.echo", "ts": ms(timezone.now() - timedelta(days=3))},
        {"name": "api.echo", "ts": 0},
    ])[1]["ids"]
    events = {str(e.pk): e for e in Event.objects.all()}
    assert events[ids[0]].ts < timezone.now() - timedelta(days=2)
    assert abs(events[ids[1]].ts - events[ids[1]].received_at) < timedelta(seconds=1)
    drain()
    assert set(Run.objects.values_list("status", flat=True)) == {"completed"}


def test_one_bad_event_and_none_is_stored(api, functions):
    status, body = api.post("events", [
        {"name": "api.echo"}, {"name": "api.echo"}, {"name": "api.echo", "data": [1, 2]}, {"name": "api.echo"},
    ])
    assert status == 400
    assert body["code"] == "invalid_event"
    assert list(body["errors"]) == ["events[2].data"]
    assert body["message"].startswith("events[2] 'api.echo': data must be a dict")
    assert Event.objects.count() == 0


@pytest.mark.parametrize(
    ("event", "field", "words"),
    [
        ({}, "name", "name must be a non-empty string"),
        ({"name": 12}, "name", "name must be a non-empty string"),
        ({"name": " padded "}, "name", "no surrounding spaces"),
        ({"name": "workflows/function.failed"}, "name", "reserved"),
        ({"name": "nul\u0000name"}, "name", "NUL"),
        ({"name": "a", "data": "text"}, "data", "data must be a dict"),
        ({"name": "a", "data": {"x": "nul\u0000"}}, "data", "NUL"),
        ({"name": "a", "id": 5}, "id", "id must be a non-empty string"),
        ({"name": "a", "id": ""}, "id", "id must be a non-empty string"),
        ({"name": "a", "id": "x" * 256}, "id", "at most 255"),
        ({"name": "a", "ts": "yesterday"}, "ts", "not an ISO 8601"),
        ({"name": "a", "ts": "2024-05-01T12:00:00"}, "ts", "no time zone"),
        ({"name": "a", "ts": True}, "ts", "boolean"),
        ({"name": "a", "ts": 10**20}, "ts", "out of range"),
        ({"name": "a", "ts": [1]}, "ts", "got list"),
        ({"name": "a", "date": {}}, "date", "unknown field 'date'"),
    ],
)
def test_each_validation_rule_names_the_field_and_the_event(api, functions, event, field, words):
    status, body = api.post("events", event)
    assert status == 400, body
    assert body["code"] == "invalid_event"
    assert list(body["errors"]) == [field]
    assert words in body["message"], body["message"]
    status, body = api.post("events", [{"name": "ok"}, event])
    assert status == 400 and list(body["errors"]) == [f"events[1].{field}"], body
    assert body["message"].startswith("events[1]")
    assert Event.objects.count() == 0


@pytest.mark.parametrize(
    ("raw", "code", "field"),
    [
        ("[{", "parse_error", None),
        ('{"name": "a", "data": {"x": NaN}}', "parse_error", None),
        ('"just a string"', "invalid", "body"),
        ("42", "invalid", "body"),
        ("null", "invalid", "body"),
        ('["not an object"]', "invalid_event", "events[0]"),
        ('{"name": "a", "data": {"big": 1e400}}', "invalid_event", "data"),  # a float beyond JSON's
        ("[" * 100_000 + "]" * 100_000, "parse_error", None),
        (b"\xff\xfe", "parse_error", None),
    ],
)
def test_bodies_that_are_not_events(api, functions, raw, code, field):
    status, body = api.post("events", raw=raw)
    assert status == 400, body
    assert body["code"] == code
    if field:
        assert list(body["errors"]) == [field]


def test_events_need_json(api, functions):
    status, body = api.post("events", raw="name=a", content_type="application/x-www-form-urlencoded")
    assert status == 415 and body["code"] == "unsupported_media_type"


def test_too_many_events_in_one_request_is_413(api, functions, settings):
    settings.DJANGO_WORKFLOWS = {**settings.DJANGO_WORKFLOWS, "MAX_EVENTS_PER_REQUEST": 3}
    assert api.post("events", [{"name": "a"}] * 3)[0] == 201
    status, body = api.post("events", [{"name": "a"}] * 4)
    assert status == 413 and body["code"] == "too_many_events"
    assert "MAX_EVENTS_PER_REQUEST" in body["message"]
    assert Event.objects.count() == 3


def test_the_default_limit_is_5000_events(api, functions):
    assert api.post("events", [{"name": "a"}] * 5001)[0] == 413
    assert Event.objects.count() == 0


def test_an_event_over_max_event_bytes_is_413(api, functions, settings):
    settings.DJANGO_WORKFLOWS = {**settings.DJANGO_WORKFLOWS, "MAX_EVENT_BYTES": 1000}
    status, body = api.post("events", [{"name": "a", "data": {"x": "y" * 900}}, {"name": "a", "data": {"x": "y" * 2000}}])
    assert status == 413 and body["code"] == "event_too_large"
    assert list(body["errors"]) == ["events[1]"] and "MAX_EVENT_BYTES" in body["message"]
    assert Event.objects.count() == 0


def test_the_default_event_limit_is_512_kib(api, functions):
    assert api.post("events", {"name": "a", "data": {"x": "y" * (512 * 1024 - 100)}})[0] == 201
    assert api.post("events", {"name": "a", "data": {"x": "y" * (512 * 1024)}})[0] == 413


def test_a_body_over_data_upload_max_memory_size_is_a_json_413(api, functions, settings):
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 10_000
    status, body = api.post("events", [{"name": "a", "data": {"x": "y" * 100}}] * 200)
    assert status == 413 and body["code"] == "request_too_large"
    assert "DATA_UPLOAD_MAX_MEMORY_SIZE" in body["message"]
    assert Event.objects.count() == 0
    # A declared length over the limit is refused before the body is read.
    response = api.client.post(API + "events", data="{}", content_type="application/json",
                               CONTENT_LENGTH="20000", **api.headers(None))
    assert response.status_code == 413 and response.json()["code"] == "request_too_large"
    # A body Django refused itself (request.body read first) is the same JSON 413.
    from django.core.exceptions import RequestDataTooBig

    from django_workflows.api.errors import exception_handler

    response = exception_handler(RequestDataTooBig("too big"), {})
    assert response.status_code == 413 and response.data["code"] == "request_too_large"


def test_sending_is_atomic_with_wf_send_checks(api, functions, monkeypatch):
    """The API calls wf.send's own validation: a rule added there applies here."""
    from django_workflows import events as events_module

    real = events_module._validate

    def stricter(event, index, allow_system):
        real(event, index, allow_system)
        if event.data.get("forbidden"):
            raise wf.EventValidationError(f"event {event.name!r}: data must not be forbidden")

    monkeypatch.setattr(events_module, "_validate", stricter)
    from django_workflows.api import parsing

    monkeypatch.setattr(parsing, "validate_event", stricter)
    status, body = api.post("events", [{"name": "a"}, {"name": "a", "data": {"forbidden": 1}}])
    assert status == 400 and list(body["errors"]) == ["events[1].data"]
    assert Event.objects.count() == 0


# -- Inngest's event API ----------------------------------------------------------------------


def test_inngest_sdk_request_starts_a_run(client, key, functions):
    """A request built by hand as Inngest's SDKs send it to Inngest's event API, from
    Inngest's documented format (https://www.inngest.com/docs/events, "Event payload
    format" and "Send events via HTTP (Event API)"; fields: name, data, id, ts in epoch
    milliseconds, user, v): POST <event API base URL>/e/<event key>, a JSON list of events.
    The JavaScript SDK sends the body as text (fetch's default text/plain), always with
    ``ts`` and ``data``; the answer it expects is ``{"ids": [...], "status": 200}``."""
    raw_key = key("send")
    now_ms = int(time.time() * 1000)
    payload = [
        {
            "name": "api.greet",
            "data": {"who": "grace", "cartId": "ed12c8bde"},
            "user": {"external_id": "645ea000129f1c40109ca7ad", "email": "taylor@example.com"},
            "id": "cart-ed12c8bde",
            "ts": now_ms,
            "v": "2024-01-14.1",
        },
        {"name": "api.echo", "data": {"n": 2}, "ts": now_ms},
    ]
    response = client.post(
        f"{API}e/{raw_key}",
        data=json.dumps(payload, separators=(",", ":")),  # as JSON.stringify
        content_type="text/plain;charset=UTF-8",
        HTTP_X_INNGEST_SDK="inngest-js:v3.27.0",
        HTTP_X_INNGEST_EVENT_ID_SEED=f"{now_ms},bm90LXJhbmRvbQ==",
    )
    assert response.status_code == 200
    body = response.json()
    assert set(body) == {"ids", "status"} and body["status"] == 200 and len(body["ids"]) == 2
    event = Event.objects.get(pk=body["ids"][0])
    assert event.name == "api.greet" and event.dedup_id == "cart-ed12c8bde"
    assert event.data == {"who": "grace", "cartId": "ed12c8bde"}
    assert ms(event.ts) == now_ms
    drain(advance_time=True)
    run = Run.objects.get(event_id=event.pk)
    assert run.status == "completed"
    assert run.output == {
        "hello": "hello grace", "event_id": "cart-ed12c8bde", "data": {"who": "grace", "cartId": "ed12c8bde"},
    }
    assert Run.objects.get(function_id="team/api-echo").output == {"n": 2}


def test_inngest_python_sdk_request(client, key, functions):
    """As Inngest's Python SDK sends it: application/json, a list, an empty id dropped
    (or sent as ""), ts 0 replaced by now."""
    raw_key = key("manage")
    response = client.post(
        f"{API}e/{raw_key}",
        data=json.dumps([{"data": {"who": "py"}, "name": "api.greet", "ts": 0, "id": ""}]),
        content_type="application/json",
        HTTP_X_INNGEST_SDK="inngest-py:v0.4.0",
    )
    assert response.status_code == 200, response.content
    [event_id] = response.json()["ids"]
    event = Event.objects.get(pk=event_id)
    assert event.dedup_id == "" and abs(event.ts - event.received_at) < timedelta(seconds=1)
    drain(advance_time=True)
    assert Run.objects.get(event_id=event_id).output["hello"] == "hello py"


def test_inngest_single_event_from_curl(client, key, functions):
    """The docs' curl example: one event object, sent as a form (curl -d's default)."""
    response = client.post(
        f"{API}e/{key('send')}", data='{ "name": "api.echo", "data": { "hello": "world" } }',
        content_type="application/x-www-form-urlencoded",
    )
    assert response.status_code == 200 and response.json()["status"] == 200
    drain()
    assert Run.objects.get().output == {"hello": "world"}


def test_inngest_errors_carry_error_and_status(client, key, functions):
    raw_key = key("send")
    response = client.post(f"{API}e/{raw_key}", data=json.dumps({"name": "api.echo", "data": [1]}), content_type="application/json")
    body = response.json()
    assert response.status_code == 400
    assert body["code"] == "invalid_event" and body["status"] == 400 and body["error"] == body["message"]
    assert body["ids"] == [] and list(body["errors"]) == ["data"]
    for wrong in ("wf_unknown", "not-even-a-key"):
        response = client.post(f"{API}e/{wrong}", data="{}", content_type="application/json")
        assert response.status_code == 401
        assert response.json()["status"] == 401 and response.json()["code"] == "authentication_failed"
    response = client.get(f"{API}e/{raw_key}")
    assert response.status_code == 405 and response.json()["code"] == "method_not_allowed"
    # The key is in the path only: a Bearer header does not stand in for it.
    response = client.post(f"{API}e/wf_nope", data="{}", content_type="application/json", HTTP_AUTHORIZATION=f"Bearer {raw_key}")
    assert response.status_code == 401


def test_inngest_limits(client, key, functions, settings):
    settings.DJANGO_WORKFLOWS = {**settings.DJANGO_WORKFLOWS, "MAX_EVENTS_PER_REQUEST": 2}
    response = client.post(f"{API}e/{key('send')}", data=json.dumps([{"name": "a"}] * 3), content_type="text/plain")
    assert response.status_code == 413 and response.json()["code"] == "too_many_events"
    assert response.json()["status"] == 413 and Event.objects.count() == 0


def test_inngest_dedup_by_id(client, key, functions):
    raw_key = key("send")
    for _ in range(2):
        body = json.dumps({"name": "api.echo", "id": "same", "data": {}, "ts": int(time.time() * 1000)})
        assert client.post(f"{API}e/{raw_key}", data=body, content_type="text/plain").status_code == 200
    drain()
    assert Event.objects.count() == 2 and Run.objects.count() == 1


# -- runs -------------------------------------------------------------------------------------


@pytest.fixture
def runs(api, functions):
    """One completed greet run (with a retried step), a failed one, a sleeping one."""
    ids = {}
    for name in ("api.greet", "api.fail", "api.sleep"):
        ids[name] = api.post("events", {"name": name, "data": {"who": name}})[1]["ids"][0]
        drain(advance_time=name != "api.sleep")
    found = {run.function_id: run for run in Run.objects.all()}
    assert found["api-greet"].status == "completed"
    assert found["api-fail"].status == "failed"
    assert found["api-sleeper"].status == "running"
    return found


def test_run_detail_has_steps_and_every_attempt(api, runs):
    run = runs["api-greet"]
    status, body = api.get(f"runs/{run.pk}")
    assert status == 200
    assert body["id"] == str(run.pk) and body["function_id"] == "api-greet" and body["status"] == "completed"
    assert body["output"]["hello"] == "hello api.greet"
    assert body["event"]["name"] == "api.greet" and body["event_id"] == body["event"]["id"]
    steps = {step["step_id"]: step for step in body["steps"]}
    assert list(steps) == ["hello", "flaky"]
    for step in body["steps"]:
        assert set(step) >= {"step_id", "kind", "status", "output", "error", "attempts", "attempt_history"}
    assert steps["hello"]["kind"] == "run" and steps["hello"]["output"] == "hello api.greet"
    flaky = steps["flaky"]
    assert flaky["status"] == "completed" and flaky["attempts"] == 2 and flaky["output"] == "flaky ok"
    assert [a["outcome"] for a in flaky["attempt_history"]] == ["retrying", "completed"]
    assert flaky["attempt_history"][0]["error"]["message"] == "first try fails"
    assert [a["number"] for a in flaky["attempt_history"]] == [1, 2]
    assert Attempt.objects.filter(run=run).count() == len(body["attempt_history"]) + 3
    assert body["waiting_reason"] == "" and body["replays"] == [] and body["invoked_runs"] == []


def test_failed_and_sleeping_runs(api, runs):
    body = api.get(f"runs/{runs['api-fail'].pk}")[1]
    assert body["status"] == "failed" and body["error"]["message"]
    assert {s["step_id"]: s["status"] for s in body["steps"]} == {"first": "completed", "explode": "failed"}
    body = api.get(f"runs/{runs['api-sleeper'].pk}")[1]
    nap = body["steps"][-1]
    assert body["status"] == "running" and nap["kind"] == "sleep" and nap["scheduled_at"]


def test_unknown_run_is_404(api, functions):
    status, body = api.get(f"runs/{uuid.uuid4()}")
    assert status == 404 and body["code"] == "not_found"
    assert api.get("runs/not-a-uuid")[0] == 404


def test_runs_list_newest_first_with_filters(api, runs):
    status, body = api.get("runs")
    assert status == 200 and set(body) == {"next", "previous", "results"}
    listed = [r["id"] for r in body["results"]]
    newest_first = [str(r.pk) for r in sorted(runs.values(), key=lambda r: r.queued_at, reverse=True)]
    assert listed == newest_first
    assert "output" not in body["results"][0]  # outputs are on a run's own page

    def ids(**params):
        status, body = api.get("runs", params)
        assert status == 200, body
        return {r["id"] for r in body["results"]}

    one = {name: {str(run.pk)} for name, run in runs.items()}
    assert ids(function_id="api-fail") == one["api-fail"]
    assert ids(status="failed") == one["api-fail"]
    assert ids(status="failed,running") == one["api-fail"] | one["api-sleeper"]
    assert ids(event_id=str(runs["api-greet"].event_id)) == one["api-greet"]
    assert ids(event_name="api.sleep") == one["api-sleeper"]
    assert ids(function_id="api-greet", status="failed") == set()
    greet, fail = runs["api-greet"], runs["api-fail"]
    assert ids(queued_after=fail.queued_at.isoformat()) == one["api-sleeper"]
    assert ids(queued_before=str(ms(fail.queued_at) + 1)) == one["api-greet"] | one["api-fail"]
    assert ids(ended_after=greet.ended_at.isoformat(), ended_before=(fail.ended_at + timedelta(microseconds=1)).isoformat()) == one["api-fail"]
    assert ids(ended_after="2000-01-01T00:00:00Z") == one["api-greet"] | one["api-fail"]
    # A "+" offset sent unencoded arrives as a space: still understood.
    plus = greet.queued_at.astimezone(dt_timezone(timedelta(hours=2))).isoformat().replace("+", " ")
    assert ids(queued_after=plus) == one["api-fail"] | one["api-sleeper"]


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"status": "sleeping"}, "status"),
        ({"status": ","}, "status"),
        ({"event_id": "nope"}, "event_id"),
        ({"queued_after": "last tuesday"}, "queued_after"),
        ({"queued_before": "2024-01-01T00:00:00"}, "queued_before"),
        ({"ended_after": "99999999999999999999999"}, "ended_after"),
        ({"ended_before": "2024-13-45T00:00:00Z"}, "ended_before"),
        ({"cursor": "garbage"}, "cursor"),
        ({"cursor": "cD1ub3QtYS1kYXRl"}, "cursor"),  # base64 of "p=not-a-date"
    ],
)
def test_runs_list_bad_filters_are_400(api, functions, params, field):
    status, body = api.get("runs", params)
    assert status == 400 and body["code"] == "invalid" and list(body["errors"]) == [field], body


def test_runs_cursor_pagination_walks_everything_once(api, functions):
    api.post("events", [{"name": "api.echo", "data": {"n": n}} for n in range(7)])
    drain()
    seen, url, pages = [], "runs?page_size=3", 0
    while url:
        response = api.client.get(API + url if not url.startswith("http") else url, **api.headers(None))
        body = response.json()
        seen += [r["id"] for r in body["results"]]
        pages += 1
        url = body["next"]
    assert pages == 3 and len(seen) == len(set(seen)) == 7
    queued = [str(pk) for pk in Run.objects.order_by("-queued_at", "-id").values_list("pk", flat=True)]
    assert seen == queued


def test_cancel_a_run(api, runs):
    sleeper = runs["api-sleeper"]
    status, body = api.post(f"runs/{sleeper.pk}/cancel")
    assert status == 200 and body["cancelled"] is True
    assert body["run"]["status"] == "cancelled" and body["run"]["id"] == str(sleeper.pk)
    sleeper.refresh_from_db()
    assert sleeper.status == "cancelled"
    status, body = api.post(f"runs/{sleeper.pk}/cancel")
    assert status == 200 and body["cancelled"] is False
    assert api.post(f"runs/{uuid.uuid4()}/cancel")[0] == 404


def test_replay_a_run(api, runs):
    failed = runs["api-fail"]
    status, body = api.post(f"runs/{failed.pk}/replay")
    assert status == 201
    assert body["replay_of"] == str(failed.pk) and body["status"] == "queued" and body["steps"] == []
    assert body["event_id"] == str(failed.event_id)
    assert api.get(f"runs/{failed.pk}")[1]["replays"][0]["id"] == body["id"]


def test_replay_from_a_step_keeps_the_earlier_outputs(api, runs):
    failed = runs["api-fail"]
    status, body = api.post(f"runs/{failed.pk}/replay", {"from_step": "explode"})
    assert status == 201
    assert [(s["step_id"], s["status"], s["output"]) for s in body["steps"]] == [("first", "completed", "kept")]
    status, body = api.post(f"runs/{failed.pk}/replay", {"from_step": "nope"})
    assert status == 400 and list(body["errors"]) == ["from_step"] and "first, explode" in body["message"]


def test_replay_refusals_are_409(api, runs):
    status, body = api.post(f"runs/{runs['api-sleeper'].pk}/replay")
    assert status == 409 and body["code"] == "run_not_finished"
    wf.pause("api-fail")
    status, body = api.post(f"runs/{runs['api-fail'].pk}/replay")
    assert status == 409 and body["code"] == "FunctionPaused" and "paused" in body["message"]
    from django_workflows.functions import registry

    registry.unregister("api-greet")
    status, body = api.post(f"runs/{runs['api-greet'].pk}/replay")
    assert status == 409 and body["code"] == "unknown_function"
    assert api.post(f"runs/{uuid.uuid4()}/replay")[0] == 404
    status, body = api.post(f"runs/{runs['api-fail'].pk}/replay", {"fromStep": "first"})
    assert status == 400 and list(body["errors"]) == ["fromStep"]
    status, body = api.post(f"runs/{runs['api-fail'].pk}/replay", [1])
    assert status == 400 and body["code"] == "invalid"


def test_bulk_replay_by_filter(api, functions):
    api.post("events", [{"name": "api.fail"}] * 3 + [{"name": "api.echo"}])
    drain()
    assert Run.objects.filter(status="failed").count() == 3
    status, body = api.post("runs/replay", {"function_id": "api-fail"})
    assert status == 200 and body == {"count": 3, "refused": 0, "refusals": [], "more": False}
    assert Run.objects.filter(function_id="api-fail").exclude(replay_of=None).count() == 3
    # Runs replayed already are left out: the same request again replays nothing.
    assert api.post("runs/replay", {"function_id": "api-fail"})[1]["count"] == 0
    # Completed runs, by status; in a time range.
    status, body = api.post("runs/replay", {"function_id": "team/api-echo", "status": ["completed"],
                                            "queued_before": "2000-01-01T00:00:00Z"})
    assert status == 200 and body["count"] == 0
    status, body = api.post("runs/replay", {"function_id": "team/api-echo", "status": "completed,failed",
                                            "queued_after": ms(timezone.now() - timedelta(hours=1))})
    assert body["count"] == 1


def test_bulk_replay_reports_refusals(api, functions):
    api.post("events", [{"name": "api.fail"}] * 2)
    drain()
    wf.pause("api-fail")
    status, body = api.post("runs/replay", {"function_id": "api-fail"})
    assert status == 200 and body["count"] == 0 and body["refused"] == 2
    assert {r["code"] for r in body["refusals"]} == {"FunctionPaused"}


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({}, "function_id"),
        ({"function_id": "nope"}, "function_id"),
        ({"function_id": "api-fail", "status": "running"}, "status"),
        ({"function_id": "api-fail", "queued_after": "soon"}, "queued_after"),
        ({"function_id": "api-fail", "colour": "red"}, "colour"),
    ],
)
def test_bulk_replay_bad_bodies(api, functions, body, field):
    status, answer = api.post("runs/replay", body)
    assert status == 400 and any(key.startswith(field) for key in answer["errors"]), answer


def test_bulk_cancel_by_filter(api, functions):
    api.post("events", [{"name": "api.sleep"}] * 3)
    drain()
    assert Run.objects.filter(status="running").count() == 3
    later = timezone.now() + timedelta(hours=2)
    api.post("events", {"name": "api.sleep", "ts": ms(later)})
    drain()
    assert Run.objects.filter(status="queued").count() == 1
    status, body = api.post("runs/cancel", {"function_id": "api-sleeper", "status": "queued"})
    assert status == 200 and body == {"count": 1}
    assert Run.objects.filter(status="running").count() == 3
    status, body = api.post("runs/cancel", {"function_id": "api-sleeper", "queued_before": "2000-01-01T00:00:00Z"})
    assert body == {"count": 0}
    status, body = api.post("runs/cancel", {"function_id": "api-sleeper"})
    assert body == {"count": 3} and Run.objects.filter(status="cancelled").count() == 4
    for bad, field in (({}, "function_id"), ({"function_id": "api-sleeper", "status": "failed"}, "status")):
        status, answer = api.post("runs/cancel", bad)
        assert status == 400 and any(key.startswith(field) for key in answer["errors"]), answer


# -- functions --------------------------------------------------------------------------------


def define_flow_controlled():
    @wf.function(
        id="api-flow", name="Flow", trigger=[wf.TriggerEvent("api.flow", expression="event.data.n > 1"),
                                             wf.TriggerCron("TZ=Europe/Paris 0 9 * * 1", jitter="30s")],
        retries=7, concurrency=[wf.Concurrency(2), wf.Concurrency(1, key="event.data.user")],
        throttle=wf.Throttle(10, "1m", key="event.data.user", burst=2),
        idempotency="event.data.order", priority=wf.Priority(run="event.data.vip ? 60 : 0"),
        singleton=wf.Singleton(key="event.data.user", mode="cancel"),
        cancel=[wf.Cancel("api.flow.stop", match="data.user", timeout="1h")],
        timeouts=wf.Timeouts(finish="1d"),
    )
    def flow(ctx):
        return None

    @wf.function(id="api-limited", trigger="api.limited", rate_limit=wf.RateLimit(1, "1h"),
                 debounce=wf.Debounce("5m", timeout="1h"))
    def limited(ctx):
        return None


def test_functions_list_and_detail(api, functions):
    define_flow_controlled()
    api.post("events", [{"name": "api.greet"}, {"name": "api.fail"}])
    drain(advance_time=True)
    status, body = api.get("functions")
    assert status == 200 and isinstance(body, list)
    listed = {fn["id"]: fn for fn in body}
    assert [fn["id"] for fn in body] == sorted(listed)
    greet = listed["api-greet"]
    assert greet["name"] == "api-greet" and greet["description"] == "Greets, with a flaky step."
    assert greet["triggers"] == [{"type": "event", "event": "api.greet", "expression": None, "cron": None, "jitter_seconds": None}]
    assert greet["retries"] == 2 and greet["paused"] is False and greet["paused_at"] is None
    assert greet["runs_last_24h"] == {"queued": 0, "running": 0, "completed": 1, "failed": 0, "cancelled": 0}
    assert listed["api-fail"]["runs_last_24h"]["failed"] == 1

    status, flow = api.get("functions/api-flow")
    assert status == 200 and flow["name"] == "Flow" and flow["retries"] == 7
    assert flow["triggers"][0]["expression"] == "event.data.n > 1"
    assert flow["triggers"][1] == {"type": "cron", "event": None, "expression": None,
                                   "cron": "TZ=Europe/Paris 0 9 * * 1", "jitter_seconds": 30.0}
    options = flow["options"]
    assert options["concurrency"] == [{"limit": 2, "key": None, "scope": "fn"}, {"limit": 1, "key": "event.data.user", "scope": "fn"}]
    assert options["throttle"] == {"limit": 10, "period_seconds": 60.0, "key": "event.data.user", "burst": 2}
    assert options["idempotency"] == "event.data.order"
    assert options["priority"] == {"run": "event.data.vip ? 60 : 0"}
    assert options["singleton"] == {"key": "event.data.user", "mode": "cancel"}
    assert options["cancel"] == [{"event": "api.flow.stop", "match": "data.user", "if_exp": None, "timeout_seconds": 3600.0}]
    assert options["timeouts"] == {"start_seconds": None, "finish_seconds": 86400.0}
    assert options["rate_limit"] is None and options["debounce"] is None and options["batch_events"] is None
    limited = api.get("functions/api-limited")[1]["options"]
    assert limited["rate_limit"] == {"limit": 1, "period_seconds": 3600.0, "key": None}
    assert limited["debounce"] == {"period_seconds": 300.0, "key": None, "timeout_seconds": 3600.0}


def test_function_ids_with_slashes_and_unknown_ids(api, functions):
    status, body = api.get("functions/team/api-echo")
    assert status == 200 and body["id"] == "team/api-echo"
    assert api.post("functions/team/api-echo/pause")[1]["paused"] is True
    status, body = api.get("functions/nope")
    assert status == 404 and body["code"] == "not_found"
    for action in ("pause", "resume", "invoke"):
        assert api.post(f"functions/nope/{action}", {})[0] == 404
    assert api.get("functions/api-greet/pause")[0] == 405


def test_pause_and_resume(api, functions):
    status, body = api.post("functions/api-greet/pause")
    assert status == 200 and body["paused"] is True and body["paused_at"]
    assert FunctionState.objects.get(function_id="api-greet").paused
    api.post("events", {"name": "api.greet"})
    drain()
    assert Run.objects.count() == 0
    status, body = api.post("functions/api-greet/resume")
    assert status == 200 and body["paused"] is False and body["paused_at"] is None
    api.post("events", {"name": "api.greet"})
    drain(advance_time=True)
    assert Run.objects.get().status == "completed"


def test_invoke_a_function(api, functions):
    status, body = api.post("functions/team/api-echo/invoke", {"data": {"x": 1}})
    assert status == 201
    assert body["function_id"] == "team/api-echo" and body["status"] == "queued"
    assert body["event"]["name"] == "workflows/function.invoked" and body["event"]["data"] == {"x": 1}
    drain()
    assert Run.objects.get(pk=body["id"]).output == {"x": 1}
    status, body = api.post("functions/team/api-echo/invoke")
    assert status == 201 and body["event"]["data"] == {}


def test_invoke_refusals(api, functions, settings):
    for bad, field in (({"data": [1]}, "data"), ({"data": "x"}, "data"), ({"dta": {}}, "dta")):
        status, body = api.post("functions/api-greet/invoke", bad)
        assert status == 400 and list(body["errors"]) == [field], body
    settings.DJANGO_WORKFLOWS = {**settings.DJANGO_WORKFLOWS, "MAX_EVENT_BYTES": 100}
    status, body = api.post("functions/api-greet/invoke", {"data": {"x": "y" * 200}})
    assert status == 413 and body["code"] == "event_too_large"
    wf.pause("api-greet")
    status, body = api.post("functions/api-greet/invoke", {"data": {}})
    assert status == 409 and body["code"] == "FunctionPaused"
    assert Run.objects.count() == 0 and Event.objects.count() == 0


def test_invoke_refused_by_rate_limit(api, functions):
    define_flow_controlled()

    @wf.function(id="api-once", trigger=[], rate_limit=wf.RateLimit(1, "1h"))
    def once(ctx):
        return None

    assert api.post("functions/api-once/invoke", {"data": {}})[0] == 201
    status, body = api.post("functions/api-once/invoke", {"data": {}})
    assert status == 409 and body["code"] == "RateLimited"


# -- events out -------------------------------------------------------------------------------


def test_events_list_and_detail(api, functions):
    ids = api.post("events", [{"name": "api.greet", "data": {"n": 1}}, {"name": "api.echo", "id": "s-2"},
                              {"name": "api.echo", "data": {"n": 3}}])[1]["ids"]
    drain(advance_time=True)
    status, body = api.get("events")
    assert status == 200 and [e["id"] for e in body["results"]] == ids[::-1]
    assert body["results"][1]["sender_id"] == "s-2" and body["results"][2]["data"] == {"n": 1}
    assert {e["id"] for e in api.get("events", {"name": "api.echo"})[1]["results"]} == set(ids[1:])
    second = Event.objects.get(pk=ids[1])
    assert [e["id"] for e in api.get("events", {"received_after": second.received_at.isoformat()})[1]["results"]] == [ids[2]]
    assert [e["id"] for e in api.get("events", {"received_before": second.received_at.isoformat()})[1]["results"]] == [ids[0]]
    page = api.get("events", {"page_size": 2})[1]
    assert len(page["results"]) == 2 and page["next"]
    status, body = api.get(f"events/{ids[0]}")
    assert status == 200 and body["name"] == "api.greet" and body["data"] == {"n": 1}
    assert [r["function_id"] for r in body["runs"]] == ["api-greet"] and body["runs"][0]["status"] == "completed"
    assert body["runs_truncated"] is False
    assert api.get(f"events/{uuid.uuid4()}")[0] == 404
    assert api.get("events", {"received_after": "nope"})[0] == 400


# -- errors everywhere ------------------------------------------------------------------------


def test_unknown_paths_under_the_prefix_are_json_404(api, client):
    for path in ("nope", "runs/", "events/abc", "functions/", "e/", "schema", "v1/runs"):
        response = client.get(API + path, **api.headers(None))
        assert response.status_code == 404 and response["Content-Type"] == "application/json", path
        assert response.json()["code"] == "not_found"
    assert "no trailing slash" in client.get(API + "runs/").json()["message"]
    response = Client(enforce_csrf_checks=True).post(API + "runs/")  # no CSRF token: still JSON
    assert response.status_code == 404 and response.json()["code"] == "not_found"


def test_wrong_methods_are_json_405(api, functions):
    for method, path in (("delete", "events"), ("put", "runs"), ("get", f"runs/{RUN_ID}/cancel"),
                         ("patch", "functions/api-greet"), ("get", "runs/replay")):
        response = getattr(api.client, method)(API + path, **api.headers(None))
        assert response.status_code == 405, (method, path)
        assert response.json()["code"] == "method_not_allowed" and response["Allow"]


def test_an_unexpected_error_is_a_json_500(key, functions, monkeypatch):
    from django_workflows.api import views

    def broken(*args, **kwargs):
        raise RuntimeError("bug")

    monkeypatch.setattr(views, "describe", broken)
    client = Client(raise_request_exception=False)
    response = client.get(API + "functions", HTTP_AUTHORIZATION=f"Bearer {key('read')}")
    assert response.status_code == 500
    assert response.json() == {"code": "server_error", "message": "internal server error"}


def test_options_and_head(api, functions):
    response = api.client.options(API + "events", **api.headers(None))
    assert response.status_code == 200
    assert response.json()["parses"] == ["application/json"] and "actions" not in response.json()
    response = api.client.head(API + "runs", **api.headers(None))
    assert response.status_code == 200 and response["Content-Type"] == "application/json"


def test_the_api_ignores_the_projects_rest_framework_settings(api, functions, settings):
    settings.REST_FRAMEWORK = {
        "DEFAULT_AUTHENTICATION_CLASSES": [], "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.AllowAny"],
        "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.BrowsableAPIRenderer"],
        "DEFAULT_PAGINATION_CLASS": "rest_framework.pagination.PageNumberPagination", "PAGE_SIZE": 1,
        "EXCEPTION_HANDLER": "rest_framework.views.exception_handler",
    }
    assert Api(api.client).get("runs")[0] == 401
    status, body = api.get("runs")
    assert status == 200 and set(body) == {"next", "previous", "results"}


# -- the schema -------------------------------------------------------------------------------


@pytest.fixture
def schema(client):
    response = client.get(API + "schema/")
    assert response.status_code == 200
    return json.loads(response.content)


def test_the_schema_is_valid_openapi_3(schema):
    validate(schema)
    assert schema["openapi"].startswith("3.")


def test_the_schema_covers_every_endpoint_and_its_errors(schema):
    operations = {(method.upper(), path.removeprefix(API[:-1])) for path, item in schema["paths"].items() for method in item}
    assert operations == {
        ("POST", "/events"), ("GET", "/events"), ("GET", "/events/{event_id}"), ("POST", "/e/{event_key}"),
        ("GET", "/runs"), ("GET", "/runs/{run_id}"), ("POST", "/runs/{run_id}/cancel"),
        ("POST", "/runs/{run_id}/replay"), ("POST", "/runs/replay"), ("POST", "/runs/cancel"),
        ("GET", "/functions"), ("GET", "/functions/{function_id}"), ("POST", "/functions/{function_id}/pause"),
        ("POST", "/functions/{function_id}/resume"), ("POST", "/functions/{function_id}/invoke"),
    }
    for path, item in schema["paths"].items():
        for method, operation in item.items():
            codes = set(operation["responses"])
            assert {"401", "403"} <= codes, (method, path)
            for code, response in operation["responses"].items():
                if code.startswith(("4", "5")):
                    ref = response["content"]["application/json"]["schema"]["$ref"]
                    assert ref.endswith(("/Error", "/InngestError")), (path, code)
            if "{" in path.replace("{event_key}", ""):
                assert "404" in codes, path
            if method == "post" and "/e/" not in path and operation.get("requestBody"):
                assert {"413", "415"} <= codes, path
    error = schema["components"]["schemas"]["Error"]
    assert set(error["required"]) == {"code", "message"} and "errors" in error["properties"]
    run = schema["components"]["schemas"]["RunDetail"]["properties"]
    assert {"steps", "attempt_history", "output", "error", "waiting_reason"} <= set(run)
    step = schema["components"]["schemas"]["Step"]["properties"]
    assert {"step_id", "kind", "status", "output", "error", "attempts", "attempt_history"} <= set(step)
    assert schema["components"]["securitySchemes"]["bearerAuth"] == {
        "type": "http", "scheme": "bearer", "description": schema["components"]["securitySchemes"]["bearerAuth"]["description"],
    }
    assert "security" not in schema["paths"][API + "e/{event_key}"]["post"]
    send = schema["paths"][API + "events"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert send["oneOf"][0] == {"$ref": "#/components/schemas/EventIn"}


def test_the_schema_in_yaml_and_without_credentials(client):
    response = client.get(API + "schema/", {"format": "yaml"})
    assert response.status_code == 200 and response.content.startswith(b"openapi: 3.")
    response = client.get(API + "schema/", HTTP_ACCEPT="application/vnd.oai.openapi")
    assert response.content.startswith(b"openapi: 3.")


def test_the_schema_works_with_drf_spectacular_installed(client, schema):
    from django.test import modify_settings

    with modify_settings(INSTALLED_APPS={"append": "drf_spectacular"}):
        response = client.get(API + "schema/")
        assert response.status_code == 200 and json.loads(response.content) == schema
        out = io.StringIO()
        call_command("spectacular", "--validate", "--fail-on-warn", stdout=out, stderr=io.StringIO())
        assert API + "runs/{run_id}" in out.getvalue()


def test_the_api_needs_no_installed_apps_entry(api, functions):
    """Neither rest_framework nor drf_spectacular has to be in INSTALLED_APPS."""
    from django.test import modify_settings

    with modify_settings(INSTALLED_APPS={"remove": ["rest_framework", "drf_spectacular"]}):
        assert api.get("runs")[0] == 200
        assert api.post("events", {"name": "api.echo"})[0] == 201
        assert api.client.get(API + "schema/").status_code == 200
        assert api.client.get(API + "docs/").status_code == 200


def test_the_docs_page_lists_every_endpoint_offline(client, schema):
    response = client.get(API + "docs/")
    assert response.status_code == 200 and response["Content-Type"].startswith("text/html")
    html = response.content.decode()
    for path in schema["paths"]:
        assert path in html
    assert "<script" not in html and "https://cdn" not in html and 'src="http' not in html
    assert 'href="#schema-RunDetail"' in html and 'id="schema-RunDetail"' in html
    response = Client(enforce_csrf_checks=True).post(API + "docs/")
    assert response.status_code == 405 and response.json()["code"] == "method_not_allowed"


# -- the ApiKey admin -------------------------------------------------------------------------


def test_admin_creates_a_key_and_shows_it_once(client, make_user):
    admin_user = make_user("root", superuser=True)
    client.force_login(admin_user)
    response = client.post("/admin/django_workflows/apikey/add/", {"name": "ci", "scope": "read"}, follow=True)
    assert response.status_code == 200
    shown = [str(m.message) for m in response.context["messages"]]
    row = ApiKey.objects.get(name="ci")
    [raw] = [word for message in shown for word in message.replace("<", " ").replace(">", " ").split() if word.startswith(row.prefix)]
    assert row.key_hash == hashlib.sha256(raw.encode()).hexdigest() and row.scope == "read"
    assert Api(Client(), raw).get("runs")[0] == 200
    # Never again: not on the list, not on its page; the hash is never shown either.
    for url in ("/admin/django_workflows/apikey/", f"/admin/django_workflows/apikey/{row.pk}/change/"):
        html = client.get(url).content.decode()
        assert raw not in html and row.key_hash not in html and row.prefix in html


def test_admin_lists_and_revokes_keys(client, make_user, functions):
    admin_user = make_user("root", superuser=True)
    client.force_login(admin_user)
    row, raw = create_key("old", "manage")
    create_key("other", "send")
    html = client.get("/admin/django_workflows/apikey/").content.decode()
    for text in ("old", row.prefix, "manage", "active"):
        assert text in html
    response = client.post(
        "/admin/django_workflows/apikey/", {"action": "revoke", "_selected_action": [row.pk]}, follow=True
    )
    assert response.status_code == 200
    row.refresh_from_db()
    assert row.revoked_at is not None
    assert ApiKey.objects.filter(revoked_at__isnull=True).count() == 1
    assert Api(Client(), raw).get("runs")[0] == 401
    assert "revoked" in client.get("/admin/django_workflows/apikey/").content.decode()


def test_admin_key_pages_need_their_permissions(client, make_user):
    client.force_login(make_user("viewer", "view_run"))
    assert client.get("/admin/django_workflows/apikey/").status_code == 403
    assert client.post("/admin/django_workflows/apikey/add/", {"name": "x", "scope": "manage"}).status_code == 403
    assert ApiKey.objects.count() == 0


def test_a_view_that_does_not_say_what_it_needs_is_refused_to_everyone():
    from types import SimpleNamespace

    from django_workflows.api.permissions import ScopedAccess

    staff = SimpleNamespace(auth=None, user=SimpleNamespace(is_authenticated=True, is_staff=True, has_perms=lambda p: True))
    assert ScopedAccess().has_permission(staff, view=object()) is False
