"""A small closed-loop HTTP/1.1 load client (asyncio, keep-alive), the same for every system in the benchmark.

``concurrency`` connections each send their next request as soon as the previous answer arrives, for
``duration`` seconds after ``warmup`` seconds. Bodies are pre-encoded, so the client spends its CPU on
sockets, not JSON. Only 127.0.0.1 is allowed.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

import numpy as np


@dataclass
class Result:
    requests: int = 0
    sequences: int = 0
    errors: int = 0
    seconds: float = 0.0
    latencies_ms: list[float] = field(default_factory=list)
    statuses: dict[int, int] = field(default_factory=dict)
    first_error: str = ""

    def record(self, status: int, body: bytes, n_seq: int, seconds: float) -> None:
        self.statuses[status] = self.statuses.get(status, 0) + 1
        if status == 200:
            self.requests += 1
            self.sequences += n_seq
            self.latencies_ms.append(seconds * 1000)
        else:
            self.errors += 1
            self.first_error = self.first_error or f"{status}: {body[:200]!r}"

    def summary(self) -> dict:
        lat = np.array(self.latencies_ms) if self.latencies_ms else np.array([np.nan])
        return {
            "req_per_s": round(self.requests / self.seconds, 1) if self.seconds else 0.0,
            "seq_per_s": round(self.sequences / self.seconds, 1) if self.seconds else 0.0,
            "p50_ms": round(float(np.percentile(lat, 50)), 2),
            "p95_ms": round(float(np.percentile(lat, 95)), 2),
            "p99_ms": round(float(np.percentile(lat, 99)), 2),
            "errors": self.errors,
            "requests": self.requests,
        }


async def _read_response(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    status_line = await reader.readline()
    if not status_line:
        raise ConnectionError("connection closed")
    status = int(status_line.split()[1])
    length, chunked = None, False
    while True:
        line = await reader.readline()
        if line in (b"\r\n", b"\n", b""):
            break
        name, _, value = line.decode("latin-1").partition(":")
        name = name.strip().lower()
        if name == "content-length":
            length = int(value)
        elif name == "transfer-encoding" and "chunked" in value.lower():
            chunked = True
    if chunked:
        body = bytearray()
        while True:
            size = int((await reader.readline()).split(b";")[0], 16)
            if size == 0:
                await reader.readline()
                break
            body += await reader.readexactly(size)
            await reader.readline()
        return status, bytes(body)
    return status, await reader.readexactly(length or 0)


async def _worker(
    idx: int,
    host: str,
    port: int,
    requests: list[tuple[bytes, int]],
    concurrency: int,
    t_measure: float,
    t_end: float,
    res: Result,
) -> None:
    reader, writer = await asyncio.open_connection(host, port)
    k = idx
    try:
        while True:
            now = time.perf_counter()
            if now >= t_end:
                break
            raw, n_seq = requests[k % len(requests)]
            k += concurrency
            t0 = time.perf_counter()
            try:
                writer.write(raw)
                await writer.drain()
                status, body = await _read_response(reader)
            except (ConnectionError, asyncio.IncompleteReadError, OSError) as e:
                status, body = 0, str(e).encode()
                writer.close()
                reader, writer = await asyncio.open_connection(host, port)
            t1 = time.perf_counter()
            if t0 >= t_measure and t1 <= t_end:
                res.record(status, body, n_seq, t1 - t0)
    finally:
        writer.close()


def encode_requests(host: str, port: int, path: str, bodies: list[tuple]) -> list[tuple[bytes, int]]:
    """Full HTTP/1.1 request bytes for each (body, sequences in it[, extra header lines]); JSON unless the extra
    lines say otherwise (the V2 binary bodies carry their own Content-Type and Inference-Header-Content-Length)."""
    out = []
    for body, n, *extra in bodies:
        headers = extra[0] if extra else "Content-Type: application/json\r\n"
        head = f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\n{headers}Content-Length: {len(body)}\r\n\r\n"
        out.append((head.encode() + body, n))
    return out


def run_load(
    port: int,
    path: str,
    bodies: list[tuple[bytes, int]],
    concurrency: int,
    duration: float,
    warmup: float = 2.0,
    host: str = "127.0.0.1",
) -> Result:
    if host not in ("127.0.0.1", "localhost", "::1"):
        raise ValueError("load tests hit loopback only")
    requests = encode_requests(host, port, path, bodies)
    res = Result()

    async def main() -> None:
        t_measure = time.perf_counter() + warmup
        t_end = t_measure + duration
        await asyncio.gather(
            *(_worker(i, host, port, requests, concurrency, t_measure, t_end, res) for i in range(concurrency))
        )

    asyncio.run(main())
    res.seconds = duration
    return res


def run_open_loop(
    port: int,
    path: str,
    bodies: list[tuple[bytes, int]],
    rate: float,
    duration: float,
    warmup: float = 2.0,
    host: str = "127.0.0.1",
    max_connections: int = 1024,
) -> Result:
    """Open loop: request k is due at ``k / rate`` seconds, whether or not earlier answers have arrived.

    Latency counts from the due time, so time spent waiting for a free connection counts too: a slow server
    cannot hide its queue by slowing the client down (no coordinated omission). Connections are reused
    while idle and opened on demand, up to ``max_connections``."""
    if host not in ("127.0.0.1", "localhost", "::1"):
        raise ValueError("load tests hit loopback only")
    requests = encode_requests(host, port, path, bodies)
    res = Result()

    async def main() -> None:
        idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
        slots = asyncio.Semaphore(max_connections)
        t_start = time.perf_counter()
        t_measure, t_end = t_start + warmup, t_start + warmup + duration

        async def one(k: int, due: float) -> None:
            raw, n_seq = requests[k % len(requests)]
            async with slots:
                for attempt in range(2):  # a kept-alive connection the server closed meanwhile: once more, fresh
                    reused = bool(idle) and attempt == 0
                    conn = idle.pop() if reused else await asyncio.open_connection(host, port)
                    try:
                        conn[1].write(raw)
                        await conn[1].drain()
                        status, body = await _read_response(conn[0])
                        idle.append(conn)
                        break
                    except (ConnectionError, asyncio.IncompleteReadError, OSError) as e:
                        status, body = 0, str(e).encode()
                        conn[1].close()
                        if not reused or isinstance(e, asyncio.IncompleteReadError):  # an answer had begun
                            break
            t1 = time.perf_counter()
            if due >= t_measure:  # every request due in the window, answered late or not
                res.record(status, body, n_seq, t1 - due)

        tasks, k = [], 0
        while (due := t_start + k / rate) < t_end:
            delay = due - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one(k, due)))
            k += 1
        await asyncio.gather(*tasks)
        for _, writer in idle:
            writer.close()

    asyncio.run(main())
    res.seconds = duration
    return res
