#!/usr/bin/env bash
# Replace the committed seed corpora with a handful of candidate inputs
# (tools/make_corpora.py): libFuzzer's -merge=1 measures what each covers, and
# tools/pick.py picks greedily the inputs that add the most coverage, at most
# $FUZZ_SEEDS per target (default 12; 20 connections, 40 methods, 16 tables), none
# over 64 KiB. The candidates' descriptive file names are kept.
#
#   tests/fuzz/tools/minimize.sh CANDIDATES_DIR [TARGET...]
#
# Builds the targets first (tests/fuzz/run.sh 0).
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
FUZZ="$(cd "$HERE/.." && pwd)"
REPO="$(cd "$FUZZ/../.." && pwd)"
CAND="${1:?usage: minimize.sh CANDIDATES_DIR [TARGET...]}"
shift
TARGETS=("$@")
if [ ${#TARGETS[@]} -eq 0 ]; then
    for d in "$CAND"/*/; do TARGETS+=("$(basename "$d")"); done
fi
"$FUZZ/run.sh" 0 "${TARGETS[@]}" >&2
TARGET_DIR="${WARREN_FUZZ_TARGET_DIR:-${CARGO_TARGET_DIR:-$REPO/target}/fuzz}"
BIN="$TARGET_DIR/$(rustc -vV | sed -n 's/^host: //p')/release"
export WARREN_FUZZ_TMP="$(mktemp -d)"
ulimit -s 2048
for t in "${TARGETS[@]}"; do
    [ -d "$CAND/$t" ] || continue
    merged="$(mktemp -d)"
    "$BIN/$t" -merge=1 -merge_control_file="$merged.ctl" -timeout=10 -rss_limit_mb=2048 \
        -artifact_prefix="$merged-" \
        "$merged" "$CAND/$t" >"$merged.log" 2>&1 ||
        { tail -n 30 "$merged.log" >&2; echo "minimize: $t: merge failed" >&2; exit 1; }
    mkdir -p "$FUZZ/corpus/$t"
    rm -f "$FUZZ/corpus/$t"/*
    case "$t" in
        method) max=40 ;; connection) max=20 ;; table) max=16 ;; *) max=12 ;;
    esac
    python3 "$HERE/pick.py" "$merged.ctl" "${FUZZ_SEEDS:-$max}" | while read -r f; do
        cp "$f" "$FUZZ/corpus/$t/"
    done
    echo "minimize: $t: kept $(ls "$FUZZ/corpus/$t" | wc -l) of $(ls "$CAND/$t" | wc -l) ($(du -sh "$FUZZ/corpus/$t" | cut -f1))" >&2
    rm -rf "$merged" "$merged.log" "$merged.ctl"
done
rm -rf "$WARREN_FUZZ_TMP"
