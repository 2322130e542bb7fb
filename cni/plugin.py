"""The ``tortie`` CNI executable: a thin client of the tortie-node daemon.

Run as ``python3 -I -S cni/plugin.py`` (see :mod:`cni.launcher`), so it must import nothing
but the standard library, and as little of it as possible: every millisecond of start-up is
paid on every pod start and stop.

What it does (docs/pod-networking.md is the contract):

* reads ``CNI_*`` from the environment and the network configuration from stdin;
* answers ``VERSION`` itself;
* otherwise connects to the daemon's unix socket (``"socket"`` in the configuration, else
  ``$TORTIE_CNI_SOCKET``, else ``/var/run/tortie/cni.sock``), sends one JSON line
  ``{"command", "env", "config", "plugin"}`` and reads one JSON line back:
  ``{"ok": true, "result": ...}`` is printed (nothing for ``null``) with exit status 0,
  ``{"ok": false, "error": ...}`` is printed with exit status 1.

It uses the C halves of ``json`` and ``socket`` (``_json``, ``_socket``): importing the
full modules pulls in ``re`` and ``enum`` and costs ~15 ms.  For the same reason it reads the
environment and exits through ``posix`` (built in, already loaded) rather than ``os``, whose
import (``_collections_abc``, ``posixpath``, ``stat``) is ~0.7 ms of every start.

Errors it reports itself: 6 when stdin is not JSON (also ``NaN`` / ``Infinity``, numbers out
of range, nesting deeper than ``MAX_DEPTH``), 7 when it is not a JSON object, is larger than
``MAX_CONFIG`` bytes or has an invalid ``timeout`` / ``socket``, 11 ("try again later") when
the daemon is not reachable or does not answer within the timeout (``"timeout"`` seconds in
the configuration; 60 for ADD, 30 otherwise by default), 999 for a failure of its own.
Whatever the input, stdout gets a CNI error object, never a traceback.

``--ipam`` as first argument makes it the standalone IPAM plugin ``tortie-ipam``: the same
request with ``"plugin": "ipam"``, answered with an IPAM-only result (ips, no interfaces).
"""

import posix
import sys
import time

try:  # the C parts of json and socket: importing json and socket costs ~15 ms (re, enum)
    import _json
    import _socket
except ImportError:  # an interpreter without them: the plain modules
    _json = None
    import socket as _socket

#: CLOCK_MONOTONIC once the imports are done (``TORTIE_CNI_PROFILE``)
STARTED = time.monotonic()


def getenv(name: str) -> str | None:
    """``os.environ.get(name)`` without importing ``os``: from ``posix.environ`` (the
    environment at start-up, bytes), decoded as ``os.environ`` does.  When ``os`` is loaded
    anyway (this module imported by a program that changes its environment) its live
    ``environ`` answers."""
    loaded = sys.modules.get("os")
    if loaded is not None:
        value: str | None = loaded.environ.get(name)
        return value
    raw = posix.environ.get(name.encode())
    return None if raw is None else raw.decode(sys.getfilesystemencoding(), "surrogateescape")

SUPPORTED_VERSIONS = ("0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0")
LATEST_VERSION = "1.1.0"
DEFAULT_SOCKET = "/var/run/tortie/cni.sock"
SOCKET_ENV = "TORTIE_CNI_SOCKET"
#: Set (to anything) to have the daemon say where the request's time went: one line
#: ``tortie-profile {...}`` on stderr with this process's CLOCK_MONOTONIC marks (``started``:
#: imports done, ``connected``, ``answered``) and the daemon's per-step ``timings`` in ms.
PROFILE_ENV = "TORTIE_CNI_PROFILE"
DEFAULT_TIMEOUT = {"ADD": 60.0}
OTHER_TIMEOUT = 30.0
MAX_TIMEOUT = 3600.0
#: Limits on the network configuration (stdin): size in bytes, nesting of objects / arrays.
MAX_CONFIG = 1024 * 1024
MAX_DEPTH = 64
#: sun_path of a unix socket address holds 107 bytes and a NUL.
MAX_SOCKET_PATH = 107
ENV_KEYS = ("CNI_COMMAND", "CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME", "CNI_ARGS",
            "CNI_PATH")
MAX_REPLY = 64 * 1024 * 1024

ERR_INVALID_ENV = 4
ERR_IO = 5
ERR_DECODE = 6
ERR_INVALID_CONFIG = 7
ERR_TRY_AGAIN_LATER = 11
ERR_INTERNAL = 999


def _no_constant(name: str) -> float:
    raise ValueError(f"{name} is not valid JSON")


def _finite_float(text: str) -> float:
    value = float(text)
    if value - value != 0:  # inf
        raise ValueError(f"number {text[:40]} is out of range")
    return value


class _DecodeContext:
    """What ``_json.make_scanner`` reads from a JSONDecoder: strict JSON (no ``NaN`` /
    ``Infinity``, no number that does not fit a float)."""

    strict = True
    object_hook = None
    object_pairs_hook = None
    parse_float = staticmethod(_finite_float)
    parse_int = int
    parse_constant = staticmethod(_no_constant)
    memo: dict[str, str] = {}


def json_loads(text: str | bytes) -> object:
    """``json.loads`` without importing ``json``; ValueError on invalid JSON, on ``NaN`` /
    ``Infinity`` and on nesting too deep for the decoder."""
    if isinstance(text, bytes):
        text = text.decode("utf-8")
    s = text.strip(" \t\n\r")
    try:
        if _json is not None:
            try:
                obj, end = _json.make_scanner(_DecodeContext)(s, 0)
                if end == len(s):
                    return obj
            except ValueError:
                raise
            except Exception:  # StopIteration, or an error the C scanner reports badly
                pass
        import json  # only to explain what is wrong

        return json.loads(s, parse_float=_finite_float, parse_constant=_no_constant)
    except RecursionError:
        raise ValueError("nested too deeply") from None


def nesting_depth(obj: object, limit: int) -> int:
    """How deeply objects and arrays nest in ``obj`` (counting stops above ``limit``)."""
    deepest = 0
    stack = [(obj, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            item = list(item.values())
        if isinstance(item, list):
            deepest = max(deepest, depth)
            if depth > limit:
                break
            stack.extend((x, depth + 1) for x in item if isinstance(x, dict | list))
    return deepest


def _no_default(obj: object) -> object:
    raise TypeError(f"cannot encode {type(obj).__name__} as JSON")


def json_dumps(obj: object) -> str:
    """Compact ``json.dumps`` without importing ``json``."""
    if _json is None:
        import json
        return json.dumps(obj, separators=(",", ":"), allow_nan=False)
    encode = _json.make_encoder(None, _no_default, _json.encode_basestring_ascii, None,
                                ":", ",", False, False, False)
    return "".join(encode(obj, 0))


class PluginError(Exception):
    def __init__(self, code: int, msg: str, details: str = "") -> None:
        super().__init__(msg)
        self.code = code
        self.msg = msg
        self.details = details


def _version_of(config: object) -> str:
    if isinstance(config, dict):
        v = config.get("cniVersion")
        if v in SUPPORTED_VERSIONS:
            return v
    return LATEST_VERSION


def _error_obj(code: int, msg: str, details: str, version: str) -> dict[str, object]:
    out: dict[str, object] = {"cniVersion": version, "code": code, "msg": msg}
    if details:
        out["details"] = details
    return out


def _emit(obj: object) -> None:
    sys.stdout.write(json_dumps(obj) + "\n")
    sys.stdout.flush()


def _sections(config: dict[str, object]) -> tuple[dict[str, object], ...]:
    """Where the plugin's own settings are looked up: ``ipam`` first, then the top level."""
    ipam = config.get("ipam")
    return (ipam, config) if isinstance(ipam, dict) else (config,)


def _socket_path(config: dict[str, object]) -> str:
    """The daemon's socket; PluginError(7) for an unusable ``socket`` (4 from the env)."""
    for section in _sections(config):
        path = section.get("socket")
        if path is not None:
            return _check_socket(path, ERR_INVALID_CONFIG, "socket")
    path = getenv(SOCKET_ENV)
    if path:
        return _check_socket(path, ERR_INVALID_ENV, SOCKET_ENV)
    return DEFAULT_SOCKET


def _check_socket(path: object, code: int, where: str) -> str:
    if not isinstance(path, str) or not path.startswith("/") or "\0" in path:
        raise PluginError(code, f"invalid {where}", "must be an absolute path")
    if len(path.encode(errors="surrogateescape")) > MAX_SOCKET_PATH:
        raise PluginError(code, f"invalid {where}",
                          f"a unix socket path has at most {MAX_SOCKET_PATH} bytes")
    return path


def _timeout(config: dict[str, object], command: str) -> float:
    """Seconds to wait for the daemon; PluginError(7) for an invalid ``timeout`` (the
    daemon's rule: a number above 0 and at most MAX_TIMEOUT)."""
    for section in _sections(config):
        value = section.get("timeout")
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int | float) \
                or not 0 < value <= MAX_TIMEOUT:
            raise PluginError(ERR_INVALID_CONFIG, "invalid timeout",
                              f"must be a number of seconds above 0, at most {MAX_TIMEOUT:g}")
        return float(value)
    return DEFAULT_TIMEOUT.get(command, OTHER_TIMEOUT)


def call_daemon(path: str, request: dict[str, object], timeout: float,
                marks: dict[str, float] | None = None) -> dict[str, object]:
    """Send one request line, read one answer line; PluginError(11) when unreachable.
    ``marks`` (when given) gets the CLOCK_MONOTONIC times ``connected`` and ``answered``."""
    deadline = time.monotonic() + timeout
    data = json_dumps(request).encode() + b"\n"
    sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
    try:
        sock.settimeout(timeout)
        try:
            sock.connect(path)
        except FileNotFoundError:
            raise PluginError(ERR_TRY_AGAIN_LATER, f"tortie-node is not running ({path})",
                              f"socket {path} does not exist") from None
        except OSError as e:
            raise PluginError(ERR_TRY_AGAIN_LATER, f"cannot reach tortie-node at {path}",
                              f"connecting to socket {path}: {e.strerror or e}") from None
        if marks is not None:
            marks["connected"] = time.monotonic()
        chunks: list[bytes] = []
        size = 0
        try:
            sock.sendall(data)
            while True:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError
                sock.settimeout(left)
                chunk = sock.recv(65536)
                if not chunk:
                    break
                chunks.append(chunk)
                size += len(chunk)
                if chunk.endswith(b"\n") or size > MAX_REPLY:
                    break
        except TimeoutError:
            raise PluginError(ERR_TRY_AGAIN_LATER, f"tortie-node at {path} did not answer in "
                              "time", f"no answer on socket {path} within {timeout:g}s") from None
        except OSError as e:
            raise PluginError(ERR_TRY_AGAIN_LATER, f"lost the connection to tortie-node at "
                              f"{path}", f"socket {path}: {e.strerror or e}") from None
    finally:
        sock.close()
    if marks is not None:
        marks["answered"] = time.monotonic()
    raw = b"".join(chunks)
    if not raw.strip():
        raise PluginError(ERR_TRY_AGAIN_LATER, f"tortie-node at {path} closed the connection "
                          "without an answer", f"socket {path}")
    try:
        reply = json_loads(raw)
    except ValueError as e:
        raise PluginError(ERR_IO, "tortie-node sent an invalid answer",
                          f"socket {path}: {e}") from None
    if not isinstance(reply, dict) or "ok" not in reply:
        raise PluginError(ERR_IO, "tortie-node sent an invalid answer",
                          f"socket {path}: not a response object")
    return reply


def _read_stdin() -> bytes:
    """The network configuration; PluginError(7) when it is larger than MAX_CONFIG."""
    stdin = sys.stdin
    if stdin is None or stdin.isatty():
        return b""
    raw: bytes = stdin.buffer.read(MAX_CONFIG + 1)
    if len(raw) > MAX_CONFIG:
        raise PluginError(ERR_INVALID_CONFIG, "the network configuration is too large",
                          f"more than {MAX_CONFIG} bytes on stdin")
    return raw


def main(argv: list[str]) -> int:
    """Serve one invocation; never raises (a failure of its own is error 999)."""
    try:
        return _main(argv)
    except PluginError as e:
        _emit(_error_obj(e.code, e.msg, e.details, LATEST_VERSION))
    except Exception as e:
        _emit(_error_obj(ERR_INTERNAL, "internal error in the tortie plugin",
                         f"{type(e).__name__}: {str(e)[:200]}", LATEST_VERSION))
    return 1


def run(argv: list[str]) -> None:
    """:func:`main`, then exit at once (what the launcher calls): the answer is flushed and
    nothing is left to clean up, so the interpreter's own tear-down (module clean-up,
    garbage collection) is skipped."""
    code = main(argv)
    sys.stdout.flush()
    sys.stderr.flush()
    posix._exit(code)


def _main(argv: list[str]) -> int:
    mode = "ipam" if argv[1:2] == ["--ipam"] else "tortie"
    command = getenv("CNI_COMMAND") or ""
    raw = _read_stdin()
    config: object = None
    if raw.strip():
        try:
            config = json_loads(raw)
        except ValueError as e:
            _emit(_error_obj(ERR_DECODE, "cannot decode the network configuration",
                             f"stdin is not valid JSON: {str(e)[:200]}", LATEST_VERSION))
            return 1
        if nesting_depth(config, MAX_DEPTH) > MAX_DEPTH:
            _emit(_error_obj(ERR_DECODE, "cannot decode the network configuration",
                             f"objects and arrays nest more than {MAX_DEPTH} deep",
                             LATEST_VERSION))
            return 1
    version = _version_of(config)
    if command == "VERSION":
        _emit({"cniVersion": version, "supportedVersions": list(SUPPORTED_VERSIONS)})
        return 0
    if config is None:
        _emit(_error_obj(ERR_DECODE, "cannot decode the network configuration",
                         "stdin is empty", version))
        return 1
    if not isinstance(config, dict):
        _emit(_error_obj(ERR_INVALID_CONFIG, "the network configuration must be a JSON "
                         "object", f"got {type(config).__name__}", version))
        return 1
    try:
        path = _socket_path(config)
        timeout = _timeout(config, command)
        request: dict[str, object] = {
            "command": command,
            "plugin": mode,
            "env": {k: v for k in ENV_KEYS if (v := getenv(k)) is not None},
            "config": config,
        }
        marks: dict[str, float] | None = None
        if getenv(PROFILE_ENV):
            request["profile"] = True
            marks = {"started": STARTED}
        reply = call_daemon(path, request, timeout, marks)
    except PluginError as e:
        _emit(_error_obj(e.code, e.msg, e.details, version))
        return 1
    if marks is not None:
        marks_out: dict[str, object] = {**marks, "timings": reply.get("timings")}
        sys.stderr.write("tortie-profile " + json_dumps(marks_out) + "\n")
    if reply.get("ok"):
        result = reply.get("result")
        if result is not None:
            _emit(result)
        return 0
    error = reply.get("error")
    if not isinstance(error, dict):
        error = _error_obj(ERR_IO, "tortie-node failed without an error object", "", version)
    _emit(error)
    return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
