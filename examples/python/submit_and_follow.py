#!/usr/bin/env python3
"""Submit a runlog task from Python by appending a `submitted` event, then
follow the execution to its end.

Speaks only the wire protocol (docs/protocol.md): CloudEvents headers,
a JSON body, and an optimistic-concurrency append that creates the
execution exactly once. Needs nats-py (./scripts/setup.sh puts it in
.tools/python).

    PYTHONPATH=.tools/python python3 examples/python/submit_and_follow.py \
        --url nats://127.0.0.1:4222 --argv echo hello

Exits 0 when the execution succeeded, 1 otherwise; prints every event. It
follows the live feed `<p>.live.ev.<exec>.>`, which the engine publishes with
`--live-events` (`runlog dev` turns it on).

With `--batch FILE` (one JSON task spec a line, as `POST /v1/executions`
takes it) it submits them all in one request to the engine's NATS batch
door instead (`submit_many`), prints one JSON result a line, in order, and
exits 0 when every spec was accepted:

    PYTHONPATH=.tools/python python3 examples/python/submit_and_follow.py \
        --url nats://127.0.0.1:4222 --batch tasks.jsonl
"""

import argparse
import asyncio
import datetime
import json
import hashlib
import sys
import uuid

import nats

TERMINAL = {"succeeded", "cancelled", "timed_out", "dead_lettered", "rejected"}


def headers(execution: str, event_type: str) -> dict:
    return {
        "ce-specversion": "1.0",
        "ce-id": str(uuid.uuid4()),
        "ce-type": f"runlog.execution.{event_type}",
        "ce-source": "/examples/python",
        "ce-time": datetime.datetime.now(datetime.timezone.utc)
        .isoformat(timespec="milliseconds")
        .replace("+00:00", "Z"),
        "ce-subject": execution,
        "ce-attempt": "0",
        "Content-Type": "application/json",
    }


def execution_span_id(traceparent: str, execution: str) -> str:
    """The span id of `execution`'s span under `traceparent` (docs/traces.md):
    the first 8 bytes of SHA-256 over runlog/execution/<trace id>/<parent id>/<execution>."""
    _, trace_id, parent_id, _ = traceparent.split("-")
    digest = hashlib.sha256(f"runlog/execution/{trace_id}/{parent_id}/{execution}".encode())
    return digest.hexdigest()[:16]


async def submit_many(nc, specs, queue="default", prefix="runlog", timeout=30.0):
    """Submits `specs` (dicts, each a body of `POST /v1/executions`) in one
    request to the engine's batch door, `<prefix>.submit-batch.<queue>`, and
    returns one result per spec, in order: `{"id", "status", "existing"}`,
    or `{"error": {"code", "detail", "field"}}` for a spec that was refused
    (the others are submitted all the same). At most 1,000 specs a request;
    a request the engine cannot read raises ValueError with its error.
    """
    reply = await nc.request(
        f"{prefix}.submit-batch.{queue}",
        json.dumps({"executions": list(specs)}).encode(),
        timeout=timeout,
    )
    answer = json.loads(reply.data)
    if "results" not in answer:
        raise ValueError(f"the batch was refused: {answer.get('error')}")
    return answer["results"]


async def batch(args) -> int:
    with open(args.batch) as f:
        specs = [json.loads(line) for line in f if line.strip()]
    nc = await nats.connect(args.url)
    try:
        results = await submit_many(nc, specs, args.queue, args.prefix, args.timeout)
    finally:
        await nc.drain()
    for result in results:
        print(json.dumps(result))
    return 0 if all("id" in r for r in results) else 1


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="nats://127.0.0.1:4222")
    parser.add_argument("--prefix", default="runlog")
    parser.add_argument("--queue", default="default")
    parser.add_argument("--id", default=None, help="execution id (default: a new UUID)")
    parser.add_argument("--timeout", type=float, default=30.0)
    parser.add_argument("--argv", nargs="+", default=["echo", "hello from python"])
    parser.add_argument("--batch", metavar="FILE", help="submit the specs of FILE with submit_many")
    parser.add_argument("--traceparent", help="W3C trace context the execution is part of")
    args = parser.parse_args()
    if args.batch:
        return await batch(args)

    execution = args.id or str(uuid.uuid4())
    p = args.prefix
    nc = await nats.connect(args.url)
    js = nc.jetstream()

    # Follow first (the stream's RePublish of stored events), then submit:
    # nothing can be missed in between.
    done = asyncio.get_running_loop().create_future()

    async def on_event(msg):
        # <p>.live.ev.<exec>.<type>, and for `queued` .<queue>.<priority> after it.
        event_type = msg.subject.split(".")[4]
        h = msg.headers or {}
        content_type = h.get("Content-Type", "application/json")
        # Events come in either mode of the CloudEvents binding. runlog's own
        # components write structured MessagePack; this example reads JSON in
        # both modes and names the others (a msgpack library would read them).
        if content_type == "application/cloudevents+json":
            event = json.loads(msg.data)
            attempt, body = event.get("attempt", 0), json.dumps(event.get("data", {}))
        elif content_type == "application/json":
            attempt = h.get("ce-attempt", "0")
            body = json.dumps(json.loads(msg.data)) if msg.data else ""
        else:
            attempt, body = "?", f"({len(msg.data)} bytes of {content_type})"
        print(f"seq {h.get('Nats-Sequence')} {event_type} attempt {attempt} {body}")
        if event_type in TERMINAL and not done.done():
            done.set_result(event_type)

    await nc.subscribe(f"{p}.live.ev.{execution}.>", cb=on_event)

    spec = {"queue": args.queue, "kind": "shell", "input": {"argv": args.argv}}
    ack = await js.publish(
        f"{p}.ev.{execution}.submitted",
        json.dumps({"spec": spec}).encode(),
        headers={
            **headers(execution, "submitted"),
            "Nats-Msg-Id": f"{execution}:submitted:0",
            # Expected 0 on the execution's filter: create it exactly once.
            "Nats-Expected-Last-Subject-Sequence": "0",
            "Nats-Expected-Last-Subject-Sequence-Subject": f"{p}.ev.{execution}.>",
            **({"ce-traceparent": args.traceparent} if args.traceparent else {}),
        },
    )
    print(f"submitted {execution} at sequence {ack.seq}")
    if args.traceparent:
        print(f"execution span {execution_span_id(args.traceparent, execution)}")
    try:
        status = await asyncio.wait_for(done, args.timeout)
    except asyncio.TimeoutError:
        print(f"{execution} did not end within {args.timeout} s", file=sys.stderr)
        return 1
    finally:
        await nc.drain()
    print(f"execution {execution} ended {status}")
    return 0 if status == "succeeded" else 1


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
