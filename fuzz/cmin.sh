#!/usr/bin/env bash
# Shrinks each target's corpus to the seeds (fuzz/seeds/, from make_seeds.py, kept under their
# names) plus the campaign inputs that add coverage to them (libFuzzer's -merge=1, what
# `cargo fuzz cmin` runs), and of those only the smallest, up to BUDGET bytes per target
# (default 50000): merged, the corpora were 28 MB, too much to commit. Usage:
#     fuzz/cmin.sh [TARGET...]        (all targets when none is named)
set -euo pipefail
cd "$(dirname "$0")"
if [ $# -eq 0 ]; then
    set -- $(ls corpus)
fi
bin=target/x86_64-unknown-linux-gnu/release
export TMPDIR=${TMPDIR:-/dev/shm/sightline-fuzz}
mkdir -p "$TMPDIR"
for t in "$@"; do
    new=$(mktemp -d)
    cp seeds/"$t"/* "$new"/
    nice -n 19 "$bin/$t" -merge=1 -timeout=5 -rss_limit_mb=2048 "$new" "corpus/$t" >"logs/cmin-$t.log" 2>&1
    rm -rf "corpus/$t"
    mkdir "corpus/$t"
    cp seeds/"$t"/* "corpus/$t"/
    used=0
    for f in $(cd "$new" && ls -S -r | grep -E '^[0-9a-f]{40}$' || true); do
        size=$(stat -c %s "$new/$f")
        if [ $((used + size)) -gt "${BUDGET:-50000}" ]; then break; fi
        cp "$new/$f" "corpus/$t/"
        used=$((used + size))
    done
    rm -rf "$new"
    chmod 755 "corpus/$t"
    echo "$t: $(ls "corpus/$t" | wc -l) files, $(du -sb "corpus/$t" | cut -f1) bytes"
done
