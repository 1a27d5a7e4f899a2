#!/usr/bin/env python3
"""An AI website builder's pipeline reporting progress through Switchboard.

The backend of seed note 001: a generation pipeline runs its agents (planner,
frontend, image, testing) and tells everyone watching the project how far it
got, instead of having browsers poll every two seconds. Each step is one
``POST /api/v1/publish`` into the room ``project:<id>`` (spec/10-server-api.md),
with the server API key, so the pipeline needs no WebSocket of its own.

Every step carries an idempotency key derived from the project, the run and the
step, so a retry after a timeout or a 5xx (the first attempt may have been
stored) is stored and delivered once: the retry gets the first attempt's
offset. Retries are bounded, with exponential backoff and jitter. Standard
library only (urllib).

Run it against a development server::

    cargo run -q -- serve &                       # 127.0.0.1:8000, development key
    python3 examples/pipeline_progress.py --project 42

``SWITCHBOARD_API_URL`` (default ``http://127.0.0.1:8000``) and
``SWITCHBOARD_API_KEY`` (default: the development server's public key
``switchboard-development-api-key``; set a key from ``[api] keys`` for any real
server) say where and how to call.

Watch it live, in another terminal, with a token that may read the room::

    export SWITCHBOARD_TOKEN=$(cargo run -q -- token --user viewer --rooms 'project:*')
    cargo run -q -- sub project:42

Or in the browser. This script mints nothing for the browser: the page gets its
own short-lived credential from the app's backend after login (a JWT, or a
single-use ticket from ``POST /api/v1/tickets``), never the API key::

    const ws = new WebSocket("ws://127.0.0.1:8000/connection/websocket",
                             "switchboard.v1.json");
    const send = (frame) => ws.send(JSON.stringify(frame) + "\\n");
    ws.onopen = () => {
      send({id: 1, connect: {token}});            // or {ticket}
      send({id: 2, subscribe: {room: "project:42"}});
    };
    ws.onmessage = (event) => {
      for (const line of event.data.split("\\n")) {  // one frame per line
        if (!line) continue;
        const frame = JSON.parse(line);
        if (frame.heartbeat) send({pong: {}});
        if (frame.publication) {                   // {room, offset, data, ...}
          const {agent, progress, message} = frame.publication.data;
          console.log(`${progress}% ${agent}: ${message}`);
        }
      }
    };
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
import urllib.error
import urllib.request
import uuid

DEFAULT_URL = "http://127.0.0.1:8000"
# Accepted only by a server running with the public development secret, which
# only listens on loopback (src/config.rs, DEVELOPMENT_API_KEY).
DEVELOPMENT_API_KEY = "switchboard-development-api-key"

# (agent, progress %, what the viewers are told)
STEPS = [
    ("planner", 10, "Planned the site: 5 pages, 12 components"),
    ("frontend", 40, "Generated the pages and components"),
    ("image", 60, "Generated the hero and gallery images"),
    ("testing", 80, "Checked links, layout and accessibility"),
    ("complete", 100, "Your website is ready"),
]

MAX_ATTEMPTS = 6
FIRST_BACKOFF = 0.25  # seconds; doubles per attempt
MAX_BACKOFF = 4.0
REQUEST_TIMEOUT = 10.0


class ApiError(Exception):
    """A call the server refused, or that kept failing."""

    def __init__(self, status: int | None, body: dict, temporary: bool):
        self.status = status
        self.body = body
        self.temporary = temporary
        if status is None:
            super().__init__(f"no reply: {body.get('message')}")
        else:
            super().__init__(f"HTTP {status}: {body.get('message', body)} (code {body.get('code')})")


def call(base_url: str, api_key: str, method: str, request: dict) -> dict:
    """One attempt at ``POST /api/v1/<method>`` with a JSON body."""
    http_request = urllib.request.Request(
        f"{base_url.rstrip('/')}/api/v1/{method}",
        data=json.dumps(request, separators=(",", ":")).encode(),
        method="POST",
        headers={
            "Content-Type": "application/json",
            "Authorization": f"apikey {api_key}",
        },
    )
    try:
        with urllib.request.urlopen(http_request, timeout=REQUEST_TIMEOUT) as reply:
            return json.load(reply)
    except urllib.error.HTTPError as err:
        try:
            body = json.load(err)
        except ValueError:
            body = {"message": err.reason}
        # 5xx, 429 and errors the server marks temporary may succeed later.
        temporary = err.code >= 500 or err.code == 429 or bool(body.get("temporary"))
        raise ApiError(err.code, body, temporary) from err
    except (urllib.error.URLError, OSError) as err:  # refused, reset, timed out
        raise ApiError(None, {"message": str(err)}, True) from err


def call_with_retries(base_url: str, api_key: str, method: str, request: dict) -> dict:
    """``call``, retried with backoff while the failure is temporary.

    Safe for ``publish`` only because the request carries an idempotency key:
    an attempt that timed out may have been stored, and the retry then gets
    its result instead of publishing twice.
    """
    for attempt in range(1, MAX_ATTEMPTS + 1):
        try:
            return call(base_url, api_key, method, request)
        except ApiError as err:
            if not err.temporary or attempt == MAX_ATTEMPTS:
                raise
            delay = min(MAX_BACKOFF, FIRST_BACKOFF * 2 ** (attempt - 1))
            delay *= random.uniform(0.5, 1.0)  # jitter: retries do not stampede
            print(f"  attempt {attempt} failed ({err}); retrying in {delay:.2f}s",
                  file=sys.stderr)
            time.sleep(delay)
    raise AssertionError("unreachable")


def publish_step(base_url: str, api_key: str, project: str, run: str,
                 agent: str, progress: int, message: str) -> dict:
    """Publishes one progress update; returns the ``PublishResult``."""
    room = f"project:{project}"
    final = progress >= 100
    request = {
        "room": room,
        # Any JSON value; subscribers receive it as is.
        "data": {
            "type": "completion" if final else "agent_update",
            "project": project,
            "run": run,
            "agent": agent,
            "status": "completed",
            "progress": progress,
            "message": message,
        },
        "tags": {"kind": "completion" if final else "progress"},
        # Stable across retries of this step, unique per run and step.
        "idempotencyKey": f"pipeline:{project}:{run}:{agent}",
    }
    return call_with_retries(base_url, api_key, "publish", request)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--project", default="42", help="project id (room project:<id>)")
    parser.add_argument("--run", default=None,
                        help="run id; reuse one to replay a run without duplicates "
                             "(default: a new one)")
    parser.add_argument("--delay", type=float, default=1.0,
                        help="seconds each agent 'works' (default 1)")
    args = parser.parse_args()

    base_url = os.environ.get("SWITCHBOARD_API_URL", DEFAULT_URL)
    api_key = os.environ.get("SWITCHBOARD_API_KEY", DEVELOPMENT_API_KEY)
    run = args.run or uuid.uuid4().hex[:12]
    print(f"pipeline run {run} for project:{args.project} via {base_url}")

    for agent, progress, message in STEPS:
        time.sleep(args.delay)  # the agent's work
        try:
            result = publish_step(base_url, api_key, args.project, run, agent, progress, message)
        except ApiError as err:
            print(f"error: publishing {agent} ({progress}%): {err}", file=sys.stderr)
            return 1
        # uint64 travels as a decimal string; absent (0) when the room keeps no history.
        offset = int(result.get("offset", "0"))
        print(f"{progress:3d}% {agent:<9} offset {offset} epoch {result.get('epoch', '')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
