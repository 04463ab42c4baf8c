"""ClientApp mods: a time budget per message, and Flower's client-side DP clipping when asked for.

A handler that overruns the round's time budget (a slow device, a hung data read) is abandoned: the
node answers with an error reply at once and, in simulation, the worker that ran it is free for the
next message instead of starving later rounds.

The budget is measured on this node's monotonic clock from the moment the message reached the mod,
never against the server's ``metadata.created_at``: edge boxes without a real-time clock often boot
with a wrong wall time, and a box running ahead of the server by more than the budget would refuse
every message. No created_at-based early refusal is kept, because no clock skew bound can be
trusted on such boxes; the cost is small: a message that waited in a SuperNode queue past the
server's round is at worst run once more and abandoned at its own budget (the server has already
moved on and drops the late reply).

Both mods find the run's config by its record key (`RUN_CONFIG`), never by counting ConfigRecords: the
heaviest messages (an evaluation with the adaptive-kappa probe, ``query.kappa_probe``, the generator
check) carry a second one, the probe's, and must be bounded like the rest.
"""

from __future__ import annotations

import threading
import time

from flwr.app import Context, Message, MessageType
from flwr.app.error import Error
from flwr.clientapp.mod import adaptiveclipping_mod, fixedclipping_mod
from flwr.common.constant import ErrorCode

from genfl_protocol.contract import ADAPTIVE_CLIPPING, CLIPPING_NORM, TIME_BUDGET
from genfl_torch.memory import trim_heap

# The key of the run's ConfigRecord in every message the server sends (Flower's ``configrecord_key``,
# which the ServerApp leaves at its default); the ClientApp's handlers read it under the same key.
RUN_CONFIG = "config"


def _config(msg: Message) -> dict:
    """The run's config of ``msg`` (``{}`` if it has none), whatever other ConfigRecords it carries."""
    record = msg.content.config_records.get(RUN_CONFIG)
    return dict(record) if record is not None else {}


def _error(msg: Message, reason: str) -> Message:
    return Message(Error(code=ErrorCode.CLIENT_APP_RAISED_EXCEPTION, reason=reason), reply_to=msg)


def time_budget_mod(msg: Message, context: Context, call_next) -> Message:
    """Run the handler for at most the time budget, counted from arrival on this node's own clock
    (immune to wall-clock skew); past it, reply with an error and move on."""
    arrived = time.monotonic()
    budget = _config(msg).get(TIME_BUDGET)
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
    worker.join(timeout=max(0.0, arrived + budget - time.monotonic()))
    if worker.is_alive():
        return _error(msg, f"gave up at the deadline (time budget {budget}s); the handler was abandoned")
    if "error" in outcome:
        raise outcome["error"]
    return outcome["reply"]


def dp_clipping_mod(msg: Message, context: Context, call_next) -> Message:
    """Flower's client-side clipping mods, applied only to training messages that carry a clipping norm
    (a bare clipping mod rejects every other message, e.g. the histogram query; and the server's
    queries that reuse the training config, such as the BatchNorm query, carry the norm too)."""
    config = _config(msg)
    if msg.metadata.message_type.split(".", 1)[0] != MessageType.TRAIN or CLIPPING_NORM not in config:
        return call_next(msg, context)
    mod = adaptiveclipping_mod if config.get(ADAPTIVE_CLIPPING) else fixedclipping_mod
    return mod(msg, context, call_next)


def release_memory_mod(msg: Message, context: Context, call_next) -> Message:
    """After each message, return the heap its model copies used to the OS (genfl_torch/memory.py): a
    simulation worker serves message after message, and its freed memory would otherwise pile up."""
    try:
        return call_next(msg, context)
    finally:
        trim_heap()  # no gc.collect(): it takes 0.5 s in a worker that imported the data libraries
