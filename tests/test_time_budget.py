"""The time budget mod through a real ClientApp and real Messages: the node's wall clock (often wrong
on edge boxes without a real-time clock) must neither refuse a message nor stretch its budget."""

import threading
import time

import pytest
from flwr.app import ConfigRecord, Context, Message, Metadata, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from client_app.mods import time_budget_mod

HOUR = 3600.0


def _app(handler):
    app = ClientApp(mods=[time_budget_mod])
    app.query("ping")(handler)
    return app


def _message(budget, created_at):
    metadata = Metadata(run_id=1, message_id="m-ping", src_node_id=0, dst_node_id=7, reply_to_message_id="",
                        group_id="1", created_at=created_at, ttl=HOUR, message_type="query.ping")
    return Message(metadata=metadata, content=RecordDict({"config": ConfigRecord({"time-budget": budget})}))


def _context():
    return Context(run_id=1, node_id=7, node_config={}, state=RecordDict(), run_config={})


def _call(app, msg, guard=60.0):
    """The app's reply, or fail after ``guard`` seconds (a budget stretched by skew would hang)."""
    result = {}
    caller = threading.Thread(target=lambda: result.setdefault("reply", app(msg, _context())), daemon=True)
    caller.start()
    caller.join(timeout=guard)
    assert not caller.is_alive(), f"no reply within {guard}s: the time budget was not enforced"
    return result["reply"]


# Server stamps vs the node's clock: the box runs an hour (or a year) ahead of / behind the server.
SKEWS = [-HOUR, HOUR, -365 * 24 * HOUR, 365 * 24 * HOUR]


@pytest.mark.parametrize("skew", SKEWS)
def test_a_message_stamped_by_a_skewed_server_clock_is_still_handled(skew):
    calls = []

    def ping(msg, context):
        calls.append(1)
        return Message(RecordDict({"pong": MetricRecord({"ok": 1})}), reply_to=msg)

    reply = _call(_app(ping), _message(budget=30.0, created_at=time.time() + skew))
    assert not reply.has_error(), reply.error.reason
    assert reply.content["pong"]["ok"] == 1
    assert len(calls) == 1


def test_a_box_clock_an_hour_ahead_still_handles_messages(monkeypatch):
    created = time.time()  # the server's stamp; then the box's wall clock jumps an hour ahead
    real_time = time.time
    monkeypatch.setattr(time, "time", lambda: real_time() + HOUR)

    def ping(msg, context):
        return Message(RecordDict({"pong": MetricRecord({"ok": 1})}), reply_to=msg)

    reply = _call(_app(ping), _message(budget=30.0, created_at=created))
    assert not reply.has_error(), reply.error.reason
    assert reply.content["pong"]["ok"] == 1


@pytest.mark.parametrize("skew", [0.0, -HOUR, HOUR])
def test_a_handler_that_overruns_the_budget_is_abandoned_with_an_error_reply(skew):
    release = threading.Event()
    started = threading.Event()

    def hang(msg, context):
        started.set()
        release.wait(timeout=120)  # released by the test; never replies within the budget
        return Message(RecordDict({"pong": MetricRecord({"ok": 1})}), reply_to=msg)

    try:
        reply = _call(_app(hang), _message(budget=0.5, created_at=time.time() + skew))
    finally:
        release.set()
    assert started.is_set()  # it ran, and was then abandoned
    assert reply.has_error()
    assert "gave up" in reply.error.reason
