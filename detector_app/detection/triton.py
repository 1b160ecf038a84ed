"""A Triton Inference Server as a lean engine: the network runs on the server, everything else stays here.

``--inference-url http://HOST:PORT/MODEL`` (or ``grpc://``) replaces the local export: letterbox, NMS and
box scaling still run in this process (``yolo_io``), only the ``(1, 3, H, W)`` blob travels. Input name,
shape and data type come from the server's model config, class names from its ``parameters.metadata``
(a Python-literal dict, the place Ultralytics' own Triton client reads them), so any repository written
by ``models export --triton-repo`` or served by ``inference-server`` works, and so does one made for
Ultralytics. ``tritonclient`` is torch-free. Its HTTP client is not thread-safe, so each calling thread
(one per stream) gets its own connection.

A failed call raises ``InferenceUnavailable`` (typed, transient): the pipeline pauses detection, keeps
streaming and retries; a server that cannot be reached at start-up is a ``UserError`` (one line, exit 2).
"""

from __future__ import annotations

import ast
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import numpy as np

from detector_app.detection.engines import ExportInfo
from detector_app.errors import UserError

CONNECT_TIMEOUT_S = 2.0
CALL_TIMEOUT_S = 5.0  # a CPU server under load answers in < 0.5 s; longer means it is gone
SCHEMES = ("http", "grpc")
_NP_TYPES = {"FP32": np.float32, "FP16": np.float16}


class TritonError(UserError):
    """The inference URL is malformed, or the server/model cannot be reached at start-up (user-fixable)."""


class InferenceUnavailable(RuntimeError):
    """One remote inference failed (server down, timeout, error answer); transient: retry later."""


@dataclass(frozen=True, slots=True)
class InferenceUrl:
    """``http://HOST:PORT/MODEL[/VERSION]`` or ``grpc://…``: where one model is served."""

    scheme: str
    host: str
    port: int
    model: str
    version: str = ""

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def __str__(self) -> str:
        return f"{self.scheme}://{self.address}/{self.model}" + (f"/{self.version}" if self.version else "")

    @classmethod
    def parse(cls, url: str) -> InferenceUrl:
        parts = urlsplit(url.strip())
        segs = [s for s in parts.path.split("/") if s]
        if parts.scheme not in SCHEMES or not parts.hostname or not 1 <= len(segs) <= 2:
            raise TritonError(f"bad --inference-url {url!r}: expected http://HOST:PORT/MODEL or grpc://HOST:PORT/MODEL")
        try:
            port = parts.port or (8000 if parts.scheme == "http" else 8001)
        except ValueError:
            raise TritonError(f"bad --inference-url {url!r}: the port is not a number") from None
        return cls(parts.scheme, parts.hostname, port, segs[0], segs[1] if len(segs) == 2 else "")


def _client_module(scheme: str) -> Any:
    try:
        if scheme == "http":
            import tritonclient.http as mod
        else:
            import tritonclient.grpc as mod
    except ImportError as exc:
        raise TritonError(f"--inference-url needs tritonclient: pip install 'tritonclient[http,grpc]' ({exc})") from None
    return mod


def parse_metadata(config: dict[str, Any]) -> dict[str, Any]:
    """The model config's ``parameters.metadata.string_value`` as a dict (``{}`` when absent or unreadable)."""
    raw = ((config.get("parameters") or {}).get("metadata") or {}).get("string_value")
    if not raw:
        return {}
    try:
        meta = ast.literal_eval(raw)
    except (ValueError, SyntaxError):
        return {}
    return meta if isinstance(meta, dict) else {}


@dataclass(frozen=True, slots=True)
class RemoteModel:
    """What the server says about the model: enough to build requests and read answers."""

    input_name: str
    output_name: str
    datatype: str  # FP32 | FP16 (Triton's wire names)
    batched: bool  # max_batch_size > 0: dims exclude the batch axis
    info: ExportInfo


def describe_remote(config: dict[str, Any], url: InferenceUrl) -> RemoteModel:
    """Read input/output names, data type, input size and class names from a model config (JSON form)."""
    from detector_app.detection.engines import read_export_info

    inputs, outputs = config.get("input") or [], config.get("output") or []
    if len(inputs) != 1 or not outputs:
        raise TritonError(f"model {url.model!r} at {url.address} is not a one-input detector "
                          f"({len(inputs)} inputs, {len(outputs)} outputs)")
    inp = inputs[0]
    batched = int(config.get("max_batch_size", 0) or 0) > 0
    dims = [int(d) for d in inp.get("dims", [])]
    shape = [1, *dims] if batched else dims
    dtype = str(inp.get("data_type", "TYPE_FP32")).removeprefix("TYPE_")
    if dtype not in _NP_TYPES:
        raise TritonError(f"model {url.model!r} takes {dtype}; only FP32/FP16 image input is supported")
    meta = parse_metadata(config)
    try:
        info = read_export_info(Path(str(url)), meta, shape)
    except UserError as exc:
        raise TritonError(f"model {url.model!r} at {url.address}: {exc}") from None
    out = sorted(outputs, key=lambda o: o.get("name", ""))[0]  # Ultralytics' client sorts them too
    return RemoteModel(str(inp["name"]), str(out["name"]), dtype, batched, info)


class TritonEngine:
    """The ``Engine`` protocol over a Triton server (HTTP or gRPC); thread-safe, one connection per thread."""

    backend = "triton"

    def __init__(self, url: str | InferenceUrl, timeout_s: float = CALL_TIMEOUT_S) -> None:
        self.url = url if isinstance(url, InferenceUrl) else InferenceUrl.parse(url)
        self.timeout_s = timeout_s
        self._mod = _client_module(self.url.scheme)
        self._local = threading.local()
        self._clients: list[Any] = []
        self._lock = threading.Lock()
        config = self._read_config()
        self.remote = describe_remote(config, self.url)
        self.info = self.remote.info
        self.config = config

    # ---------------------------------------------------------------- connection

    def _new_client(self) -> Any:
        if self.url.scheme == "http":
            return self._mod.InferenceServerClient(self.url.address, connection_timeout=CONNECT_TIMEOUT_S,
                                                   network_timeout=self.timeout_s)
        return self._mod.InferenceServerClient(self.url.address)

    def _client(self) -> Any:
        c = getattr(self._local, "client", None)
        if c is None:
            c = self._local.client = self._new_client()
            with self._lock:
                self._clients.append(c)
        return c

    def _drop_client(self) -> None:
        """After a failure the connection may be half-dead: the next call of this thread opens a new one."""
        c = getattr(self._local, "client", None)
        self._local.client = None
        if c is not None:
            with self._lock:
                if c in self._clients:
                    self._clients.remove(c)
            _close_quietly(c)

    def _read_config(self) -> dict[str, Any]:
        where = f"{self.url.scheme}://{self.url.address}"
        try:
            client = self._client()
            if self.url.scheme == "http":  # bounded by the client's connection/network timeouts
                ready = client.is_model_ready(self.url.model, self.url.version)
            else:  # gRPC has no deadline unless given one: a dropped-packets host would hang here forever
                ready = client.is_model_ready(self.url.model, self.url.version, client_timeout=self.timeout_s)
            if not ready:
                names = _model_names(client)  # PyTriton keeps the repository index behind a token: may be []
                raise TritonError(f"Triton at {where} has no ready model {self.url.model!r}"
                                  + (f" (served: {', '.join(names)})" if names else "") + "; check --inference-url")
            if self.url.scheme == "http":
                return dict(client.get_model_config(self.url.model, self.url.version))
            return dict(client.get_model_config(self.url.model, self.url.version, as_json=True,
                                                client_timeout=self.timeout_s)["config"])
        except TritonError:
            raise
        except Exception as exc:  # noqa: BLE001 - refused, DNS, timeout, protocol: all one line for the user
            self._drop_client()
            raise TritonError(f"cannot reach Triton at {where} ({_why(exc)}); start one with "
                              f"`detector-app inference-server --model MODEL` or check --inference-url") from None

    # ---------------------------------------------------------------- Engine protocol

    def infer(self, blob: np.ndarray, count: bool = True) -> np.ndarray:
        """Send one ``(1, 3, H, W)`` blob; the raw output comes back with the batch axis."""
        r = self.remote
        x = blob if blob.dtype == _NP_TYPES[r.datatype] else blob.astype(_NP_TYPES[r.datatype])
        try:
            client = self._client()
            inp = self._mod.InferInput(r.input_name, list(x.shape), r.datatype)
            inp.set_data_from_numpy(np.ascontiguousarray(x))
            out = self._mod.InferRequestedOutput(r.output_name)
            kwargs: dict[str, Any] = {"model_version": self.url.version, "outputs": [out]}
            if self.url.scheme == "grpc":
                kwargs["client_timeout"] = self.timeout_s
            res = client.infer(self.url.model, [inp], **kwargs)
            arr = res.as_numpy(r.output_name)
        except Exception as exc:  # noqa: BLE001 - any failure of a remote call is "unavailable for now"
            self._drop_client()
            raise InferenceUnavailable(f"Triton at {self.url.address}: {_why(exc)}") from exc
        if arr is None:
            raise InferenceUnavailable(f"Triton at {self.url.address} returned no {r.output_name!r}")
        return arr.astype(np.float32, copy=False)

    def warm(self, blob: np.ndarray, lanes: tuple[Any, ...] = ()) -> None:
        """Nothing to compile here: the server has its own instances."""

    @property
    def precision(self) -> str:
        return f"remote {self.remote.datatype.lower()}"

    def close(self) -> None:
        with self._lock:
            clients, self._clients = self._clients, []
        for c in clients:
            _close_quietly(c)


def _model_names(client: Any) -> list[str]:
    try:
        index = client.get_model_repository_index()
    except Exception:  # noqa: BLE001 - only used to enrich an error message
        return []
    rows = index if isinstance(index, list) else getattr(index, "models", [])
    return [str(r["name"] if isinstance(r, dict) else r.name) for r in rows]


def _why(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text[:200]


def _close_quietly(client: Any) -> None:
    try:
        client.close()
    except Exception:  # noqa: BLE001 - closing a dead connection may raise; nothing to do about it
        pass
