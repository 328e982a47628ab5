"""PrepareStream's data messages, encoded without building a protobuf message per chunk.

A ``PrepareChunk`` holding ``data`` (field 2, bytes) is, in protobuf's wire format, the
tag byte ``0x12``, the length as a varint, then the bytes. Building the message and
serializing it copied each 1 MiB chunk twice (into the message, then out of it); this
writes the same bytes with one copy. The receiver parses them with the generated code
as before: nothing about the wire changes.

Invariant: :func:`encode_part` returns exactly ``PrepareChunk(data=x).SerializeToString()``
for bytes ``x`` and ``message.SerializeToString()`` for a message
(tests/test_blob_files.py checks it against the library over many lengths).
"""

from __future__ import annotations

from gateway.v1 import gateway_pb2

#: Field 2 (``data``), wire type 2 (length-delimited): (2 << 3) | 2.
_DATA_TAG = b"\x12"


def _varint(value: int) -> bytes:
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def encode_part(part: gateway_pb2.PrepareChunk | bytes | bytearray | memoryview) -> bytes:
    """The serialized ``PrepareChunk``: a message as it is, bytes as its ``data``."""
    if isinstance(part, gateway_pb2.PrepareChunk):
        return part.SerializeToString()
    return b"".join((_DATA_TAG, _varint(memoryview(part).nbytes), part))
