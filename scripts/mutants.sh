#!/usr/bin/env bash
# Mutation testing of the durable core with cargo-mutants (issue 15): each mutant is one
# realistic bug (an operator flipped, a body replaced by a default); the suite must fail for
# it. Not part of CI: on a 2-core machine each mutant costs an incremental build and the
# Rust tests that exercise the core (about 40-70 s), so the whole core (~850 mutants) takes
# about 12-16 hours; one file takes minutes to an hour. Results go to mutants.out/ and are
# summarised by hand in MUTANTS.md.
#
#   scripts/mutants.sh                      # every file of the durable core
#   scripts/mutants.sh src/outbox.rs ...    # only these files
set -euo pipefail
cd "$(dirname "$0")/.."
command -v cargo-mutants >/dev/null || cargo install cargo-mutants --locked

FILES=("$@")
if [ ${#FILES[@]} -eq 0 ]; then
    FILES=(src/outbox.rs src/server.rs src/sync.rs src/retry.rs 'src/store/*.rs' src/cmd/chat.rs src/cmd/auth.rs
        src/scram.rs)
fi
ARGS=()
for f in "${FILES[@]}"; do ARGS+=(--file "$f"); done

# The Rust tests that drive the core; the Python scripts and benchmark smoke add minutes per
# mutant and catch nothing these do not (they run in CI on the unmutated code).
TESTS=(--lib --test devices --test faults --test durable_promises --test chat --test groups --test friends
    --test auth --test handshake --test limits --test lifecycle --test malformed_corpus --test access
    --test hostile_input --test device_memory)

time cargo mutants "${ARGS[@]}" --timeout 300 --output mutants.out -- "${TESTS[@]}"
