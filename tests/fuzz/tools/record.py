#!/usr/bin/env python3
"""A recording TCP proxy: forwards every connection made to LISTEN on to UPSTREAM and
writes what each client sent into OUTDIR/<prefix>-<n>.in (and what the server answered
into OUTDIR/<prefix>-<n>.out), one pair of files per connection.

    tools/record.py LISTEN_PORT UPSTREAM_HOST:PORT OUTDIR [PREFIX]

Loopback only. Used to record real clients (pika, the Java client, lapin, rabbitmqadmin)
talking to a warren started by tools/record-seeds.sh; the .in files become seeds.
"""
import os
import socket
import sys
import threading

counter = 0
lock = threading.Lock()


def pump(src, dst, sink):
    try:
        while True:
            data = src.recv(65536)
            if not data:
                break
            sink.write(data)
            sink.flush()
            dst.sendall(data)
    except OSError:
        pass
    finally:
        try:
            dst.shutdown(socket.SHUT_WR)
        except OSError:
            pass


def handle(client, upstream, outdir, prefix):
    global counter
    with lock:
        counter += 1
        n = counter
    server = socket.create_connection(upstream)
    base = os.path.join(outdir, f"{prefix}-{n:03d}")
    with open(base + ".in", "wb") as cin, open(base + ".out", "wb") as cout:
        a = threading.Thread(target=pump, args=(client, server, cin))
        b = threading.Thread(target=pump, args=(server, client, cout))
        a.start()
        b.start()
        a.join()
        b.join()
    client.close()
    server.close()


def main():
    port = int(sys.argv[1])
    host, uport = sys.argv[2].rsplit(":", 1)
    outdir = sys.argv[3]
    prefix = sys.argv[4] if len(sys.argv) > 4 else "conn"
    os.makedirs(outdir, exist_ok=True)
    ls = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    ls.bind(("127.0.0.1", port))
    ls.listen(64)
    print(f"record: 127.0.0.1:{port} -> {host}:{uport}, into {outdir}", flush=True)
    while True:
        client, _ = ls.accept()
        threading.Thread(
            target=handle, args=(client, (host, int(uport)), outdir, prefix), daemon=True
        ).start()


if __name__ == "__main__":
    main()
