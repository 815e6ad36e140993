#!/usr/bin/env bash
# Runs every cargo-fuzz target in fuzz/ for a bounded time each.
#
#   scripts/fuzz.sh [SECONDS]    # per target, default 30
#
# The targets are the [[bin]]s of fuzz/Cargo.toml (`cargo fuzz list`): line_decoder and
# length_decoder (`feed`, against a model), line_decode and length_decode (`decode` on a
# loop's kept input, against `feed`), decode_with (against a model).
#
# Installs cargo-fuzz from crates.io if it is missing. cargo-fuzz passes
# nightly-only flags (-Zsanitizer=address, ...) to rustc; RUSTC_BOOTSTRAP=1
# lets the stable toolchain accept them. Exits non-zero if any target crashes
# (or fails to build); the crashing input is left in fuzz/artifacts/TARGET/.
# The corpus grows in fuzz/corpus/TARGET/ (ignored by git) and is reused.
set -euo pipefail

secs="${1:-30}"
case "$secs" in
  '' | *[!0-9]*) echo "usage: $0 [SECONDS]" >&2; exit 2 ;;
esac

cd "$(dirname "$0")/.."

if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "fuzz.sh: installing cargo-fuzz" >&2
  cargo install cargo-fuzz --locked
fi

export RUSTC_BOOTSTRAP=1

log_dir="$(mktemp -d)"
trap 'rm -rf "$log_dir"' EXIT

failed=()
for target in $(cargo fuzz list); do
  echo "=== fuzz $target for ${secs}s" >&2
  if cargo fuzz run "$target" -- -max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 \
      -print_final_stats=1 >"$log_dir/$target.log" 2>&1; then
    runs="$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log_dir/$target.log" | grep -o '[0-9]*$' || true)"
    echo "fuzz $target: ok, ${runs:-?} executions in ${secs}s" >&2
  else
    tail -n 60 "$log_dir/$target.log" >&2
    echo "fuzz $target: FAILED (see fuzz/artifacts/$target/)" >&2
    failed+=("$target")
  fi
done

if ((${#failed[@]})); then
  echo "fuzz.sh: ${#failed[@]} target(s) failed: ${failed[*]}" >&2
  exit 1
fi
