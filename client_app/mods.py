"""ClientApp mods: a time budget per message, and Flower's client-side DP clipping when asked for.

A handler that overruns the round's deadline (a slow device, a hung data read) is abandoned: the
node answers with an error reply at once and, in simulation, the worker that ran it is free for the
next message instead of starving later rounds. The deadline is the message's creation time plus the
server's time budget, so a message that waited in a queue past it is refused without any work.
"""

from __future__ import annotations

import threading
import time

from flwr.app import Context, Message
from flwr.app.error import Error
from flwr.clientapp.mod import adaptiveclipping_mod, fixedclipping_mod
from flwr.common.constant import ErrorCode

TIME_BUDGET_KEY = "time-budget"  # seconds; sent by the server in every ConfigRecord
CLIPPING_NORM_KEY = "clipping_norm"  # what Flower's DifferentialPrivacyClientSide* wrappers send
ADAPTIVE_KEY = "genfl-adaptive-clipping"  # set by the server when it runs the adaptive wrapper


def _config(msg: Message) -> dict:
    records = msg.content.config_records
    return dict(next(iter(records.values()))) if len(records) == 1 else {}


def _error(msg: Message, reason: str) -> Message:
    return Message(Error(code=ErrorCode.CLIENT_APP_RAISED_EXCEPTION, reason=reason), reply_to=msg)


def time_budget_mod(msg: Message, context: Context, call_next) -> Message:
    """Run the handler until the message's deadline; past it, reply with an error and move on."""
    budget = _config(msg).get(TIME_BUDGET_KEY)
    if not isinstance(budget, (int, float)) or isinstance(budget, bool) or budget <= 0:
        return call_next(msg, context)
    created = msg.metadata.created_at
    remaining = (created + budget - time.time()) if created else float(budget)
    if remaining <= 0:
        return _error(msg, f"arrived {-remaining:.1f}s after its deadline (time budget {budget}s); skipped")
    outcome: dict = {}

    def run() -> None:
        try:
            outcome["reply"] = call_next(msg, context)
        except BaseException as err:  # reported below, like Flower reports a raising handler
            outcome["error"] = err

    worker = threading.Thread(target=run, name=f"genfl-{msg.metadata.message_type}", daemon=True)
    worker.start()
    worker.join(timeout=remaining)
    if worker.is_alive():
        return _error(msg, f"gave up at the deadline (time budget {budget}s); the handler was abandoned")
    if "error" in outcome:
        raise outcome["error"]
    return outcome["reply"]


def dp_clipping_mod(msg: Message, context: Context, call_next) -> Message:
    """Flower's client-side clipping mods, applied only to messages that carry a clipping norm
    (a bare clipping mod rejects every other message, e.g. the histogram query)."""
    config = _config(msg)
    if CLIPPING_NORM_KEY not in config:
        return call_next(msg, context)
    mod = adaptiveclipping_mod if config.get(ADAPTIVE_KEY) else fixedclipping_mod
    return mod(msg, context, call_next)
