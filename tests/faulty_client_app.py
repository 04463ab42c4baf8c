"""A misbehaving ClientApp for reliability tests through real simulations.

It serves the honest handlers of client_app/app.py and then applies the fault that faults.json
(beside this file, shipped in the FAB) names for its partition:
  nan        training returns NaN weights          shape     a wrong-shaped array
  raise      training raises                       inflate   num-examples 10^12 and weights x 1000
  scale      weights x 1000, honest num-examples   histogram a histogram of 10^15 class-0 images
  sleep      training sleeps for an hour first
  stall2     honest in round 1, sleeps for an hour from round 2 (a run that stops after round 1, for sure)
and for evaluation (combined with a training fault by "+", e.g. "nan+eval_records"):
  eval_records  two MetricRecords           eval_nan      a NaN loss
  eval_inflate  num-examples 10^12
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
from flwr.app import Array, ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from client_app.app import evaluate_locally, report_label_histogram, train_locally
from client_app.mods import time_budget_mod

FAULTS = {int(k): v for k, v in json.loads((Path(__file__).with_name("faults.json")).read_text()).items()}

app = ClientApp(mods=[time_budget_mod])


def _faults(context: Context) -> set[str]:
    return set(FAULTS.get(int(context.node_config["partition-id"]), "").split("+")) - {""}


def _fault(context: Context) -> str | None:
    """The training (or histogram) fault of this node, if any."""
    return next((f for f in _faults(context) if not f.startswith("eval_")), None)


@app.query("label_histogram")
def histogram(msg: Message, context: Context) -> Message:
    reply = report_label_histogram(msg, context)
    if _fault(context) == "histogram":
        metrics = reply.content["histogram"]
        metrics["label-histogram"] = [10**15] + [0] * (len(metrics["label-histogram"]) - 1)
    return reply


@app.train()
def train(msg: Message, context: Context) -> Message:
    fault = _fault(context)
    if fault == "raise":
        raise RuntimeError("injected fault: this client always fails")
    if fault == "sleep" or (fault == "stall2" and msg.content["config"]["server-round"] >= 2):
        time.sleep(3600)
    reply = train_locally(msg, context)
    if fault in (None, "histogram", "sleep", "stall2"):
        return reply
    arrays = reply.content["arrays"]
    state = dict(zip(arrays.keys(), arrays.to_numpy_ndarrays()))
    name = next(k for k, v in state.items() if v.dtype == np.float32 and v.ndim > 1)
    if fault == "nan":
        state[name] = np.full_like(state[name], np.nan)
    elif fault == "shape":
        state[name] = state[name][:1]
    elif fault in ("inflate", "scale"):
        state = {k: (v * 1000).astype(v.dtype) if v.dtype == np.float32 else v for k, v in state.items()}
    metrics = MetricRecord(dict(reply.content["metrics"]))
    if fault == "inflate":
        metrics["num-examples"] = 10**12
    return Message(RecordDict({"arrays": ArrayRecord({k: Array(v) for k, v in state.items()}), "metrics": metrics}),
                   reply_to=msg)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    reply = evaluate_locally(msg, context)
    faults = _faults(context)
    metrics = MetricRecord(dict(reply.content["metrics"]))
    if "eval_nan" in faults:
        metrics["eval-loss"] = float("nan")
    if "eval_inflate" in faults:
        metrics["num-examples"] = 10**12
    records = {"metrics": metrics}
    if "eval_records" in faults:
        records["more-metrics"] = MetricRecord(dict(metrics))
    return Message(RecordDict(records), reply_to=msg)
