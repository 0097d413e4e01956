#!/usr/bin/env python3
"""Bulk transfer through an intercept, both ends of it.

  transfer.py serve PORT        on the workstation: per connection, reads a line
                                "up N" (then N bytes, answers "ok") or "down N"
                                (answers N bytes)
  transfer.py up|down HOST:PORT N
                                from the node: prints the seconds the transfer took
"""
import socket
import sys
import threading
import time

BUF = 1 << 20
BLOCK = b"\xa5" * BUF


def read_line(conn):
    line = b""
    while not line.endswith(b"\n"):
        b = conn.recv(1)
        if not b:
            raise EOFError("closed before the command")
        line += b
    return line.decode().split()


def handle(conn):
    with conn:
        cmd, n = read_line(conn)
        n = int(n)
        if cmd == "up":
            buf = bytearray(BUF)
            while n > 0:
                got = conn.recv_into(buf, min(BUF, n))
                if not got:
                    return
                n -= got
            conn.sendall(b"ok\n")
        else:
            while n > 0:
                conn.sendall(BLOCK[: min(BUF, n)])
                n -= min(BUF, n)
            conn.shutdown(socket.SHUT_WR)
            conn.recv(1)


def serve(port):
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("127.0.0.1", port))
    s.listen(16)
    while True:
        conn, _ = s.accept()
        threading.Thread(target=handle, args=(conn,), daemon=True).start()


def client(cmd, addr, n):
    host, port = addr.rsplit(":", 1)
    start = time.monotonic()
    with socket.create_connection((host, int(port))) as s:
        s.sendall(f"{cmd} {n}\n".encode())
        if cmd == "up":
            left = n
            while left > 0:
                s.sendall(BLOCK[: min(BUF, left)])
                left -= min(BUF, left)
            if s.recv(3) != b"ok\n":
                sys.exit("upload not acknowledged")
        else:
            buf = bytearray(BUF)
            left = n
            while left > 0:
                got = s.recv_into(buf)
                if not got:
                    sys.exit(f"download cut {left} bytes short")
                left -= got
    print(f"{time.monotonic() - start:.3f}")


if __name__ == "__main__":
    if sys.argv[1] == "serve":
        serve(int(sys.argv[2]))
    else:
        client(sys.argv[1], sys.argv[2], int(sys.argv[3]))
