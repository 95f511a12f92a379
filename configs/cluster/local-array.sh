#!/usr/bin/env bash
# Runs the indices of a job array as local processes, the way a batch system runs them: each process
# gets DAPT_SHARD_INDEX / DAPT_SHARD_COUNT (read by `--shard env`), its own log and pid file.
#
#   configs/cluster/local-array.sh [--logs DIR] [--only I,J,...] COUNT -- COMMAND [ARGS...]
#
# e.g. (against the moto S3 server of the tests, or any bucket):
#   configs/cluster/local-array.sh 3 -- dapt ingest s3://raw/c4/en/ --out s3://work/c4-en/ --shard env
#   configs/cluster/local-array.sh --only 1 3 -- dapt ingest ...        # rerun index 1 only
#   dapt status s3://work/c4-en/ --jobs 3
#
# Waits for every index; exits 1 naming the indices that failed (their logs: DIR/job-I.log).
set -uo pipefail
logs=${TMPDIR:-/tmp}/dapt-array-$$
only=
while [ $# -gt 0 ]; do
    case $1 in
        --logs) logs=$2; shift 2 ;;
        --only) only=$2; shift 2 ;;
        -h|--help) sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) break ;;
    esac
done
count=${1:-}
if ! [[ $count =~ ^[1-9][0-9]*$ ]] || [ "${2:-}" != "--" ] || [ $# -lt 3 ]; then
    echo "usage: $0 [--logs DIR] [--only I,J,...] COUNT -- COMMAND [ARGS...]" >&2
    exit 2
fi
shift 2
indices=$(seq 0 $((count - 1)))
if [ -n "$only" ]; then
    indices=${only//,/ }
fi
mkdir -p "$logs"
declare -A pids
for index in $indices; do
    if ! [[ $index =~ ^[0-9]+$ ]] || [ "$index" -ge "$count" ]; then
        echo "local-array: index $index is not below $count" >&2
        exit 2
    fi
    DAPT_SHARD_INDEX=$index DAPT_SHARD_COUNT=$count "$@" >"$logs/job-$index.log" 2>&1 &
    pids[$index]=$!
    echo "${pids[$index]}" >"$logs/job-$index.pid"
done
failed=()
for index in $indices; do
    if ! wait "${pids[$index]}"; then
        failed+=("$index")
    fi
done
if [ ${#failed[@]} -gt 0 ]; then
    echo "local-array: indices failed: ${failed[*]} (logs in $logs)" >&2
    exit 1
fi
echo "local-array: $count of $count indices done (logs in $logs)" >&2
