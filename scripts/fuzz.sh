#!/usr/bin/env bash
# Runs every fuzz target (or the ones named) for SECONDS each, one after the other.
#
#   scripts/fuzz.sh [SECONDS] [TARGET...]      SECONDS defaults to 60
#
# Exits non-zero if any target crashed (a panic, a failed assertion, a sanitizer report, a
# timeout or too much memory), after printing the input that did it. Needs cargo-fuzz
# (installed here with `cargo install --locked cargo-fuzz` when missing); on a stable
# toolchain the sanitizer flags are enabled with RUSTC_BOOTSTRAP=1. See docs/fuzzing.md.
#
# Environment:
#   FUZZ_JOBS=N        run N libFuzzer processes per target (-fork=N; default 1)
#   FUZZ_RSS_MB=N      memory limit per worker in MiB (default 1024)
#   FUZZ_MALLOC_MB=N   largest single allocation in MiB (default 128)
#   FUZZ_ARGS="..."    more libFuzzer flags

set -euo pipefail

cd "$(dirname "$0")/.."
root=$PWD
seconds=${1:-60}
if ! [[ $seconds =~ ^[0-9]+$ ]] || [ "$seconds" -lt 1 ]; then
    echo "usage: scripts/fuzz.sh [SECONDS] [TARGET...]" >&2
    exit 2
fi
shift || true

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "fuzz: cargo-fuzz is missing; installing it" >&2
    cargo install --locked cargo-fuzz
fi
# cargo-fuzz passes -Z flags (sanitizers, coverage); a stable rustc accepts them this way.
if ! rustc --version | grep -q nightly; then
    export RUSTC_BOOTSTRAP=1
fi

cd "$root/fuzz"
if [ $# -gt 0 ]; then
    targets=("$@")
else
    mapfile -t targets < <(cargo fuzz list)
fi

dict_for() {
    case $1 in
        decode_request | decode_strict | nfs_params | smb_params | iscsi_params) echo "$root/fuzz/dict/json.dict" ;;
        jws_*) echo "$root/fuzz/dict/jws.dict" ;;
        *) echo "$root/fuzz/dict/text.dict" ;;
    esac
}

echo "fuzz: building"
cargo fuzz build

logs=$(mktemp -d)
trap 'rm -rf "$logs"' EXIT
failed=()
summary=()
for t in "${targets[@]}"; do
    mkdir -p "corpus/$t" "artifacts/$t"
    seeds=()
    [ -d "seeds/$t" ] && seeds=("seeds/$t")
    parallel=()
    [ "${FUZZ_JOBS:-1}" -gt 1 ] && parallel=("-fork=$FUZZ_JOBS")
    echo "fuzz: $t for ${seconds}s"
    set +e
    # -timeout: one input taking over 10 s is a hang. -rss_limit_mb / -malloc_limit_mb: a
    # worker over the memory limit, or any single allocation over the cap, is a crash.
    # shellcheck disable=SC2086
    cargo fuzz run "$t" "corpus/$t" "${seeds[@]}" -- \
        -max_total_time="$seconds" \
        -timeout=10 \
        -rss_limit_mb="${FUZZ_RSS_MB:-1024}" \
        -malloc_limit_mb="${FUZZ_MALLOC_MB:-128}" \
        -max_len=131072 \
        -dict="$(dict_for "$t")" \
        -print_final_stats=1 \
        "${parallel[@]}" ${FUZZ_ARGS:-} >"$logs/$t.log" 2>&1
    rc=$?
    set -e
    runs=$(grep -aoE 'stat::number_of_executed_units: *[0-9]+' "$logs/$t.log" | grep -oE '[0-9]+$' | tail -1)
    rate=$(grep -aoE 'stat::average_exec_per_sec: *[0-9]+' "$logs/$t.log" | grep -oE '[0-9]+$' | tail -1)
    cov=$(grep -aoE 'cov: [0-9]+' "$logs/$t.log" | tail -1 | grep -oE '[0-9]+')
    if [ $rc -ne 0 ]; then
        failed+=("$t")
        summary+=("$t: CRASH (exit $rc)")
        echo "fuzz: $t FAILED:" >&2
        # The panic message or the sanitizer/libFuzzer report, without the stack traces.
        grep -aE -A2 "panicked at|^==[0-9]+==ERROR|^SUMMARY|out-of-memory|malloc\(|timeout after" \
            "$logs/$t.log" | grep -avE '^ +(#[0-9]|[0-9]+:|at )' | head -n 30 >&2 || true
        crash=$(grep -aoE "Test unit written to [^ ]+" "$logs/$t.log" | awk '{print $5}' | tail -1)
        if [ -n "$crash" ] && [ -f "$crash" ]; then
            echo "fuzz: crash input: fuzz/${crash#"$root/fuzz/"} ($(wc -c <"$crash") bytes); base64:" >&2
            base64 -w 76 "$crash" >&2
            echo "fuzz: reproduce with: (cd fuzz && cargo fuzz run $t ${crash#"$root/fuzz/"})" >&2
        fi
    else
        summary+=("$t: ok, ${runs:-?} runs, ${rate:-?} exec/s, coverage ${cov:-?}")
    fi
done

echo
echo "fuzz: summary (${seconds}s per target)"
printf '  %s\n' "${summary[@]}"
if [ ${#failed[@]} -gt 0 ]; then
    echo "fuzz: crashed: ${failed[*]}" >&2
    exit 1
fi
