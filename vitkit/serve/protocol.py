"""The open inference protocol ("KServe v2"), as KServe and Triton document it: request parsing and
response encoding, JSON and the binary tensor extension, with no web framework in sight.

Binary extension: the body is a JSON header of `Inference-Header-Content-Length` bytes followed by
the raw tensors, in input order, each input naming its size in `parameters.binary_data_size`; FP32
data is little-endian, and each BYTES element is a 4-byte little-endian length and the bytes. Triton's
client libraries send and ask for binary tensors by default.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import struct
from dataclasses import dataclass, field
from typing import Any

import numpy as np


class ProtocolError(Exception):
    """A request the server answers with `status` and `{"error": message}`."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def bad(message: str) -> ProtocolError:
    return ProtocolError(400, message)


@dataclass
class Tensor:
    """One input of a request: FP32 data as an array of `shape`, BYTES data as a list of bytes."""
    name: str
    datatype: str
    shape: list[int]
    data: np.ndarray | list[bytes]


@dataclass
class RequestedOutput:
    name: str
    binary: bool = False
    classification: int = 0  # Triton's classification extension: top-k "probability:index:label" strings


@dataclass
class InferRequest:
    inputs: list[Tensor]
    outputs: list[RequestedOutput] | None  # None: the model's default outputs
    id: str | None = None
    parameters: dict[str, Any] = field(default_factory=dict)


def _json(raw: bytes, what: str) -> dict[str, Any]:
    try:
        value = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise bad(f"{what} is not valid JSON ({e})") from None
    if not isinstance(value, dict):
        raise bad(f"{what} must be a JSON object, not {type(value).__name__}")
    return value


def _shape(value: Any, name: str) -> list[int]:
    if not isinstance(value, list) or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0
                                              for d in value):
        raise bad(f"input '{name}': shape must be a list of non-negative integers, got {value!r}")
    return value


def _flat(data: Any) -> list[Any]:
    """The protocol allows nested (row-major) or flat data lists."""
    out: list[Any] = []
    stack = [data]
    while stack:
        item = stack.pop()
        if isinstance(item, list):
            stack.extend(reversed(item))
        else:
            out.append(item)
    return out


def _bytes_elements(raw: bytes, name: str) -> list[bytes]:
    out, i = [], 0
    while i < len(raw):
        if i + 4 > len(raw):
            raise bad(f"input '{name}': binary BYTES data ends inside an element's length")
        (n,) = struct.unpack_from("<I", raw, i)
        if i + 4 + n > len(raw):
            raise bad(f"input '{name}': binary BYTES element of {n} bytes runs past the data")
        out.append(raw[i + 4:i + 4 + n])
        i += 4 + n
    return out


def _tensor(spec: dict[str, Any], binary: bytes | None) -> Tensor:
    if not isinstance(spec, dict):
        raise bad("each input must be an object with name, shape, datatype and data")
    name = spec.get("name")
    if not isinstance(name, str) or not name:
        raise bad("an input has no name")
    datatype, shape = spec.get("datatype"), _shape(spec.get("shape"), name)
    count = math.prod(shape)
    if datatype == "FP32":
        if binary is not None:
            if len(binary) != 4 * count:
                raise bad(f"input '{name}': {len(binary)} bytes of binary data for shape {shape} (expected {4 * count})")
            return Tensor(name, datatype, shape, np.frombuffer(binary, "<f4").reshape(shape))
        values = _flat(spec.get("data"))
        if len(values) != count:
            raise bad(f"input '{name}': {len(values)} values for shape {shape} (expected {count})")
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
            raise bad(f"input '{name}': FP32 data must be numbers")
        return Tensor(name, datatype, shape, np.asarray(values, dtype=np.float32).reshape(shape))
    if datatype == "BYTES":
        if binary is not None:
            items = _bytes_elements(binary, name)
        else:
            items = []
            for v in _flat(spec.get("data")):
                if not isinstance(v, str):
                    raise bad(f"input '{name}': BYTES data in JSON must be base64 strings")
                try:
                    items.append(base64.b64decode(v, validate=True))
                except (binascii.Error, ValueError):
                    raise bad(f"input '{name}': an element is not valid base64") from None
        if len(items) != count:
            raise bad(f"input '{name}': {len(items)} elements for shape {shape} (expected {count})")
        return Tensor(name, datatype, shape, items)
    raise bad(f"input '{name}': datatype {datatype!r} is not supported (FP32 images [N, C, H, W] or "
              "BYTES encoded image files [N])")


def parse_infer(body: bytes, header_length: str | None) -> InferRequest:
    """An infer request from its body and its `Inference-Header-Content-Length` header (None: all JSON)."""
    tail = b""
    if header_length is not None:
        try:
            n = int(header_length)
        except ValueError:
            raise bad(f"Inference-Header-Content-Length {header_length!r} is not an integer") from None
        if not 0 < n <= len(body):
            raise bad(f"Inference-Header-Content-Length {n} does not fit a body of {len(body)} bytes")
        body, tail = body[:n], body[n:]
    request = _json(body, "the request")
    inputs = request.get("inputs")
    if not isinstance(inputs, list) or not inputs:
        raise bad("the request has no inputs")
    tensors, offset = [], 0
    for spec in inputs:
        size = (spec.get("parameters") or {}).get("binary_data_size") if isinstance(spec, dict) else None
        chunk = None
        if size is not None:
            if not isinstance(size, int) or size < 0 or offset + size > len(tail):
                raise bad(f"input binary_data_size {size!r} runs past the {len(tail)} bytes after the JSON header")
            chunk, offset = tail[offset:offset + size], offset + size
        tensors.append(_tensor(spec, chunk))
    if offset != len(tail):
        raise bad(f"{len(tail) - offset} bytes after the inputs' binary data belong to no input")
    parameters = request.get("parameters") or {}
    if not isinstance(parameters, dict):
        raise bad("request parameters must be an object")
    outputs = request.get("outputs")
    if outputs is not None:
        if not isinstance(outputs, list):
            raise bad("outputs must be a list")
        outputs = [_requested(o, bool(parameters.get("binary_data_output", False))) for o in outputs]
    rid = request.get("id")
    return InferRequest(tensors, outputs, None if rid is None else str(rid), parameters)


def _requested(spec: Any, binary_default: bool) -> RequestedOutput:
    if not isinstance(spec, dict) or not isinstance(spec.get("name"), str):
        raise bad("each requested output must be an object with a name")
    p = spec.get("parameters") or {}
    k = p.get("classification", 0)
    if not isinstance(k, int) or isinstance(k, bool) or k < 0:
        raise bad(f"output '{spec['name']}': classification must be a non-negative integer, got {k!r}")
    return RequestedOutput(spec["name"], bool(p.get("binary_data", binary_default)), k)


@dataclass
class OutputTensor:
    name: str
    datatype: str  # FP32 or BYTES
    data: np.ndarray | list[list[bytes]]
    binary: bool

    @property
    def shape(self) -> list[int]:
        if self.datatype == "FP32":
            return list(self.data.shape)
        return [len(self.data), len(self.data[0]) if self.data else 0]

    def raw(self) -> bytes:
        if self.datatype == "FP32":
            return np.ascontiguousarray(self.data, dtype="<f4").tobytes()
        return b"".join(struct.pack("<I", len(b)) + b for row in self.data for b in row)

    def json_data(self) -> list[Any]:
        if self.datatype == "FP32":
            return self.data.reshape(-1).tolist()
        return [b.decode() for row in self.data for b in row]


def encode_response(model: str, version: str, request_id: str | None,
                    outputs: list[OutputTensor]) -> tuple[bytes, dict[str, str]]:
    """(body, headers): all JSON, or a JSON header and the binary outputs after it."""
    described, tail = [], []
    for o in outputs:
        entry: dict[str, Any] = {"name": o.name, "datatype": o.datatype, "shape": o.shape}
        if o.binary:
            raw = o.raw()
            entry["parameters"] = {"binary_data_size": len(raw)}
            tail.append(raw)
        else:
            entry["data"] = o.json_data()
        described.append(entry)
    response: dict[str, Any] = {"model_name": model, "model_version": version, "outputs": described}
    if request_id is not None:
        response["id"] = request_id
    header = json.dumps(response).encode()
    if not tail:
        return header, {"Content-Type": "application/json"}
    return header + b"".join(tail), {"Content-Type": "application/octet-stream",
                                    "Inference-Header-Content-Length": str(len(header))}
