"""A minimal Kafka wire-protocol client: one Fetch request (v4) to a partition leader, over a plain
TCP connection, returning the partition's raw record-batch bytes.

Why: confluent-kafka hands every record to Python as a ``Message`` object (~1-5 us each, and the
memory of each until it is dropped); a replay reads millions of records it only needs as bytes in
one buffer. This client gets the fetched record batches as they are on the wire, and
:mod:`mystocks_gpu.streams.record_batches` parses them with numba. It is used only for bounded
replays, only on ``PLAINTEXT`` listeners (no TLS/SASL here: those replays use confluent-kafka), and
any error falls back to confluent-kafka (see ``ReplaySource``).

Fetch v4 (Kafka >= 0.11, still served by Kafka 4.x, which dropped v0-v3): ``isolation_level``
read_committed, the response carries the last stable offset and the aborted transactions of the
fetched range. Encoding follows the protocol guide (kafka.apache.org/protocol): big-endian
integers, ``STRING`` = int16 length + UTF-8, ``ARRAY`` = int32 count + items, ``NULLABLE_BYTES`` =
int32 length (-1 = null) + bytes. Request header v1, response header v0 (non-flexible versions).
"""

from __future__ import annotations

import socket
import struct
from dataclasses import dataclass

import numpy as np

from mystocks_gpu.streams.exceptions import FatalRuntimeError

FETCH_API_KEY = 1
FETCH_VERSION = 4
READ_UNCOMMITTED, READ_COMMITTED = 0, 1
_CLIENT_ID = b"mystocks-gpu-replay"


class RawFetchError(FatalRuntimeError):
    """The raw reader cannot go on (connection, protocol or broker error); the caller falls back
    to confluent-kafka from the same offset."""


@dataclass(frozen=True)
class FetchedPartition:
    """One partition of a Fetch response.

    ``records``: the raw record batches (may end with a partial batch, which the parser drops);
    ``aborted``: ``(producer_id, first_offset)`` of the aborted transactions in the fetched range.
    """

    partition: int
    error_code: int
    high_watermark: int
    last_stable_offset: int
    aborted: tuple[tuple[int, int], ...]
    records: memoryview


def encode_fetch(correlation_id: int, topic: str, partition: int, offset: int, max_bytes: int,
                 max_wait_ms: int, isolation: int = READ_COMMITTED) -> bytes:
    """A size-prefixed FetchRequest v4 for one partition from ``offset``."""
    t = topic.encode("utf-8")
    body = b"".join([
        struct.pack(">hhih", FETCH_API_KEY, FETCH_VERSION, correlation_id, len(_CLIENT_ID)), _CLIENT_ID,
        # replica_id, max_wait_ms, min_bytes, max_bytes, isolation_level
        struct.pack(">iiiib", -1, max_wait_ms, 1, max_bytes, isolation),
        struct.pack(">ih", 1, len(t)), t,  # one topic
        struct.pack(">iiqi", 1, partition, offset, max_bytes),  # one partition
    ])
    return struct.pack(">i", len(body)) + body


def decode_fetch(correlation_id: int, payload: memoryview, topic: str, partition: int) -> FetchedPartition:
    """Parse a FetchResponse v4 (without its size prefix) for the one partition asked for."""
    try:
        cid, _throttle, n_topics = struct.unpack_from(">iii", payload, 0)
        if cid != correlation_id:
            raise RawFetchError(f"fetch response for request {cid}, expected {correlation_id}")
        p = 12
        for _ in range(n_topics):
            (tl,) = struct.unpack_from(">h", payload, p)
            name = bytes(payload[p + 2:p + 2 + tl]).decode("utf-8")
            p += 2 + tl
            (n_parts,) = struct.unpack_from(">i", payload, p)
            p += 4
            for _ in range(n_parts):
                part, err, hw, lso, n_ab = struct.unpack_from(">ihqqi", payload, p)
                p += 26
                aborted = []
                for _ in range(max(n_ab, 0)):  # -1 = null array
                    aborted.append(struct.unpack_from(">qq", payload, p))
                    p += 16
                (rl,) = struct.unpack_from(">i", payload, p)
                p += 4
                recs = payload[p:p + max(rl, 0)]
                p += max(rl, 0)
                if name == topic and part == partition:
                    return FetchedPartition(part, err, hw, lso, tuple(aborted), recs)
    except struct.error as exc:
        raise RawFetchError(f"malformed fetch response: {exc}") from None
    raise RawFetchError(f"fetch response has no {topic}[{partition}]")


class FetchConnection:
    """A blocking TCP connection to one broker, sending Fetch requests one at a time."""

    def __init__(self, host: str, port: int, timeout_s: float) -> None:
        self.address = f"{host}:{port}"
        self.timeout_s = timeout_s
        try:
            self.sock = socket.create_connection((host, port), timeout=timeout_s)
        except OSError as exc:
            raise RawFetchError(f"cannot connect to {self.address}: {exc}") from None
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._cid = 0

    def fetch(self, topic: str, partition: int, offset: int, max_bytes: int, max_wait_ms: int = 10,
              isolation: int = READ_COMMITTED) -> FetchedPartition:
        """One Fetch round trip (:meth:`send` then :meth:`receive`)."""
        return self.receive(self.send(topic, partition, offset, max_bytes, max_wait_ms, isolation), topic, partition)

    def send(self, topic: str, partition: int, offset: int, max_bytes: int, max_wait_ms: int = 10,
             isolation: int = READ_COMMITTED) -> int:
        """Send a Fetch request without waiting for its answer; returns its correlation id. The
        broker answers a connection's requests in order, so a reader can ask for its next fetch
        before it parses the current one (the broker works while the reader parses)."""
        self._cid = (self._cid + 1) & 0x7FFFFFFF
        try:
            self.sock.sendall(encode_fetch(self._cid, topic, partition, offset, max_bytes, max_wait_ms, isolation))
        except OSError as exc:
            raise RawFetchError(f"fetch from {self.address}: {exc}") from None
        return self._cid

    def receive(self, correlation_id: int, topic: str, partition: int) -> FetchedPartition:
        """The answer to the request ``correlation_id`` (the oldest one not yet received); its
        records view stays valid as long as it is referenced (each answer has its own buffer)."""
        try:
            (size,) = struct.unpack(">i", self._read(4))
            payload = self._read(size)
        except OSError as exc:
            raise RawFetchError(f"fetch from {self.address}: {exc}") from None
        return decode_fetch(correlation_id, payload, topic, partition)

    def _read(self, n: int) -> memoryview:
        view = np.empty(n, np.uint8).data  # not zeroed (a bytearray would be): every byte is received into
        got = 0
        while got < n:
            k = self.sock.recv_into(view[got:], n - got)
            if k == 0:
                raise RawFetchError(f"{self.address} closed the connection")
            got += k
        return view

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass
