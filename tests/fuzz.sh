#!/bin/sh
# tests/fuzz.sh SECONDS HARNESS... - run each fuzz harness `make fuzz` built
# (tests/fuzz-build/NAME, a libFuzzer target or linked with tests/fuzz-main.c;
# both take the same arguments) for an equal share of SECONDS: replay the
# inputs committed in tests/fuzz-regress/NAME/ if any, seed a fresh corpus
# with tests/fuzz-NAME.seed DIR if it exists (and FUZZ_CORPUS=DIR, for the
# harnesses that write their own), then fuzz. Fails if any harness crashed
# or reported; the input that did it is left in tests/fuzz-build/, and the
# harness's output in tests/fuzz-build/NAME.log.
total=$1
shift
share=$((total / $#))
[ "$share" -ge 1 ] || share=1
failed=
for bin; do
	name=${bin##*/}
	corpus=$bin.corpus
	echo "== fuzz-$name: $share s"
	if ls tests/fuzz-regress/"$name"/* >/dev/null 2>&1; then
		"$bin" -artifact_prefix="$bin-" tests/fuzz-regress/"$name"/* ||
			{ failed="$failed $name"; continue; }
	fi
	rm -rf "$corpus" && mkdir -p "$corpus" || exit 1
	if [ -x tests/fuzz-"$name".seed ]; then
		tests/fuzz-"$name".seed "$corpus" ||
			{ echo "fuzz-$name.seed failed"; failed="$failed $name"; continue; }
	fi
	if FUZZ_CORPUS=$corpus "$bin" -max_total_time="$share" -timeout=30 \
		-print_final_stats=1 -artifact_prefix="$bin-" "$corpus" \
		>"$bin.log" 2>&1; then
		grep -E '^(Done|fuzz-main: [0-9])' "$bin.log"
	else
		tail -n 80 "$bin.log"
		failed="$failed $name"
	fi
done
if [ -n "$failed" ]; then
	echo "fuzz: failed:$failed"
	exit 1
fi
echo "fuzz: $# harnesses, no failure"
