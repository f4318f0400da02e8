#!/usr/bin/env python3
"""Pick a handful of inputs from a libFuzzer merge control file: greedily, the input
that adds the most coverage features not yet covered, until MAX inputs or nothing new.
The first picks are the best of each source (the file name up to its first '-': pika,
java, lapin, ...), so that every recorded client is represented. Inputs larger than
MAX_BYTES are skipped. Prints the chosen paths.

    tools/pick.py CONTROL_FILE MAX [MAX_BYTES]
"""
import sys

ctl, limit = sys.argv[1], int(sys.argv[2])
max_bytes = int(sys.argv[3]) if len(sys.argv) > 3 else 64 * 1024
lines = open(ctl).read().splitlines()
n = int(lines[0])
paths = lines[2:2 + n]
size, feats = {}, {}
for line in lines[2 + n:]:
    parts = line.split()
    if parts[0] == "STARTED":
        size[int(parts[1])] = int(parts[2])
    elif parts[0] == "FT":
        feats[int(parts[1])] = set(parts[2:])
source = {i: p.rsplit("/", 1)[-1].split("-", 1)[0] for i, p in enumerate(paths)}
covered, chosen = set(), []


def pick(only=None):
    best, gain = None, 0
    for i, f in feats.items():
        if i in chosen or size.get(i, 0) > max_bytes or (only and source[i] != only):
            continue
        g = len(f - covered)
        # More new features first; among equals, the smaller input.
        if g > gain or (g == gain and g > 0 and size[i] < size[best]):
            best, gain = i, g
    if best is not None:
        chosen.append(best)
        covered.update(feats[best])
    return best


for s in sorted(set(source.values())):
    if len(chosen) < limit:
        pick(s)
while len(chosen) < limit and pick() is not None:
    pass
for i in chosen:
    print(paths[i])
