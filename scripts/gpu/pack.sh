#!/usr/bin/env bash
# What scripts/gpu/check.sh needs beyond the repository, cut into parts that each fit one `run`
# call's trip: the working tree and the paths a call carries may not pass 64 MiB together, and
# the tracked files alone are ~51 MiB. Part k goes in call k (`carry: ["target/gpu-carry/part-k"]`)
# on the same warm machine, whose ignored files stay between calls; the last call runs check.sh,
# which joins the parts (`join` stage) and uses the tarball and wheels inside.
#
#   scripts/gpu/pack.sh [PART_MIB]     # default: 64 MiB minus the working tree, less 1 MiB of slack
#
# Inputs: SIGHTLINE_TARBALL (default target/cuda-dist/sightline-cuda.tar.xz, scripts/cuda/build.sh's)
# and WHEELS (default target/gpu-wheels, scripts/gpu/wheels.sh's; optional).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
tarball=${SIGHTLINE_TARBALL:-target/cuda-dist/sightline-cuda.tar.xz}
wheels=${WHEELS:-target/gpu-wheels}
[ -f "$tarball" ] || { echo "pack.sh: no $tarball (make it with scripts/cuda/build.sh)" >&2; exit 1; }
tree=$( (git ls-files -z; git ls-files -z --others --exclude-standard) | xargs -0 du -cb 2>/dev/null | tail -n 1 | cut -f1)
part_mib=${1:-$(( (64 * 1048576 - tree) / 1048576 - 1 ))}
[ "$part_mib" -ge 1 ] || { echo "pack.sh: the working tree ($tree bytes) leaves no room under 64 MiB" >&2; exit 1; }
out=target/gpu-carry
rm -rf "$out" && mkdir -p "$out/stage"
cp "$tarball" "$out/stage/sightline-cuda.tar.xz"
[ -d "$wheels" ] && cp -r "$wheels" "$out/stage/gpu-wheels"
tar -cf "$out/carry.tar" -C "$out/stage" .
split -b "${part_mib}M" -d -a 2 "$out/carry.tar" "$out/carry.tar.part-"
n=0
for f in "$out"/carry.tar.part-*; do
    n=$((n + 1))
    mkdir -p "$out/part-$n"
    mv "$f" "$out/part-$n/carry.tar.part-$n"
done
rm -rf "$out/stage" "$out/carry.tar"
echo "working tree $((tree / 1048576)) MiB; $n parts of at most $part_mib MiB: carry target/gpu-carry/part-1 .. part-$n, one per call, then run scripts/gpu/check.sh"
du -sh "$out"/part-*
