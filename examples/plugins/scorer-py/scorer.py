#!/usr/bin/python3
"""scorer.py: the example content scorer of examples/plugins/scorer, in Python.

It proves that the stage plugin protocol (plugins/proto/stage/v1/stage.proto)
is language-neutral: no Go, no SDK, only Debian's gRPC packages and the
hashicorp/go-plugin handshake written out by hand.

At on_message it adds up the scores of the rules whose pattern matches the
Subject or the body, writes the sum into an X-Spam-Score header field and
rejects the message when the sum reaches the threshold. Configuration (the
stage's config table; every key optional, the same keys as the Go scorer):

    sluice.stage("scorer", sluice.plugin {
      cmd = "/usr/bin/python3",
      args = { "examples/plugins/scorer-py/scorer.py" },
      timeout = "2s",
      config = {
        threshold = 5.0,                 -- reject at or above this score
        reject_code = 550,               -- SMTP code of the rejection
        reject_enhanced = "5.7.1",       -- its enhanced status code
        reject_text = "Message looks like spam",
        rules = { { pattern = "(?i)viagra", score = 4.0 } },  -- replace the built-in rules
      },
    })

Patterns are Python regular expressions (the Go scorer's RE2 patterns used
here, such as "(?i)\\bviagra\\b", mean the same in both).

Requirements (Debian 12): apt-get install python3-grpcio python3-grpc-tools
python3-protobuf, run with /usr/bin/python3 (a pyenv or venv python3 does not
see Debian's packages).

The Python code generated from stage.proto (stage_pb2.py, stage_pb2_grpc.py)
is not committed. Generate it and put its directory on PYTHONPATH:

    /usr/bin/python3 -m grpc_tools.protoc -Iplugins/proto/stage/v1 \
        --python_out=DIR --grpc_python_out=DIR plugins/proto/stage/v1/stage.proto

and set env = { PYTHONPATH = "DIR" } in the stage. Without it the plugin
generates the code itself at start into a temporary directory (removed once
the code is imported, so also when the plugin is killed), from the
stage.proto of this source tree or the file named by SLUICE_STAGE_PROTO.
"""

import concurrent.futures
import json
import logging
import os
import re
import shutil
import signal
import sys
import tempfile
import threading

import grpc
from google.protobuf import empty_pb2, wrappers_pb2

# The go-plugin handshake: Sluice sets the magic cookie in our environment and
# lists the app protocol versions it speaks in PLUGIN_PROTOCOL_VERSIONS.
MAGIC_COOKIE_KEY = "SLUICE_PLUGIN"
MAGIC_COOKIE_VALUE = "stage"
CORE_PROTOCOL_VERSION = 1  # go-plugin's own protocol
APP_PROTOCOL_VERSION = 1  # the Sluice stage protocol major version (sdk.ProtocolMajor)
PROTOCOL_MINOR = 0  # the minor version this plugin was written for (sdk.ProtocolMinor)
MAX_MESSAGE_SIZE = 128 << 20  # sdk.MaxMessageSize: gRPC's 4 MiB default would fail large messages

log = logging.getLogger("scorer-py")

DEFAULT_RULES = [
    {"pattern": r"(?i)\bviagra\b", "score": 3},
    {"pattern": r"(?i)\bcasino\b", "score": 2},
    {"pattern": r"(?i)\bwire transfer\b", "score": 1.5},
    {"pattern": r"(?i)\bact now\b", "score": 1},
    {"pattern": r"[A-Z]{20,}", "score": 1},  # shouting
]


class ConfigError(ValueError):
    pass


def _number(cfg, key, default, where="config"):
    v = cfg.get(key, default)
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise ConfigError(f"{where}: {key} {v!r}: want a number")
    return v


def parse_config(raw):
    """Returns the checked configuration of the JSON config table raw."""
    try:
        cfg = json.loads(raw or b"{}")
    except ValueError as e:
        raise ConfigError(f"config: {e}") from None
    if not isinstance(cfg, dict):
        raise ConfigError("config: want a table")
    threshold = float(_number(cfg, "threshold", 5.0))
    code = _number(cfg, "reject_code", 550)
    if isinstance(code, float) and code.is_integer():
        code = int(code)
    if not isinstance(code, int) or not 500 <= code <= 599:
        raise ConfigError(f"config: reject_code {code}: want a 5xx code")
    enh_text = cfg.get("reject_enhanced", "5.7.1")
    try:
        enh = [int(p) for p in str(enh_text).split(".")]
    except ValueError:
        enh = []
    if len(enh) != 3 or enh[0] != 5:
        raise ConfigError(f"config: reject_enhanced {enh_text!r}: want a code such as 5.7.1")
    rules = []
    for i, r in enumerate(cfg.get("rules", DEFAULT_RULES), 1):
        if not isinstance(r, dict):
            raise ConfigError(f"config: rules[{i}]: want {{ pattern = ..., score = ... }}")
        try:
            rules.append((re.compile(str(r.get("pattern", ""))), float(_number(r, "score", 0, f"config: rules[{i}]"))))
        except re.error as e:
            raise ConfigError(f"config: rules[{i}]: {e}") from None
    return {
        "threshold": threshold,
        "code": code,
        "enhanced": enh,
        "text": str(cfg.get("reject_text", "Message looks like spam")),
        "rules": rules,
    }


def load_stubs():
    """Imports the code generated from stage.proto, generating it if needed."""
    try:
        import stage_pb2
        import stage_pb2_grpc
        return stage_pb2, stage_pb2_grpc
    except ImportError:
        pass
    here = os.path.dirname(os.path.abspath(__file__))
    proto = os.environ.get("SLUICE_STAGE_PROTO") or os.path.join(
        here, "..", "..", "..", "plugins", "proto", "stage", "v1", "stage.proto")
    if not os.path.exists(proto):
        sys.exit(f"scorer-py: stage_pb2 is not on PYTHONPATH and {proto} does not exist: "
                 "generate the stubs (see the top of scorer.py) or set SLUICE_STAGE_PROTO")
    from grpc_tools import protoc
    out = tempfile.mkdtemp(prefix="scorer-py-")
    # Removed as soon as the stubs are imported (they live in memory from
    # then on), not at exit: Sluice kills a plugin whose config it refuses,
    # or that does not stop within 2 seconds, and an exit handler would not run.
    try:
        pdir = os.path.dirname(os.path.abspath(proto))
        if protoc.main(["protoc", "-I" + pdir, "--python_out=" + out, "--grpc_python_out=" + out,
                        os.path.join(pdir, "stage.proto")]) != 0:
            sys.exit(f"scorer-py: generating the stubs from {proto} failed")
        sys.path.insert(0, out)
        try:
            import stage_pb2
            import stage_pb2_grpc
        finally:
            sys.path.remove(out)
    finally:
        shutil.rmtree(out, True)
    return stage_pb2, stage_pb2_grpc


pb, pb_grpc = None, None  # set in main


def score(cfg, subject, body):
    """The sum of the scores of the rules matching subject or body (str)."""
    return sum(s for r, s in cfg["rules"] if r.search(subject) or r.search(body))


def make_servicer(base):
    class Scorer(base):
        """The sluice.stage.v1.Stage service. cfg is set once, by Configure,
        before any hook, and read-only after: safe for concurrent calls."""

        cfg = None

        def Configure(self, request, context):
            try:
                self.cfg = parse_config(request.config_json)
            except ConfigError as e:
                context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(e))
            log.info("configured stage=%s threshold=%s rules=%d",
                     request.stage_name, self.cfg["threshold"], len(self.cfg["rules"]))
            return pb.ConfigureResponse()

        def Describe(self, request, context):
            return pb.DescribeResponse(name="scorer-py", version="1.0.0",
                                       hooks=[pb.HOOK_ON_MESSAGE], body=pb.BODY_NEED_FULL,
                                       protocol_minor=PROTOCOL_MINOR)

        def Health(self, request, context):
            return pb.HealthResponse()

        def OnMessage(self, request, context):
            msg = request.message
            subject = next((h.value for h in msg.header if h.name.lower() == "subject"), "")
            s = score(self.cfg, subject, msg.body.decode("utf-8", "replace"))
            c = self.cfg
            if s >= c["threshold"]:
                return pb.Verdict(action=pb.ACTION_REJECT, code=c["code"], enhanced=c["enhanced"],
                                  text=f"{c['text']} (score {s:.1f}, threshold {c['threshold']:.1f})")
            v = pb.Verdict(action=pb.ACTION_CONTINUE)
            v.edits.headers.add(op="set", name="X-Spam-Score", value=f"{s:.1f}")
            v.edits.meta["spam_score"] = f"{s:.1f}"
            return v

    return Scorer()


def health_handler():
    """grpc.health.v1.Health/Check, which go-plugin uses to ping a plugin.

    Debian has no grpcio-health-checking, and its two messages are tiny:
    HealthCheckRequest {string service = 1} has the wire form of
    google.protobuf.StringValue, HealthCheckResponse {ServingStatus status = 1}
    that of Int32Value (SERVING = 1)."""
    def check(req, context):
        if req.value not in ("", "plugin"):
            context.abort(grpc.StatusCode.NOT_FOUND, f"unknown service {req.value!r}")
        return wrappers_pb2.Int32Value(value=1)
    return grpc.method_handlers_generic_handler("grpc.health.v1.Health", {
        "Check": grpc.unary_unary_rpc_method_handler(
            check, request_deserializer=wrappers_pb2.StringValue.FromString,
            response_serializer=wrappers_pb2.Int32Value.SerializeToString),
    })


def controller_handler(stop):
    """plugin.GRPCController/Shutdown (go-plugin's internal/plugin/grpc_controller.proto,
    Empty in and out): Sluice's request to exit. Without it go-plugin kills the
    process two seconds after asking."""
    def shutdown(req, context):
        stop.set()
        return empty_pb2.Empty()
    return grpc.method_handlers_generic_handler("plugin.GRPCController", {
        "Shutdown": grpc.unary_unary_rpc_method_handler(
            shutdown, request_deserializer=empty_pb2.Empty.FromString,
            response_serializer=empty_pb2.Empty.SerializeToString),
    })


def main():
    global pb, pb_grpc
    logging.basicConfig(stream=sys.stderr, level=logging.INFO, format="%(levelname)s %(message)s")
    if os.environ.get(MAGIC_COOKIE_KEY) != MAGIC_COOKIE_VALUE:
        sys.exit("scorer-py: this is a Sluice stage plugin: name it in a sluice.plugin { cmd = ... } "
                 "stage instead of running it by hand")
    offered = os.environ.get("PLUGIN_PROTOCOL_VERSIONS", str(APP_PROTOCOL_VERSION)).split(",")
    if str(APP_PROTOCOL_VERSION) not in offered:
        sys.exit(f"scorer-py: Sluice speaks stage protocol versions {offered}, this plugin "
                 f"speaks {APP_PROTOCOL_VERSION}: use a plugin built for this Sluice")
    pb, pb_grpc = load_stubs()

    stop = threading.Event()
    server = grpc.server(concurrent.futures.ThreadPoolExecutor(max_workers=16), options=[
        ("grpc.max_receive_message_length", MAX_MESSAGE_SIZE),
        ("grpc.max_send_message_length", MAX_MESSAGE_SIZE),
    ])
    pb_grpc.add_StageServicer_to_server(make_servicer(pb_grpc.StageServicer), server)
    server.add_generic_rpc_handlers((health_handler(), controller_handler(stop)))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    # Ctrl-C in Sluice's terminal reaches us too: Sluice decides when we stop.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # The handshake line, and nothing else on stdout after it.
    print(f"{CORE_PROTOCOL_VERSION}|{APP_PROTOCOL_VERSION}|tcp|127.0.0.1:{port}|grpc", flush=True)
    stop.wait()
    server.stop(grace=2).wait()


if __name__ == "__main__":
    main()
