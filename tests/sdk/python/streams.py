"""Runs the published PyPI `iii-sdk` as a worker against a running streamhost.

Env: III_URL (worker socket, ws://127.0.0.1:PORT) and STREAMHOST_CLIENT_URL (client socket).
Driven by tests/sdk_clients.rs; run by hand with
  III_URL=ws://127.0.0.1:49134 STREAMHOST_CLIENT_URL=ws://127.0.0.1:3112 \
    tests/sdk/python/.venv/bin/python tests/sdk/python/streams.py
Exits 0 when every check passed, 1 (after printing what differed) otherwise.
"""

from __future__ import annotations

import faulthandler
import json
import os
import re
import sys
import threading
import time
import traceback
import warnings

os.environ["OTEL_ENABLED"] = "false"
warnings.filterwarnings("ignore")  # IStream, create_stream and register_trigger are deprecated in 0.25

from iii import InitOptions, InvocationError, IStream, register_worker  # noqa: E402
from iii.helpers import create_stream  # noqa: E402
from iii_helpers.stream import StreamDeleteResult, StreamSetResult  # noqa: E402
from websockets.sync.client import connect as ws_connect  # noqa: E402

WORKER_URL = os.environ.get("III_URL")
CLIENT_URL = os.environ.get("STREAMHOST_CLIENT_URL")
if not WORKER_URL or not CLIENT_URL:
    print("FAIL: set III_URL (worker socket) and STREAMHOST_CLIENT_URL (client socket)", file=sys.stderr)
    sys.exit(2)

WAIT_S = 5.0
step = "connect"


def options(name: str) -> InitOptions:
    return InitOptions(
        worker_name=name,
        otel={"enabled": False},
        enable_metrics_reporting=False,
        invocation_timeout_ms=int(WAIT_S * 1000),
    )


def watchdog() -> None:
    time.sleep(25)
    print(f'FAIL: timed out in step "{step}"; the stacks:', file=sys.stderr, flush=True)
    faulthandler.dump_traceback(file=sys.stderr)
    os._exit(3)


threading.Thread(target=watchdog, daemon=True).start()


def log(*a: object) -> None:
    print("[python]", *a, flush=True)


def begin(name: str) -> None:
    global step
    step = name
    log("--", name)


class Fail(AssertionError):
    pass


def eq(actual: object, expected: object, what: str) -> None:
    if actual != expected or type(actual) is not type(expected):
        raise Fail(f"{what}:\n  expected {json.dumps(expected, default=repr)}\n  actual   {json.dumps(actual, default=repr)}")


def check(cond: bool, what: str) -> None:
    if not cond:
        raise Fail(what)


def rejection(fn, what: str) -> InvocationError:
    try:
        r = fn()
    except InvocationError as e:
        return e
    raise Fail(f"{what}: expected an InvocationError, got {r!r}")


class RawClient:
    """A browser-like client on the client socket."""

    def __init__(self, path: str = "/", close_timeout: float = 0.3) -> None:
        # A short close timeout: `close()` blocks until the server answers the Close frame or
        # this runs out. `close_handshake()` checks the server's answer on its own.
        self.ws = ws_connect(CLIENT_URL + path, open_timeout=WAIT_S, close_timeout=close_timeout)

    def next(self, what: str = "frame", timeout: float = WAIT_S) -> dict:
        try:
            return json.loads(self.ws.recv(timeout=timeout))
        except TimeoutError:
            raise Fail(f"no {what} on the raw client within {timeout} s") from None

    def maybe_next(self, timeout: float) -> dict | None:
        try:
            return json.loads(self.ws.recv(timeout=timeout))
        except TimeoutError:
            return None

    def join(self, sub: str, stream: str, group: str, item: str | None = None) -> dict:
        self.ws.send(json.dumps({"type": "join", "data": {"subscriptionId": sub, "streamName": stream, "groupId": group, "id": item}}))
        return self.next(f"answer to the join of {stream}/{group}")

    def close(self) -> None:
        self.ws.close()


def frame(actual: dict, stream: str, group: str, item: str | None, event: dict, what: str) -> None:
    ts = actual.get("timestamp") if isinstance(actual, dict) else None
    check(isinstance(ts, int) and not isinstance(ts, bool), f"{what}: timestamp must be an integer in {actual}")
    check(abs(ts - time.time() * 1000) < 60000, f"{what}: timestamp {ts} is not near now (ms since epoch)")
    # A client frame about a group's history carries its offset and epoch (issue 14); a
    # trigger's payload is the iii frame.
    if "offset" in actual or "epoch" in actual:
        check(isinstance(actual.get("offset"), int) and isinstance(actual.get("epoch"), str), f"{what}: offset and epoch in {actual}")
    rest = {k: v for k, v in actual.items() if k not in ("timestamp", "offset", "epoch")}
    eq(rest, {"type": "stream", "streamName": stream, "groupId": group, "id": item, "event": event}, what)


iii = register_worker(WORKER_URL, options("py-sdk-test-a"))
other = None


def call(function_id: str, payload: object, worker=None) -> object:
    return (worker or iii).trigger({"function_id": function_id, "payload": payload})


def settle(worker=None) -> None:
    """Frames from one worker are handled in order: a reply means every earlier registration is done."""
    call("stream::list_groups", {"stream_name": "__settle__"}, worker)


def builtins() -> None:
    begin("built-in functions")
    client = RawClient()
    frame(client.join("sub-1", "chat", "room-1"), "chat", "room-1", None, {"type": "sync", "data": []}, "sync of an empty group")

    eq(call("stream::set", {"stream_name": "chat", "group_id": "room-1", "item_id": "m1", "data": {"text": "hi"}}),
       {"old_value": None, "new_value": {"text": "hi"}}, "stream::set of a new item")
    frame(client.next("create frame"), "chat", "room-1", "m1", {"type": "create", "data": {"text": "hi"}}, "create frame")

    eq(call("stream::set", {"stream_name": "chat", "group_id": "room-1", "item_id": "m1", "data": {"text": "hi again"}}),
       {"old_value": {"text": "hi"}, "new_value": {"text": "hi again"}}, "stream::set over an item")
    frame(client.next("update frame"), "chat", "room-1", "m1", {"type": "update", "data": {"text": "hi again"}}, "update frame")

    # Insertion order, not key order: zed before alpha.
    call("stream::set", {"stream_name": "chat", "group_id": "room-1", "item_id": "zed", "data": {"text": "z"}})
    call("stream::set", {"stream_name": "chat", "group_id": "room-1", "item_id": "alpha", "data": {"text": "a"}})
    call("stream::set", {"stream_name": "chat", "group_id": "room-2", "item_id": "x", "data": 7})
    frame(client.next("create zed"), "chat", "room-1", "zed", {"type": "create", "data": {"text": "z"}}, "create zed")
    frame(client.next("create alpha"), "chat", "room-1", "alpha", {"type": "create", "data": {"text": "a"}}, "create alpha")

    eq(call("stream::get", {"stream_name": "chat", "group_id": "room-1", "item_id": "m1"}), {"text": "hi again"}, "stream::get")
    eq(call("stream::get", {"stream_name": "chat", "group_id": "room-1", "item_id": "nope"}), None, "stream::get of a missing item gives None")
    eq(call("stream::get", {"stream_name": "nostream", "group_id": "g", "item_id": "i"}), None, "stream::get in a missing stream gives None")
    eq(call("stream::get", {"stream_name": "chat", "group_id": "room-2", "item_id": "x"}), 7, "stream::get of a scalar")

    eq(call("stream::list", {"stream_name": "chat", "group_id": "room-1"}), [{"text": "hi again"}, {"text": "z"}, {"text": "a"}],
       "stream::list is a bare array in insertion order")
    eq(call("stream::list", {"stream_name": "chat", "group_id": "empty"}), [], "stream::list of a missing group")
    eq(sorted(call("stream::list_groups", {"stream_name": "chat"})), ["room-1", "room-2"], "stream::list_groups")
    eq(call("stream::list_groups", {"stream_name": "nostream"}), [], "stream::list_groups of a missing stream")

    eq(call("stream::delete", {"stream_name": "chat", "group_id": "room-1", "item_id": "zed"}), {"old_value": {"text": "z"}}, "stream::delete")
    frame(client.next("delete frame"), "chat", "room-1", "zed", {"type": "delete", "data": {"text": "z"}}, "delete frame")
    eq(call("stream::delete", {"stream_name": "chat", "group_id": "room-1", "item_id": "zed"}), {"old_value": None},
       "stream::delete of a missing item succeeds with old_value null")
    eq(call("stream::list", {"stream_name": "chat", "group_id": "room-1"}), [{"text": "hi again"}, {"text": "a"}], "list after delete")

    upd = call("stream::update", {
        "stream_name": "chat", "group_id": "room-1", "item_id": "counter",
        "ops": [
            {"type": "set", "path": "name", "value": "c"},
            {"type": "increment", "path": "n", "by": 5},
            {"type": "decrement", "path": "n", "by": 2},
            {"type": "merge", "value": {"tags": ["a"], "meta": {"x": 1}}},
            {"type": "append", "path": "tags", "value": "b"},
            {"type": "increment", "path": "name", "by": 1},  # fails: name is a string
            # iii paths: a string is one literal key (dots included); arrays are for merge/append.
            {"type": "merge", "path": ["meta"], "value": {"y": 2}},
            {"type": "set", "path": "meta.x", "value": True},
            {"type": "append", "path": ["meta", "log"], "value": "s"},
            {"type": "remove", "path": "meta.y"},  # the literal key `meta.y`: there is none
        ],
    })
    check(isinstance(upd, dict), f"stream::update result is an object: {upd!r}")
    eq(sorted(upd), ["errors", "new_value", "old_value"], f"stream::update result keys in {upd}")
    eq(upd["old_value"], None, "stream::update of a new item: old_value null")
    eq(upd["new_value"], {"name": "c", "n": 3, "tags": ["a", "b"], "meta.x": True, "meta": {"x": 1, "y": 2, "log": ["s"]}}, "stream::update new_value")
    eq(len(upd["errors"]), 1, f"one failed op in {upd['errors']}")
    eq(upd["errors"][0]["op_index"], 5, "the failed op index")
    eq(upd["errors"][0]["code"], "increment.not_number", "the failed op code")
    check(isinstance(upd["errors"][0]["message"], str), "the failed op message")
    frame(client.next("create frame of update"), "chat", "room-1", "counter", {"type": "create", "data": upd["new_value"]}, "update creates")

    upd2 = call("stream::update", {"stream_name": "chat", "group_id": "room-1", "item_id": "counter", "ops": [{"type": "increment", "path": "n", "by": 10}]})
    eq(upd2, {"old_value": upd["new_value"], "new_value": {**upd["new_value"], "n": 13}}, "stream::update without errors has no errors key")
    frame(client.next("update frame of update"), "chat", "room-1", "counter", {"type": "update", "data": upd2["new_value"]}, "update updates")

    eq(call("stream::send", {"stream_name": "chat", "group_id": "room-1", "type": "typing", "data": {"who": "ann"}}), None, "stream::send gives null")
    frame(client.next("event frame"), "chat", "room-1", None, {"type": "event", "event": {"type": "typing", "data": {"who": "ann"}}}, "event frame")
    eq(call("stream::list", {"stream_name": "chat", "group_id": "room-1"}), [{"text": "hi again"}, {"text": "a"}, upd2["new_value"]], "send stores nothing")

    call("stream::set", {"stream_name": "alerts", "group_id": "g", "item_id": "i", "data": True})
    eq(call("stream::list_all", {}), {"stream": [{"id": "alerts", "groups": ["g"]}, {"id": "chat", "groups": ["room-1", "room-2"]}], "count": 2},
       "stream::list_all")

    stray = client.maybe_next(0.2)
    eq(stray, None, "the room-1 subscriber got a stray frame")
    client.close()


def errors() -> None:
    begin("errors")
    e1 = rejection(lambda: call("no.such.function", {"a": 1}), "an unknown function")
    eq(e1.code, "function_not_found", f"code of an unknown function ({e1})")

    e2 = rejection(lambda: call("stream::get", {"stream_name": "chat", "group_id": "room-1"}), "stream::get without item_id")
    eq(e2.code, "deserialization_error", f"code of a bad payload ({e2})")
    check("item_id" in e2.message, f"the message names the missing field: {e2.message!r}")

    e3 = rejection(lambda: call("stream::set", {"stream_name": "chat", "group_id": "room-1", "data": 1}), "stream::set without item_id")
    eq(e3.code, "deserialization_error", f"code of a bad set payload ({e3})")
    check("item_id" in e3.message, f"the set message names the missing field: {e3.message!r}")


def functions_across_workers() -> None:
    global other
    begin("functions across workers")
    iii.register_function("py.echo", lambda data: {"echoed": data, "by": "a"})

    def fails(_data):
        raise RuntimeError("kaboom from a")

    iii.register_function("py.fails", fails)
    iii.register_function("py.nothing", lambda _data: None)
    settle()

    other = register_worker(WORKER_URL, options("py-sdk-test-b"))
    eq(call("py.echo", {"q": [1, "two"]}, other), {"echoed": {"q": [1, "two"]}, "by": "a"}, "worker b calls a function of worker a")
    eq(call("py.echo", "self"), {"echoed": "self", "by": "a"}, "worker a calls its own function")
    log("(the SDK prints the traceback of py.fails below: it raises on purpose)")
    e = rejection(lambda: call("py.fails", {}, other), "a function that raises")
    check("kaboom from a" in str(e), f"the raiser's message reaches the caller: {e}")
    eq(call("py.nothing", {}, other), None, "a function returning None")

    async def add(data):
        return data["x"] + data["y"]

    other.register_function("py.add", add)
    settle(other)
    eq(call("py.add", {"x": 2, "y": 40}), 42, "worker a calls an async function of worker b")


def triggers() -> None:
    begin("stream trigger")
    fired: list = []
    fired_once = threading.Event()

    def on_watched(payload):
        fired.append(payload)
        fired_once.set()
        return None

    iii.register_function("py.on_watched", on_watched)
    iii.register_trigger({"type": "stream", "function_id": "py.on_watched", "config": {"stream_name": "watched"}})
    settle()
    call("stream::set", {"stream_name": "unwatched", "group_id": "g", "item_id": "i0", "data": 0})
    call("stream::set", {"stream_name": "watched", "group_id": "g", "item_id": "i1", "data": {"v": 1}})
    check(fired_once.wait(WAIT_S), "no call of the stream trigger function")
    time.sleep(0.2)
    eq(len(fired), 1, f"exactly one trigger call (the unwatched stream must not fire): {fired}")
    frame(fired[0], "watched", "g", "i1", {"type": "create", "data": {"v": 1}}, "stream trigger payload")

    begin("stream:join trigger")
    joins: list = []

    def on_join(payload):
        joins.append(payload)
        return {"unauthorized": payload.get("group_id") == "secret"}

    iii.register_function("py.on_join", on_join)
    iii.register_trigger({"type": "stream:join", "function_id": "py.on_join", "config": {}})
    settle()
    client = RawClient()
    frame(client.join("s-secret", "chat", "secret"), "chat", "secret", None, {"type": "unauthorized"}, "a rejected join")
    eq(joins[-1], {"subscription_id": "s-secret", "stream_name": "chat", "group_id": "secret", "id": None, "context": None}, "join trigger payload")
    frame(client.join("s-open", "chat", "room-2"), "chat", "room-2", None, {"type": "sync", "data": [7]}, "an allowed join")
    eq(joins[-1], {"subscription_id": "s-open", "stream_name": "chat", "group_id": "room-2", "id": None, "context": None}, "join trigger payload")
    frame(client.join("s-item", "chat", "room-2", "x"), "chat", "room-2", "x", {"type": "sync", "data": 7}, "an allowed item join")
    call("stream::set", {"stream_name": "chat", "group_id": "secret", "item_id": "s", "data": "hidden"})
    call("stream::set", {"stream_name": "chat", "group_id": "room-2", "item_id": "y", "data": 8})
    frame(client.next("create in room-2"), "chat", "room-2", "y", {"type": "create", "data": 8}, "the allowed group still gets events")
    stray = client.maybe_next(0.2)
    eq(stray, None, "a rejected join still received a frame")
    client.close()


def custom_stream() -> None:
    begin("create_stream")
    groups: dict[str, dict[str, object]] = {"g1": {"pre": {"pre": True}}}  # dicts keep insertion order
    calls: list = []
    lock = threading.Lock()

    def record(op: str, model) -> None:
        with lock:
            calls.append((op, model.model_dump()))

    class MapStream(IStream):
        async def get(self, input):
            record("get", input)
            return groups.get(input.group_id, {}).get(input.item_id)

        async def set(self, input):
            record("set", input)
            old = groups.get(input.group_id, {}).get(input.item_id)
            groups.setdefault(input.group_id, {})[input.item_id] = input.data
            return StreamSetResult(old_value=old, new_value=input.data)

        async def delete(self, input):
            record("delete", input)
            old = groups.get(input.group_id, {}).pop(input.item_id, None)
            return StreamDeleteResult(old_value=old)

        async def list(self, input):
            record("list", input)
            return list(groups.get(input.group_id, {}).values())

        async def list_groups(self, input):
            record("list_groups", input)
            return [g for g, items in groups.items() if items]

        async def update(self, input):
            record("update", input)
            raise RuntimeError("create_stream does not register update; the engine must not call it")

    create_stream(iii, "custom", MapStream())
    settle()

    def taken() -> list:
        with lock:
            out = list(calls)
            calls.clear()
        return out

    client = RawClient()
    frame(client.join("c-1", "custom", "g1"), "custom", "g1", None, {"type": "sync", "data": [{"pre": True}]},
          "the sync of a custom stream comes from its list function")
    eq(taken(), [("list", {"stream_name": "custom", "group_id": "g1"})], "the join called list(custom)")

    item = {"stream_name": "custom", "group_id": "g1", "item_id": "a"}
    eq(call("stream::set", {**item, "data": {"n": 1}}), {"old_value": None, "new_value": {"n": 1}}, "custom set")
    eq(taken(), [("set", {**item, "data": {"n": 1}})], "custom set was called with the payload")
    eq(groups["g1"].get("a"), {"n": 1}, "custom set stored into the worker dict")
    frame(client.next("create frame"), "custom", "g1", "a", {"type": "create", "data": {"n": 1}}, "create frame of a custom set")

    eq(call("stream::get", item), {"n": 1}, "custom get")
    eq(call("stream::get", {**item, "item_id": "none"}), None, "custom get of a missing item")
    eq(call("stream::list", {"stream_name": "custom", "group_id": "g1"}), [{"pre": True}, {"n": 1}], "custom list")
    eq(call("stream::list_groups", {"stream_name": "custom"}), ["g1"], "custom list_groups")
    eq([op for op, _ in taken()], ["get", "get", "list", "list_groups"], "custom get/list/list_groups were called")

    upd = call("stream::update", {**item, "ops": [{"type": "increment", "path": "n", "by": 2}, {"type": "set", "path": "s", "value": "x"}]})
    eq(upd, {"old_value": {"n": 1}, "new_value": {"n": 3, "s": "x"}}, "stream::update on a custom stream")
    ops = taken()
    eq([op for op, _ in ops], ["get", "set"], f"stream::update emulated with get + set: {ops}")
    eq(ops[1][1], {**item, "data": {"n": 3, "s": "x"}}, "the emulated set payload")
    eq(groups["g1"].get("a"), {"n": 3, "s": "x"}, "the update reached the worker dict")
    frame(client.next("update frame"), "custom", "g1", "a", {"type": "update", "data": {"n": 3, "s": "x"}}, "update frame of a custom update")

    eq(call("stream::delete", item), {"old_value": {"n": 3, "s": "x"}}, "custom delete")
    eq(taken(), [("delete", item)], "custom delete was called")
    check("a" not in groups["g1"], "custom delete removed from the worker dict")
    frame(client.next("delete frame"), "custom", "g1", "a", {"type": "delete", "data": {"n": 3, "s": "x"}}, "delete frame of a custom delete")

    everything = call("stream::list_all", {})
    check(all(s["id"] != "custom" for s in everything["stream"]), f"the custom stream's data must not land in the engine's store: {everything}")
    client.close()


def close_handshake() -> None:
    begin("client close handshake")
    client = RawClient(close_timeout=3)
    frame(client.join("bye", "chat", "room-1"), "chat", "room-1", None, {"type": "sync", "data": call("stream::list", {"stream_name": "chat", "group_id": "room-1"})}, "sync before close")
    started = time.monotonic()
    client.close()  # sends Close 1000, waits for the server's Close and then for the TCP close
    took = time.monotonic() - started
    answer = client.ws.protocol.close_rcvd
    check(answer is not None, f"the engine never answered the client's Close frame (RFC 6455 5.5.1); close() gave up after {took:.1f} s")
    check(took < 2, f"the engine answered Close but kept the TCP connection open; close() took {took:.1f} s")
    eq(answer.code, 1000, "the engine echoes the close code")


failed = False
try:
    builtins()
    errors()
    functions_across_workers()
    triggers()
    custom_stream()
    close_handshake()
    log("ALL PASSED")
except Exception as e:  # noqa: BLE001
    failed = True
    print(f'FAIL in step "{step}": {e}', file=sys.stderr)
    if isinstance(e, InvocationError):
        print(f"  error code: {e.code}", file=sys.stderr)
    traceback.print_exc()
finally:
    for worker in (other, iii):
        if worker is not None:
            try:
                worker.shutdown()
            except Exception as e:  # noqa: BLE001
                print(f"shutdown failed: {e}", file=sys.stderr)
sys.stdout.flush()
sys.stderr.flush()
os._exit(1 if failed else 0)
