#!/usr/bin/env python3
"""Turn recordings (tools/record-seeds.sh) into candidate inputs for every fuzz target.

    tools/make_corpora.py RECDIR OUTDIR [FIXTURES_DIR]

RECDIR/raw/<client>-<n>.in: what each client sent on one connection (AMQP for pika,
java, lapin; HTTP for http-<group>); RECDIR/data: the broker's data directory after the
sessions; RECDIR/definitions*.json: exports. Writes OUTDIR/<target>/<name>:
  connection, frame  the AMQP client streams as recorded
  method             every distinct method-frame payload
  table              every field table found in them (client properties, arguments,
                     message headers), as on the wire (length prefix included)
  store              the data directory's logs in the store target's chunk form
  definitions        the exports and the fixture definitions files
  management         each HTTP group's requests, NUL-separated `METHOD /path\\nbody`
"""
import hashlib
import json
import os
import struct
import sys
import zlib

rec, out = sys.argv[1], sys.argv[2]
fixtures = sys.argv[3] if len(sys.argv) > 3 else None


def write(target, name, data):
    d = os.path.join(out, target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


def frames(stream):
    """(kind, channel, payload) of each whole frame after an optional protocol header."""
    if stream[:4] == b"AMQP":
        stream = stream[8:]
    pos = 0
    while pos + 8 <= len(stream):
        kind, ch, size = struct.unpack(">BHI", stream[pos:pos + 7])
        if pos + 8 + size > len(stream):
            break
        yield kind, ch, stream[pos + 7:pos + 7 + size]
        pos += 8 + size


def shortstr(p, at):
    return at + 1 + p[at]


def method_table(p):
    """Offset of the field table in a method payload that has one, else None."""
    cm = struct.unpack(">HH", p[:4])
    at = 4
    try:
        if cm == (10, 11):
            return at
        if cm == (40, 10):
            at = shortstr(p, shortstr(p, at + 2)) + 1
        elif cm in ((40, 30), (40, 40), (50, 20)):
            at = shortstr(p, shortstr(p, shortstr(p, at + 2))) + 1
        elif cm == (50, 10):
            at = shortstr(p, at + 2) + 1
        elif cm == (50, 50):
            at = shortstr(p, shortstr(p, shortstr(p, at + 2)))
        elif cm == (60, 20):
            at = shortstr(p, shortstr(p, at + 2)) + 1
        else:
            return None
    except IndexError:
        return None
    return at if at + 4 <= len(p) else None


def header_table(props):
    """Offset of the headers table in content-header properties, else None."""
    flags = struct.unpack(">H", props[:2])[0]
    at = 2
    for bit in (15, 14):
        if flags & (1 << bit):
            at = shortstr(props, at)
    return at if flags & (1 << 13) else None


def table_at(p, at):
    n = struct.unpack(">I", p[at:at + 4])[0]
    return p[at:at + 4 + n]


streams = []
http = {}
raw = os.path.join(rec, "raw")
for name in sorted(os.listdir(raw)):
    if not name.endswith(".in"):
        continue
    data = open(os.path.join(raw, name), "rb").read()
    if not data:
        continue
    if name.startswith("http-"):
        http.setdefault(name.rsplit("-", 1)[0], []).append(data)
    else:
        streams.append((name[:-3], data))

methods, tables = {}, {}
for name, data in streams:
    write("connection", name, data)
    write("frame", name, data)
    for kind, ch, p in frames(data):
        if kind == 1 and len(p) >= 4:
            methods.setdefault(hashlib.sha1(p).hexdigest()[:12], p)
            at = method_table(p)
            if at is not None:
                t = table_at(p, at)
                tables.setdefault(hashlib.sha1(t).hexdigest()[:12], t)
        elif kind == 2 and len(p) >= 14:
            at = header_table(p[12:])
            if at is not None:
                t = table_at(p[12:], at)
                tables.setdefault(hashlib.sha1(t).hexdigest()[:12], t)
for k, p in methods.items():
    cm = struct.unpack(">HH", p[:4])
    write("method", f"{cm[0]}.{cm[1]}-{k}", p)
for k, t in tables.items():
    write("table", f"table-{k}", t)


def chunks(file_no, log):
    """A log in the store target's chunk form: one chunk per record, the rest raw."""
    out, pos = bytearray(), 0

    def push(tag, b):
        for i in range(0, max(len(b), 1), 0xFFFF):
            piece = b[i:i + 0xFFFF]
            out.extend(bytes([tag]) + struct.pack("<H", len(piece)) + piece)

    while pos + 8 <= len(log):
        n, crc = struct.unpack("<II", log[pos:pos + 8])
        payload = log[pos + 8:pos + 8 + n]
        if len(payload) != n or zlib.crc32(payload) != crc:
            break
        push(file_no, payload)
        pos += 8 + n
    if pos < len(log):
        push(file_no | 0x80, log[pos:])
    return bytes(out)


data_dir = os.path.join(rec, "data")
if os.path.isdir(data_dir):
    whole = bytearray()
    topo = os.path.join(data_dir, "topology.log")
    if os.path.exists(topo):
        t = chunks(0, open(topo, "rb").read())
        write("store", "topology-only", t)
        whole += t
    segdir = os.path.join(data_dir, "messages")
    segs = sorted(f for f in os.listdir(segdir) if f.endswith(".seg")) if os.path.isdir(segdir) else []
    for i, seg in enumerate(segs[:4]):
        whole += chunks(i + 1, open(os.path.join(segdir, seg), "rb").read())
    meta = os.path.join(data_dir, "meta.log")
    if os.path.exists(meta):
        m = chunks(5, open(meta, "rb").read())
        write("store", "meta-only", m)
        whole += m
    for tag, name in ((6, "access.json"), (7, "policies.json")):
        path = os.path.join(data_dir, name)
        if os.path.exists(path):
            doc = open(path, "rb").read()
            for i in range(0, len(doc), 0xFFFF):
                piece = doc[i:i + 0xFFFF]
                whole += bytes([tag]) + struct.pack("<H", len(piece)) + piece
    write("store", "recorded-data-dir", bytes(whole))
    # The same with a torn tail: the last record cut short, raw.
    if len(whole) > 40:
        write("store", "recorded-torn-tail", bytes(whole) + b"\x81\x10\x00" + bytes(whole[-16:]))

defs = [os.path.join(rec, f) for f in sorted(os.listdir(rec)) if f.startswith("definitions") and f.endswith(".json")]
if fixtures and os.path.isdir(fixtures):
    defs += [os.path.join(fixtures, f) for f in sorted(os.listdir(fixtures)) if f.endswith(".json")]
for path in defs:
    doc = json.load(open(path))
    write("definitions", os.path.basename(path)[:-5], json.dumps(doc, indent=1).encode())

for group, conns in sorted(http.items()):
    reqs = []
    for data in conns:
        pos = 0
        while pos < len(data):
            head_end = data.find(b"\r\n\r\n", pos)
            if head_end < 0:
                break
            head = data[pos:head_end].split(b"\r\n")
            method, path, _ = head[0].split(b" ", 2)
            length = 0
            for h in head[1:]:
                k, _, v = h.partition(b":")
                if k.strip().lower() == b"content-length":
                    length = int(v.strip())
            body = data[head_end + 4:head_end + 4 + length]
            pos = head_end + 4 + length
            reqs.append(method + b" " + path + b"\n" + body)
    if reqs:
        write("management", group, b"\0".join(reqs))
