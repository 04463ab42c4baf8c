"""The real ClientApp, plus a record of which Ray node and process handled each message (tests only).

tests/test_ray_cluster.py runs the app with this ClientApp on a Ray cluster it started; every message
leaves one JSON file in <the run's output.dir>/ray-nodes/ (Ray's workers do not inherit the environment
of `ray start`, so the place comes with the run's config).
"""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path

import ray
from flwr.app import Context, Message
from flwr.clientapp import ClientApp

from client_app.app import app as real_app
from server_app.config import overrides_from_run_config


def _records_dir(context: Context) -> Path:
    value = next(o.split("=", 1)[1] for o in overrides_from_run_config(context.run_config) if o.startswith("output.dir="))
    folder = Path(value.strip("'\"")) / "ray-nodes"
    folder.mkdir(exist_ok=True)
    return folder


class NodeRecordingClientApp(ClientApp):
    def __call__(self, message: Message, context: Context) -> Message:
        reply = real_app(message, context)
        record = {"node": ray.get_runtime_context().get_node_id(), "pid": os.getpid(),
                  "type": message.metadata.message_type, "error": reply.has_error()}
        (_records_dir(context) / f"{uuid.uuid4().hex}.json").write_text(json.dumps(record))
        return reply


app = NodeRecordingClientApp()
