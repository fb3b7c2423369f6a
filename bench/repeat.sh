#!/bin/sh
# repeat.sh runs every bench scenario (as listed by `go run ./bench -list`)
# several times in a row, prints each run's JSON line with its duration,
# and exits 1 if any run failed or outlived its bound.
#
#	bench/repeat.sh            # every scenario 5 times
#	bench/repeat.sh 3 simulator rest
#
# BENCH_TIMEOUT (seconds, default 300) bounds each run; a scenario's own
# waits are far shorter, so the bound only catches a scenario that hangs.
set -eu
runs=${1:-5}
[ $# -gt 0 ] && shift
cd "$(dirname "$0")/.."
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
go build -o "$dir/bench" ./bench
if [ $# -gt 0 ]; then
	names="$*"
else
	names=$("$dir/bench" -list | sed 's/^scenarios: //; s/,/ /g')
fi
failed=0
for name in $names; do
	i=1
	while [ "$i" -le "$runs" ]; do
		start=$(date +%s)
		if out=$(timeout "${BENCH_TIMEOUT:-300}" "$dir/bench" -scenario "$name" -json); then
			echo "$name run $i ($(($(date +%s) - start)) s): $out"
		else
			echo "$name run $i failed after $(($(date +%s) - start)) s (exit $?)" >&2
			failed=1
		fi
		i=$((i + 1))
	done
done
exit $failed
