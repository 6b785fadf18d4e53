"""Time to first byte of streamed answers, one request at a time on one keep-alive connection.

wrk times a response from the request to its last byte; for a stream the question is also when
the first bytes come. This client sends the same request over and over on one connection (a plain
socket: no HTTP library between the clock and the wire), and for each one records the time from
sending it to the first byte of the response, to the first ``data:`` event, and to the end of the
chunked body. It prints one JSON object: the percentiles in ms, the request count and the number
of ``data:`` events in the last response. The benchmark runs it pinned to the load generator's core.

Run: python benchmarks/stream_probe.py --url http://127.0.0.1:8080/v1/chat/completions --body-file F --duration 5
"""

from __future__ import annotations

import argparse
import json
import socket
import statistics
import time
from urllib.parse import urlsplit

_END_OF_CHUNKS = b"\r\n0\r\n\r\n"


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def probe(url: str, body: bytes, duration_s: float, authorization: str = "Bearer bench") -> dict[str, float]:
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    request = (
        f"POST {parts.path} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n"
        f"Authorization: {authorization}\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode() + body
    sock = socket.create_connection((host, port), timeout=10)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    first_byte, first_event, total = [], [], []
    events = 0
    deadline = time.perf_counter() + duration_s
    clock = time.perf_counter
    while clock() < deadline:
        sent = clock()
        sock.sendall(request)
        buffer = sock.recv(65536)
        got_first = clock()
        event_at = 0.0
        while True:
            if not event_at and b"data:" in buffer:
                event_at = clock()
            if buffer.endswith(_END_OF_CHUNKS) or not buffer:
                break
            more = sock.recv(65536)
            if not more:
                raise RuntimeError("the server closed the connection mid-answer")
            buffer += more
        done = clock()
        head, _, rest = buffer.partition(b"\r\n\r\n")
        if not head.startswith(b"HTTP/1.1 200") or b"chunked" not in head.lower():
            raise RuntimeError(f"not a 200 chunked stream: {buffer[:300]!r}")
        events = rest.count(b"data:")
        first_byte.append(got_first - sent)
        first_event.append((event_at or done) - sent)
        total.append(done - sent)
    sock.close()
    ms = 1000.0
    return {
        "requests": float(len(total)),
        "events": float(events),
        "first_byte_p50_ms": statistics.median(first_byte) * ms,
        "first_byte_p99_ms": percentile(first_byte, 0.99) * ms,
        "first_event_p50_ms": statistics.median(first_event) * ms,
        "first_event_p99_ms": percentile(first_event, 0.99) * ms,
        "total_p50_ms": statistics.median(total) * ms,
        "total_p99_ms": percentile(total, 0.99) * ms,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", required=True)
    parser.add_argument("--body-file", required=True)
    parser.add_argument("--duration", type=float, default=5.0)
    args = parser.parse_args()
    with open(args.body_file, "rb") as f:
        body = f.read()
    print(json.dumps(probe(args.url, body, args.duration)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
