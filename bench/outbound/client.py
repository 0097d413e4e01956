#!/usr/bin/env python3
"""The client side of bench/outbound/run.sh, run the same way inside tpr's
outbound namespace (`tpr exec -- python3 client.py ...`) and on the host.

  connect HOST PORT N          N sequential connects (connect() returns,
                               then close), then N connect + `GET /` +
                               answer + close: "p50_ms p99_ms p50_ms p99_ms"
  http HOST PORT N             N `GET /` on one keep-alive connection to
                               examples/hello: "p50_ms p99_ms"
  down HOST PORT BYTES         GET /blob?n=BYTES: "MiB/s"
  up HOST PORT BYTES           POST /sum with BYTES bytes: "MiB/s"
  resolve N NAME...            getaddrinfo(NAME, AF_INET) once per name, then
                               N-1 more times the first name: "first_p50_ms
                               cached_p50_ms" (the resolver of resolv.conf)
  query SERVER:PORT N NAME...  the same with raw DNS A queries over UDP to
                               SERVER (the direct path)
  hold HOST PORT N             opens N connections, one `GET /` on each,
                               prints "ready" and keeps them until stdin ends
  dns-server PORT              a nameserver on 127.0.0.1:PORT: every name
                               under bench.test is 192.0.2.10 (TTL 30 s),
                               others NXDOMAIN
"""
import os
import socket
import struct
import sys
import time


def pct(values, p):
    values = sorted(values)
    return values[min(len(values) - 1, int(len(values) * p / 100))]


def ms(seconds):
    return f"{seconds * 1e3:.3f}"


def connect(host, port, n):
    times = []
    for _ in range(n):
        s = socket.socket()
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        t = time.perf_counter()
        s.connect((host, port))
        times.append(time.perf_counter() - t)
        s.close()
    firsts = []
    req = f"GET / HTTP/1.1\r\nHost: {host}\r\n\r\n".encode()
    for _ in range(n):
        t = time.perf_counter()
        s = socket.create_connection((host, port))
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        s.sendall(req)
        read_response(s, b"")
        firsts.append(time.perf_counter() - t)
        s.close()
    print(*(ms(pct(v, p)) for v in (times, firsts) for p in (50, 99)))


def read_response(s, buf):
    """Reads one HTTP/1.1 response with Content-Length; returns (body, rest)."""
    while b"\r\n\r\n" not in buf:
        chunk = s.recv(65536)
        if not chunk:
            raise SystemExit("connection closed before the response")
        buf += chunk
    head, _, buf = buf.partition(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n")[1:]:
        k, _, v = line.partition(b":")
        if k.strip().lower() == b"content-length":
            length = int(v)
    if not head.startswith(b"HTTP/1.1 200"):
        raise SystemExit(f"unexpected answer: {head[:80]!r}")
    while len(buf) < length:
        chunk = s.recv(65536)
        if not chunk:
            raise SystemExit("connection closed in the body")
        buf += chunk
    return buf[:length], buf[length:]


def dial(host, port):
    s = socket.create_connection((host, port), timeout=60)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return s


def http(host, port, n):
    s = dial(host, port)
    req = f"GET / HTTP/1.1\r\nHost: {host}\r\n\r\n".encode()
    times, rest = [], b""
    for i in range(n + 5):
        t = time.perf_counter()
        s.sendall(req)
        _, rest = read_response(s, rest)
        if i >= 5:  # the first few warm the path up
            times.append(time.perf_counter() - t)
    s.close()
    print(ms(pct(times, 50)), ms(pct(times, 99)))


def down(host, port, nbytes):
    s = dial(host, port)
    t = time.perf_counter()
    s.sendall(f"GET /blob?n={nbytes} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
    buf = b""
    while b"\r\n\r\n" not in buf:
        buf += s.recv(65536)
    got = len(buf.partition(b"\r\n\r\n")[2])
    view = bytearray(1 << 20)
    while got < nbytes:
        k = s.recv_into(view)
        if not k:
            raise SystemExit(f"download ended at {got} of {nbytes} bytes")
        got += k
    elapsed = time.perf_counter() - t
    s.close()
    print(f"{nbytes / elapsed / (1 << 20):.1f}")


def up(host, port, nbytes):
    s = dial(host, port)
    chunk = os.urandom(1 << 20)
    t = time.perf_counter()
    s.sendall(
        f"POST /sum HTTP/1.1\r\nHost: {host}\r\nContent-Length: {nbytes}\r\n"
        "Connection: close\r\n\r\n".encode()
    )
    left = nbytes
    while left > 0:
        m = min(left, len(chunk))
        s.sendall(chunk[:m])
        left -= m
    body, _ = read_response(s, b"")
    elapsed = time.perf_counter() - t
    s.close()
    if int(body.split()[0]) != nbytes:
        raise SystemExit(f"the server counted {body!r}, sent {nbytes}")
    print(f"{nbytes / elapsed / (1 << 20):.1f}")


def resolve(n, names):
    def one(name):
        t = time.perf_counter()
        socket.getaddrinfo(name, 80, socket.AF_INET, socket.SOCK_STREAM)
        return time.perf_counter() - t

    first = [one(name) for name in names]
    cached = [one(names[0]) for _ in range(n - 1)]
    print(ms(pct(first, 50)), ms(pct(cached, 50)))


def dns_query(name, ident):
    q = struct.pack(">HHHHHH", ident, 0x0100, 1, 0, 0, 0)
    for label in name.rstrip(".").split("."):
        q += bytes([len(label)]) + label.encode()
    return q + b"\x00" + struct.pack(">HH", 1, 1)


def query(server, n, names):
    host, _, port = server.rpartition(":")
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(5)
    s.connect((host, int(port)))

    def one(name, ident):
        t = time.perf_counter()
        s.send(dns_query(name, ident))
        while True:
            a = s.recv(4096)
            if a[:2] == struct.pack(">H", ident):
                break
        elapsed = time.perf_counter() - t
        if a[3] & 0x0F != 0 or struct.unpack(">H", a[6:8])[0] == 0:
            raise SystemExit(f"no address for {name} (rcode {a[3] & 0x0F})")
        return elapsed

    first = [one(name, i + 1) for i, name in enumerate(names)]
    cached = [one(names[0], 1000 + i) for i in range(n - 1)]
    print(ms(pct(first, 50)), ms(pct(cached, 50)))


def hold(host, port, n):
    conns, rest = [], b""
    for _ in range(n):
        s = dial(host, port)
        s.sendall(f"GET / HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
        conns.append(s)
    for s in conns:
        read_response(s, b"")
    print("ready", flush=True)
    sys.stdin.read()
    for s in conns:
        s.close()


def dns_server(port):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", port))
    print("ready", flush=True)
    while True:
        q, peer = s.recvfrom(512)
        if len(q) < 17:
            continue
        end = 12
        labels = []
        while end < len(q) and q[end]:
            labels.append(q[end + 1 : end + 1 + q[end]].decode(errors="replace").lower())
            end += 1 + q[end]
        end += 5
        qtype = struct.unpack(">H", q[end - 4 : end - 2])[0]
        a = bytearray(q[:end])
        a[2], a[3] = 0x81, 0x80
        a[6:12] = bytes(6)
        if labels[-2:] == ["bench", "test"]:
            if qtype == 1:
                a[6:8] = struct.pack(">H", 1)
                a += b"\xc0\x0c" + struct.pack(">HHIH", 1, 1, 30, 4) + bytes([192, 0, 2, 10])
        else:
            a[3] = 0x83
        s.sendto(bytes(a), peer)


def main(argv):
    cmd, args = argv[0], argv[1:]
    if cmd == "connect":
        connect(args[0], int(args[1]), int(args[2]))
    elif cmd == "http":
        http(args[0], int(args[1]), int(args[2]))
    elif cmd == "down":
        down(args[0], int(args[1]), int(args[2]))
    elif cmd == "up":
        up(args[0], int(args[1]), int(args[2]))
    elif cmd == "resolve":
        resolve(int(args[0]), args[1:])
    elif cmd == "query":
        query(args[0], int(args[1]), args[2:])
    elif cmd == "hold":
        hold(args[0], int(args[1]), int(args[2]))
    elif cmd == "dns-server":
        dns_server(int(args[0]))
    else:
        raise SystemExit(__doc__)


if __name__ == "__main__":
    main(sys.argv[1:])
