"""Runs the published PyPI `iii-sdk` against a streamhost with two tenants, `alpha` and `beta`.

Usage: tenants.py isolation|wrong-key|wrong-namespace
Env: III_URL (worker socket), STREAMHOST_CLIENT_URL (client socket), III_TOKEN (the key the
SDK sends as `Authorization: Bearer`), III_NAMESPACE (the namespace it declares),
STREAMHOST_KEY_B (beta's worker key), STREAMHOST_TOKEN_A and STREAMHOST_TOKEN_B (client tokens).
Driven by tests/sdk_tenants.rs.

- isolation: worker A is alpha's by III_TOKEN, with III_NAMESPACE=alpha; worker B is beta's
  by the `headers` option, with the `namespace` option `beta`. iii-sdk 0.25 names that
  namespace on every call and trigger, so the engine must accept a namespace that matches.
- wrong-key: III_TOKEN is a key of no tenant; the SDK must fail to connect (HTTP 401).
- wrong-namespace: III_TOKEN is alpha's key and III_NAMESPACE is `beta`; the engine answers
  the worker metadata with `registrationrejected`, which the SDK takes as fatal.
Exits 0 when every check passed, 1 (after printing what differed) otherwise.
"""

from __future__ import annotations

import faulthandler
import json
import logging
import os
import sys
import threading
import time
import traceback
import warnings

os.environ["OTEL_ENABLED"] = "false"
warnings.filterwarnings("ignore")  # IStream, create_stream and register_trigger are deprecated in 0.25

from iii import InitOptions, InvocationError, IStream, RegistrationRejectedError, register_worker  # noqa: E402
from iii.helpers import create_stream  # noqa: E402
from iii.iii import III  # noqa: E402
from iii_helpers.observability.reconnection import ReconnectionConfig  # noqa: E402
from iii_helpers.stream import StreamDeleteResult, StreamSetResult  # noqa: E402
from websockets.sync.client import connect as ws_connect  # noqa: E402


def env(name: str) -> str:
    value = os.environ.get(name)
    if not value:
        print(f"FAIL: set {name}", file=sys.stderr)
        sys.exit(2)
    return value


WORKER_URL = env("III_URL")
CLIENT_URL = env("STREAMHOST_CLIENT_URL")
MODE = sys.argv[1] if len(sys.argv) > 1 else ""
WAIT_S = 5.0
step = "connect"


def watchdog() -> None:
    time.sleep(25)
    print(f'FAIL: timed out in step "{step}"; the stacks:', file=sys.stderr, flush=True)
    faulthandler.dump_traceback(file=sys.stderr)
    os._exit(3)


threading.Thread(target=watchdog, daemon=True).start()


class Captured(logging.Handler):
    """Keeps what the SDK logs, to check what it was told."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


captured = Captured()
logging.getLogger("iii").addHandler(captured)
logging.getLogger("iii").setLevel(logging.DEBUG)


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


def wait_for(cond, what: str, timeout: float = WAIT_S) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise Fail(f"no {what} within {timeout} s")
        time.sleep(0.02)


class RawClient:
    """A browser-like client on the client socket, with a tenant's token as a header."""

    def __init__(self, token: str) -> None:
        self.ws = ws_connect(CLIENT_URL + "/", open_timeout=WAIT_S, close_timeout=0.3,
                             additional_headers={"Authorization": f"Bearer {token}"})

    def next(self, what: str = "frame", timeout: float = WAIT_S) -> dict:
        try:
            return json.loads(self.ws.recv(timeout=timeout))
        except TimeoutError:
            raise Fail(f"no {what} on the raw client within {timeout} s") from None

    def no_stray(self, who: str) -> None:
        try:
            stray = json.loads(self.ws.recv(timeout=0.2))
        except TimeoutError:
            return
        raise Fail(f"{who} got a frame that was not for it: {stray}")

    def join(self, sub: str, stream: str, group: str) -> dict:
        self.ws.send(json.dumps({"type": "join", "data": {"subscriptionId": sub, "streamName": stream, "groupId": group, "id": None}}))
        return self.next(f"answer to the join of {stream}/{group}")

    def close(self) -> None:
        self.ws.close()


def bare(frame: dict) -> dict:
    return {k: v for k, v in frame.items() if k not in ("timestamp", "offset", "epoch")}


def event(stream: str, group: str, item: str | None, ev: dict) -> dict:
    return {"type": "stream", "streamName": stream, "groupId": group, "id": item, "event": ev}


workers: list = []


def worker(name: str, **extra) -> object:
    w = register_worker(WORKER_URL, InitOptions(worker_name=name, otel={"enabled": False}, enable_metrics_reporting=False,
                                                invocation_timeout_ms=int(WAIT_S * 1000), **extra))
    workers.append(w)
    return w


def call(w, function_id: str, payload: object) -> object:
    return w.trigger({"function_id": function_id, "payload": payload})


def settle(w) -> None:
    call(w, "stream::list_groups", {"stream_name": "__settle__"})


def isolation() -> None:
    a = worker("py-alpha")  # III_TOKEN and III_NAMESPACE from the environment
    b = worker("py-beta", headers={"Authorization": f"Bearer {env('STREAMHOST_KEY_B')}"}, namespace="beta")
    settle(a)
    settle(b)

    begin("stream functions, the same names in both tenants")
    ca, cb = RawClient(env("STREAMHOST_TOKEN_A")), RawClient(env("STREAMHOST_TOKEN_B"))
    eq(bare(ca.join("s", "chat", "room")), event("chat", "room", None, {"type": "sync", "data": []}), "alpha sync")
    eq(bare(cb.join("s", "chat", "room")), event("chat", "room", None, {"type": "sync", "data": []}), "beta sync")
    m1 = {"stream_name": "chat", "group_id": "room", "item_id": "m1"}
    eq(call(a, "stream::set", {**m1, "data": {"by": "alpha", "n": 1}}), {"old_value": None, "new_value": {"by": "alpha", "n": 1}}, "alpha set")
    eq(call(b, "stream::set", {**m1, "data": {"by": "beta", "n": 1}}), {"old_value": None, "new_value": {"by": "beta", "n": 1}},
       "beta's set of the same item finds nothing of alpha's")
    eq(bare(ca.next("alpha create")), event("chat", "room", "m1", {"type": "create", "data": {"by": "alpha", "n": 1}}), "alpha create frame")
    eq(bare(cb.next("beta create")), event("chat", "room", "m1", {"type": "create", "data": {"by": "beta", "n": 1}}), "beta create frame")
    eq(call(a, "stream::get", m1), {"by": "alpha", "n": 1}, "alpha reads its own")
    eq(call(b, "stream::get", m1), {"by": "beta", "n": 1}, "beta reads its own")

    call(a, "stream::set", {**m1, "item_id": "m2", "data": "alpha only"})
    call(a, "stream::set", {"stream_name": "chat", "group_id": "alpha-room", "item_id": "x", "data": 1})
    eq(bare(ca.next("alpha m2")), event("chat", "room", "m2", {"type": "create", "data": "alpha only"}), "alpha m2 frame")
    eq(call(a, "stream::list", {"stream_name": "chat", "group_id": "room"}), [{"by": "alpha", "n": 1}, "alpha only"], "alpha list")
    eq(call(b, "stream::list", {"stream_name": "chat", "group_id": "room"}), [{"by": "beta", "n": 1}], "beta list")
    eq(sorted(call(a, "stream::list_groups", {"stream_name": "chat"})), ["alpha-room", "room"], "alpha groups")
    eq(call(b, "stream::list_groups", {"stream_name": "chat"}), ["room"], "beta groups")
    eq(call(b, "stream::get", {"stream_name": "chat", "group_id": "alpha-room", "item_id": "x"}), None, "beta cannot read alpha's group")

    def groups_of(everything: dict) -> list:
        return [[s["id"], sorted(s["groups"])] for s in everything["stream"]]

    eq(groups_of(call(a, "stream::list_all", {})), [["chat", ["alpha-room", "room"]]], "alpha list_all")
    eq(groups_of(call(b, "stream::list_all", {})), [["chat", ["room"]]], "beta list_all")

    def inc(by: int) -> dict:
        return {**m1, "ops": [{"type": "increment", "path": "n", "by": by}]}

    eq(call(a, "stream::update", inc(5)), {"old_value": {"by": "alpha", "n": 1}, "new_value": {"by": "alpha", "n": 6}}, "alpha update")
    eq(call(b, "stream::update", inc(100)), {"old_value": {"by": "beta", "n": 1}, "new_value": {"by": "beta", "n": 101}}, "beta update")
    eq(bare(ca.next("alpha update")), event("chat", "room", "m1", {"type": "update", "data": {"by": "alpha", "n": 6}}), "alpha update frame")
    eq(bare(cb.next("beta update")), event("chat", "room", "m1", {"type": "update", "data": {"by": "beta", "n": 101}}), "beta update frame")
    eq(call(a, "stream::delete", m1), {"old_value": {"by": "alpha", "n": 6}}, "alpha delete")
    eq(bare(ca.next("alpha delete")), event("chat", "room", "m1", {"type": "delete", "data": {"by": "alpha", "n": 6}}), "alpha delete frame")
    eq(call(b, "stream::get", m1), {"by": "beta", "n": 101}, "alpha's delete leaves beta's item")
    ca.no_stray("alpha's client")
    cb.no_stray("beta's client")

    begin("stream trigger, the same function id in both tenants")
    fired: dict[str, list] = {"alpha": [], "beta": []}

    def recorder(seen: list):
        def on_chat(payload):
            seen.append(payload)
            return None

        return on_chat

    for w, who in ((a, "alpha"), (b, "beta")):
        w.register_function("app.on_chat", recorder(fired[who]))
        w.register_trigger({"type": "stream", "function_id": "app.on_chat", "config": {"stream_name": "chat-watched"}})
        settle(w)
    watched = {"stream_name": "chat-watched", "group_id": "g", "item_id": "i"}
    call(a, "stream::set", {**watched, "data": {"v": "alpha"}})
    wait_for(lambda: len(fired["alpha"]) == 1, "call of alpha's trigger")
    call(b, "stream::set", {**watched, "data": {"v": "beta"}})
    wait_for(lambda: len(fired["beta"]) == 1, "call of beta's trigger")
    time.sleep(0.2)
    eq([bare(p) for p in fired["alpha"]], [event("chat-watched", "g", "i", {"type": "create", "data": {"v": "alpha"}})], "alpha's trigger saw alpha's write only")
    eq([bare(p) for p in fired["beta"]], [event("chat-watched", "g", "i", {"type": "create", "data": {"v": "beta"}})], "beta's trigger saw beta's write only")

    begin("create_stream, the same stream name in both tenants")
    class DictStream(IStream):
        """One group, `g`, kept in a dict of the worker's own."""

        def __init__(self, items: dict) -> None:
            self.items = items

        async def get(self, input):
            return self.items.get(input.item_id)

        async def set(self, input):
            old = self.items.get(input.item_id)
            self.items[input.item_id] = input.data
            return StreamSetResult(old_value=old, new_value=input.data)

        async def delete(self, input):
            return StreamDeleteResult(old_value=self.items.pop(input.item_id, None))

        async def list(self, input):
            return list(self.items.values())

        async def list_groups(self, input):
            return ["g"] if self.items else []

        async def update(self, input):
            raise RuntimeError("the engine must not call update")

    dicts: dict[str, dict] = {"alpha": {}, "beta": {}}
    for w, who in ((a, "alpha"), (b, "beta")):
        create_stream(w, "chat-custom", DictStream(dicts[who]))
        settle(w)
    x = {"stream_name": "chat-custom", "group_id": "g", "item_id": "x"}
    eq(call(a, "stream::set", {**x, "data": {"by": "alpha", "n": 1}}), {"old_value": None, "new_value": {"by": "alpha", "n": 1}}, "alpha custom set")
    eq(call(b, "stream::set", {**x, "data": {"by": "beta", "n": 1}}), {"old_value": None, "new_value": {"by": "beta", "n": 1}}, "beta custom set")
    eq(list(dicts["alpha"].values()), [{"by": "alpha", "n": 1}], "alpha's writes reach alpha's worker only")
    eq(list(dicts["beta"].values()), [{"by": "beta", "n": 1}], "beta's writes reach beta's worker only")
    eq(call(a, "stream::get", x), {"by": "alpha", "n": 1}, "alpha custom get")
    eq(call(b, "stream::get", x), {"by": "beta", "n": 1}, "beta custom get")
    eq(call(a, "stream::update", {**x, "ops": [{"type": "increment", "path": "n", "by": 1}]}),
       {"old_value": {"by": "alpha", "n": 1}, "new_value": {"by": "alpha", "n": 2}}, "alpha custom update")
    eq(call(b, "stream::delete", x), {"old_value": {"by": "beta", "n": 1}}, "beta custom delete")
    eq(call(a, "stream::list", {"stream_name": "chat-custom", "group_id": "g"}), [{"by": "alpha", "n": 2}], "alpha custom list")
    eq(call(b, "stream::list", {"stream_name": "chat-custom", "group_id": "g"}), [], "beta custom list")
    eq(bare(ca.join("c", "chat-custom", "g")), event("chat-custom", "g", None, {"type": "sync", "data": [{"by": "alpha", "n": 2}]}),
       "alpha's client syncs from alpha's worker")
    eq(bare(cb.join("c", "chat-custom", "g")), event("chat-custom", "g", None, {"type": "sync", "data": []}), "beta's client syncs from beta's worker")

    begin("markers for the engine-side check")
    call(a, "stream::set", {"stream_name": "chat", "group_id": "final", "item_id": "who", "data": {"tenant": "alpha", "sdk": "python"}})
    call(b, "stream::set", {"stream_name": "chat", "group_id": "final", "item_id": "who", "data": {"tenant": "beta", "sdk": "python"}})
    ca.no_stray("alpha's client")
    cb.no_stray("beta's client")
    ca.close()
    cb.close()


def wrong_key() -> None:
    begin("a wrong key in III_TOKEN")
    # The SDK retries for ever by default; two retries bound the wait.
    retries = ReconnectionConfig(initial_delay_ms=50, max_delay_ms=200, jitter_factor=0, max_retries=2)
    # `register_worker` would block 30 s (its fixed wait) before raising ConnectionError: the
    # client it wraps connects in the background.
    w = III(WORKER_URL, InitOptions(worker_name="py-wrong-key", otel={"enabled": False}, enable_metrics_reporting=False,
                                    reconnection_config=retries))
    workers.append(w)
    wait_for(lambda: w.get_connection_state() == "failed", "the SDK giving up", timeout=10)
    refusals = [line for line in captured.lines if "HTTP 401" in line]
    eq(len(refusals), 3, "the engine refused each of the 3 upgrades with 401:\n" + "\n".join(captured.lines))
    log(f"refused 3 times: {refusals[0]}")


def wrong_namespace() -> None:
    begin("III_NAMESPACE names the other tenant")
    w = worker("py-wrong-namespace")
    wait_for(lambda: w.get_connection_state() == "failed", "the SDK stopping on the rejection")
    try:
        r = call(w, "stream::get", {"stream_name": "chat", "group_id": "g", "item_id": "i"})
    except RegistrationRejectedError as e:
        eq((e.code, e.namespace, e.worker_name), ("NAMESPACE_NOT_ALLOWED", "beta", "py-wrong-namespace"), "the rejection")
        log(f"rejected: {e}")
    except InvocationError as e:
        raise Fail(f"expected the registration rejection, got a call error {e.code}: {e}") from None
    else:
        raise Fail(f"a call after the rejection answered {r!r}")
    check(any("NAMESPACE_NOT_ALLOWED" in line for line in captured.lines), "the SDK logged the rejection:\n" + "\n".join(captured.lines))


failed = False
try:
    {"isolation": isolation, "wrong-key": wrong_key, "wrong-namespace": wrong_namespace}[MODE]()
    log("ALL PASSED")
except Exception as e:  # noqa: BLE001
    failed = True
    print(f'FAIL in step "{step}": {e!r}', file=sys.stderr)
    if isinstance(e, InvocationError):
        print(f"  error code: {e.code}", file=sys.stderr)
    traceback.print_exc()
finally:
    for w in workers:
        try:
            w.shutdown()
        except Exception as e:  # noqa: BLE001
            print(f"shutdown failed: {e}", file=sys.stderr)
sys.stdout.flush()
sys.stderr.flush()
os._exit(1 if failed else 0)
