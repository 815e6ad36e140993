#!/usr/bin/env bash
# Runs the slow tests: the #[ignore]d ones of the test files below, in release.
#
#   scripts/slow-tests.sh            # .ci/run calls it after `cargo test`
#
# - churn:    100,000 connect-echo-close cycles on eight threads (heap, slab and
#             descriptors back to where they started)
# - property: 200,000 scripted OutBuf cases and 5,000 close-path cases on real sockets
#
# Bounded: the build has no limit of its own (it is `cargo test`'s), the run is killed
# after SLOW_TESTS_TIMEOUT seconds (default 300); about 30 s on a 2-CPU machine.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TERM_COLOR=never

limit="${SLOW_TESTS_TIMEOUT:-300}"
targets=(--test churn --test property)

cargo test --release "${targets[@]}" --no-run
start=$(date +%s)
if ! timeout --kill-after=10 "$limit" cargo test --release "${targets[@]}" -- --ignored; then
  echo "slow-tests.sh: FAILED (or ran over ${limit}s)" >&2
  exit 1
fi
echo "slow-tests.sh: ok in $(($(date +%s) - start))s" >&2
