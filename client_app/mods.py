"""ClientApp mods: a time budget per message, and Flower's client-side DP clipping when asked for.

A handler that overruns the round's time budget (a slow device, a hung data read) is abandoned: the
node answers with an error reply at once, so the server stops waiting for it and, in simulation,
the worker that ran it is free for the next message instead of starving later rounds.
"""

from __future__ import annotations

import threading

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


def time_budget_mod(msg: Message, context: Context, call_next) -> Message:
    """Run the handler with the server's time budget; past it, reply with an error and move on."""
    budget = _config(msg).get(TIME_BUDGET_KEY)
    if not isinstance(budget, (int, float)) or isinstance(budget, bool) or budget <= 0:
        return call_next(msg, context)
    outcome: dict = {}

    def run() -> None:
        try:
            outcome["reply"] = call_next(msg, context)
        except BaseException as err:  # reported below, like Flower reports a raising handler
            outcome["error"] = err

    worker = threading.Thread(target=run, name=f"genfl-{msg.metadata.message_type}", daemon=True)
    worker.start()
    worker.join(timeout=float(budget))
    if worker.is_alive():
        return Message(Error(code=ErrorCode.CLIENT_APP_RAISED_EXCEPTION,
                             reason=f"gave up after the round's time budget of {budget}s"), reply_to=msg)
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
