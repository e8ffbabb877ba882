"""The serialised-model envelope: a small JSON header + the library's native payload, hashed.

Layout of ``Model.to_bytes()`` (all integers little-endian)::

    b"MSGPUMDL"            8 bytes magic
    format version         uint16 (``ENVELOPE_VERSION``)
    header length H        uint32
    header                 H bytes of UTF-8 JSON, keys sorted, no whitespace:
                           family, params, n_features, payload_format, payload_sha256,
                           payload_len, extra (family-specific, e.g. the linear coefficients' dtype)
    payload                payload_len bytes in the native format of the library:
                           ``npz`` (linear), ``xgboost-ubj`` (Booster.save_raw("ubj")),
                           ``skops`` (scikit-learn), ``torch-state-dict`` (torch.save of a state_dict)

The same model always gives the same bytes (no timestamps: zip members are written with a fixed
date), so :func:`content_hash` (sha256 of the whole envelope, hex) identifies a model. On load the
payload's sha256 is checked against the header, and the whole envelope's against
``expected_sha256`` when the caller has one (the registry's metadata): any mismatch, a bad magic,
an unknown version or a truncated blob raises :class:`ModelIntegrityError`.
"""

from __future__ import annotations

import hashlib
import io
import json
import struct
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from mystocks_gpu.gpu_ops.models.exceptions import ModelIntegrityError

MAGIC = b"MSGPUMDL"
ENVELOPE_VERSION = 1
_PREFIX = struct.Struct("<8sHI")
_FIXED_ZIP_DATE = (1980, 1, 1, 0, 0, 0)


@dataclass(frozen=True)
class Envelope:
    """A decoded envelope: the header fields and the (hash-checked) payload bytes."""

    family: str
    params: dict[str, Any]
    n_features: int
    payload_format: str
    payload: bytes
    extra: dict[str, Any]


def content_hash(blob: bytes) -> str:
    """sha256 of a serialised model (the whole envelope), lower-case hex: the model's identity."""
    return hashlib.sha256(blob).hexdigest()


def pack(family: str, params: Mapping[str, Any], n_features: int, payload_format: str,
         payload: bytes, extra: Mapping[str, Any] | None = None) -> bytes:
    """Wrap ``payload`` in the envelope (deterministic: same inputs, same bytes)."""
    header = {
        "family": family,
        "params": dict(params),
        "n_features": int(n_features),
        "payload_format": payload_format,
        "payload_sha256": hashlib.sha256(payload).hexdigest(),
        "payload_len": len(payload),
        "extra": dict(extra or {}),
    }
    hb = json.dumps(header, sort_keys=True, separators=(",", ":"), allow_nan=False).encode()
    return _PREFIX.pack(MAGIC, ENVELOPE_VERSION, len(hb)) + hb + payload


def unpack(blob: bytes, expected_sha256: str | None = None) -> Envelope:
    """Check and decode an envelope; raises :class:`ModelIntegrityError` on any inconsistency."""
    if not isinstance(blob, (bytes, bytearray, memoryview)):
        raise ModelIntegrityError(f"a serialised model must be bytes, got {type(blob).__name__}")
    blob = bytes(blob)
    if expected_sha256 is not None and content_hash(blob) != expected_sha256.lower():
        raise ModelIntegrityError(
            f"model content hash mismatch: expected {expected_sha256}, got {content_hash(blob)} "
            "(the bytes are not the model the metadata names, or were altered)")
    if len(blob) < _PREFIX.size:
        raise ModelIntegrityError(f"serialised model truncated: {len(blob)} bytes, shorter than the header")
    magic, version, hlen = _PREFIX.unpack_from(blob)
    if magic != MAGIC:
        raise ModelIntegrityError(f"not a mystocks-gpu model (magic {magic!r}, expected {MAGIC!r})")
    if version != ENVELOPE_VERSION:
        raise ModelIntegrityError(f"unsupported model envelope version {version} (this build reads {ENVELOPE_VERSION})")
    start = _PREFIX.size + hlen
    if len(blob) < start:
        raise ModelIntegrityError("serialised model truncated inside its header")
    try:
        header = json.loads(blob[_PREFIX.size:start])
        family, params = str(header["family"]), dict(header["params"])
        n_features, fmt = int(header["n_features"]), str(header["payload_format"])
        want_hash, want_len = str(header["payload_sha256"]), int(header["payload_len"])
        extra = dict(header.get("extra", {}))
    except (ValueError, KeyError, TypeError) as exc:
        raise ModelIntegrityError(f"corrupt model header: {exc}") from exc
    payload = blob[start:]
    if len(payload) != want_len:
        raise ModelIntegrityError(f"model payload is {len(payload)} bytes, header says {want_len} (truncated?)")
    got = hashlib.sha256(payload).hexdigest()
    if got != want_hash:
        raise ModelIntegrityError(f"model payload hash mismatch: header {want_hash}, payload {got} (corrupt)")
    return Envelope(family, params, n_features, fmt, payload, extra)


def deterministic_zip(members: Sequence[tuple[str, bytes]], compress: bool = True) -> bytes:
    """A zip archive of ``(name, data)`` members in the given order with a fixed date and mode,
    so equal contents give equal bytes (``zipfile`` otherwise stamps the current time)."""
    out = io.BytesIO()
    method = zipfile.ZIP_DEFLATED if compress else zipfile.ZIP_STORED
    with zipfile.ZipFile(out, "w") as zf:
        for name, data in members:
            info = zipfile.ZipInfo(name, date_time=_FIXED_ZIP_DATE)
            info.compress_type = method
            info.external_attr = 0o644 << 16
            zf.writestr(info, data)
    return out.getvalue()


def canonical_skops(data: bytes) -> bytes:
    """Make a ``skops.io.dumps`` archive deterministic.

    skops names objects by their memory address (``"__id__"`` in ``schema.json`` and the
    ``<id>.npy`` member names), which differs between runs. This renumbers them 1, 2, ... in
    the order they first appear in the schema (a bijection, so shared references stay shared),
    renames the array members to match, and writes the zip with fixed dates, arrays in numeric
    order then ``schema.json``."""
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        members = {i.filename: zf.read(i) for i in zf.infolist()}
    schema = json.loads(members.pop("schema.json"))
    ids: dict[int, int] = {}

    def renumber(node: Any) -> Any:
        if isinstance(node, dict):
            out: dict[str, Any] = {}
            for k, v in node.items():
                if k == "__id__" and isinstance(v, int):
                    out[k] = ids.setdefault(v, len(ids) + 1)
                elif k == "file" and isinstance(v, str) and v.endswith(".npy") and v[:-4].isdigit():
                    out[k] = f"{ids.setdefault(int(v[:-4]), len(ids) + 1)}.npy"
                else:
                    out[k] = renumber(v)
            return out
        if isinstance(node, list):
            return [renumber(v) for v in node]
        return node

    schema = renumber(schema)
    arrays = []
    for name, blob in members.items():
        if not (name.endswith(".npy") and name[:-4].isdigit()) or int(name[:-4]) not in ids:
            raise ModelIntegrityError(f"unexpected member {name!r} in a skops archive")
        arrays.append((ids[int(name[:-4])], blob))
    out = [(f"{i}.npy", blob) for i, blob in sorted(arrays)]
    out.append(("schema.json", json.dumps(schema, sort_keys=True, indent=None).encode()))
    return deterministic_zip(out)


def arrays_to_npz(arrays: Mapping[str, np.ndarray]) -> bytes:
    """A deterministic ``.npz`` (readable by ``np.load``) of host arrays, in key order."""
    members = []
    for name, a in arrays.items():
        bio = io.BytesIO()
        np.lib.format.write_array(bio, np.ascontiguousarray(a), allow_pickle=False)
        members.append((f"{name}.npy", bio.getvalue()))
    return deterministic_zip(members, compress=False)


def npz_to_arrays(data: bytes) -> dict[str, np.ndarray]:
    """Read an ``.npz`` written by :func:`arrays_to_npz` (no pickles)."""
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except (ValueError, OSError, zipfile.BadZipFile) as exc:
        raise ModelIntegrityError(f"corrupt .npz model payload: {exc}") from exc
