"""Probe a Kafka broker with a real Metadata request, using only the standard library.

Used by scripts/kafka.sh before any virtualenv exists. Exit 0 when the broker
answered a Metadata (v4) request listing at least one broker, 1 otherwise.
"""

from __future__ import annotations

import socket
import struct
import sys

METADATA_API_KEY = 3
METADATA_VERSION = 4  # oldest version Kafka 4.x still serves; not flexible, so easy to frame


def _metadata_request(correlation_id: int) -> bytes:
    client_id = b"kafka-ready"
    header = struct.pack(
        ">hhih", METADATA_API_KEY, METADATA_VERSION, correlation_id, len(client_id)
    )
    # topics: null array (-1) means "all topics"; allow_auto_topic_creation: false
    body = struct.pack(">ib", -1, 0)
    payload = header + client_id + body
    return struct.pack(">i", len(payload)) + payload


def _read_exact(sock: socket.socket, size: int) -> bytes:
    chunks = b""
    while len(chunks) < size:
        chunk = sock.recv(size - len(chunks))
        if not chunk:
            raise ConnectionError("broker closed the connection")
        chunks += chunk
    return chunks


def broker_count(host: str, port: int, timeout: float = 2.0) -> int:
    """Send one Metadata request; return how many brokers the answer lists."""
    with socket.create_connection((host, port), timeout=timeout) as sock:
        sock.sendall(_metadata_request(correlation_id=7))
        (size,) = struct.unpack(">i", _read_exact(sock, 4))
        response = _read_exact(sock, size)
    correlation_id, _throttle_ms, brokers = struct.unpack(">iii", response[:12])
    if correlation_id != 7:
        raise ConnectionError(f"unexpected correlation id {correlation_id}")
    return int(brokers)


def main() -> int:
    host, _, port = (sys.argv[1] if len(sys.argv) > 1 else "127.0.0.1:9092").rpartition(":")
    try:
        brokers = broker_count(host or "127.0.0.1", int(port))
    except (OSError, ValueError, struct.error) as exc:
        print(f"not ready: {exc}", file=sys.stderr)
        return 1
    if brokers < 1:
        print("not ready: metadata lists no broker yet", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
