#!/usr/bin/env bash
# One fuzzing campaign, one target after another, each for SECONDS or 10 million executions,
# whichever comes first (the issue's bar), under its limits (1 s per input, 2 GiB of memory),
# printing one Markdown table row per target for FUZZING.md:
#     fuzz/campaign.sh SECONDS TARGET...        (all targets when none is named)
# Needs the targets built first, as FUZZING.md says:
#     cd fuzz && cargo +nightly fuzz build -s none --codegen-units 16
# Each run is what `cargo +nightly fuzz run -s none --codegen-units 16 TARGET -- ARGS` runs,
# called directly so that nothing is rebuilt between targets. Logs go to fuzz/logs/, crashes,
# timeouts and OOMs to fuzz/artifacts/TARGET/; new corpus entries to fuzz/corpus/TARGET/.
set -euo pipefail
cd "$(dirname "$0")"
secs=${1:?usage: fuzz/campaign.sh SECONDS [TARGET...]}
shift
if [ $# -eq 0 ]; then
    set -- $(sed -n 's/^name = "\(.*\)"$/\1/p' Cargo.toml | grep -v '^sightline-fuzz$')
fi
# BIN: another build's binaries; COMMIT: the commit they were built from (default HEAD).
bin=${BIN:-target/x86_64-unknown-linux-gnu/release}
commit=${COMMIT:-$(git rev-parse --short HEAD)}
mkdir -p logs
# The targets write their inputs to temporary files: on tmpfs that is 25 times faster than on
# the campaign machine's busy disk (10,000 against 400 executions per second for safetensors).
export TMPDIR=${TMPDIR:-/dev/shm/sightline-fuzz}
mkdir -p "$TMPDIR"
for t in "$@"; do
    mkdir -p "artifacts/$t" "corpus/$t"
    log="logs/$t.log"
    rc=0
    nice -n "${NICE:-19}" "$bin/$t" -rss_limit_mb=2048 -timeout=1 -max_total_time="$secs" -runs="${RUNS:-10000000}" \
        -artifact_prefix="artifacts/$t/" -print_final_stats=1 "corpus/$t" >"$log" 2>&1 || rc=$?
    # libFuzzer's summary: "Done N runs in S second(s)" and the final stats block.
    runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
    took=$(sed -n 's/^Done [0-9]* runs in \([0-9]*\) second.*/\1/p' "$log" | tail -1)
    rss=$(sed -n 's/^stat::peak_rss_mb: *//p' "$log" | tail -1)
    speed=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -1)
    found="none"
    if [ "$rc" -ne 0 ]; then
        found="rc $rc: $(grep -m1 -E 'panicked|ERROR: libFuzzer|Timeout|out-of-memory|deadly signal' "$log" | cut -c1-120)"
        # No "Done" line after a finding: the time from the executions and their rate.
        if [ -z "$took" ] && [ "${speed:-0}" -gt 0 ]; then took="~$((runs / speed))"; fi
        found="$found ($(grep -o 'artifacts/[^ ]*' "$log" | tail -1))"
    fi
    echo "| $t | $(date -u +%F) | $commit | ${took:-?} | ${runs:-?} | ${speed:-?} | ${rss:-?} MB | $found |"
done
