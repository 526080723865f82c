#!/usr/bin/env bash
# The action's script: install vitshrink, compile + gate, record the exit code for the later steps.
# Runs the same outside GitHub (the tests run it): inputs come from VITSHRINK_* variables; outputs go
# to $GITHUB_OUTPUT and the summary to $GITHUB_STEP_SUMMARY when those are set. Always exits 0 so that
# the upload step runs; the action's last step turns the recorded code into the job's result.
set -uo pipefail

if [ -n "${VITSHRINK_INSTALL:-}" ]; then
  python -m pip install --quiet "$VITSHRINK_INSTALL" || { echo "exit-code=2" >> "${GITHUB_OUTPUT:-/dev/null}"; exit 0; }
fi

out="${VITSHRINK_OUT:-vitshrink-out}"
args=(compile "${VITSHRINK_MODEL:?VITSHRINK_MODEL (input model) is required}" --out "$out" --quiet
      --batch "${VITSHRINK_BATCH:-1}" --threads "${VITSHRINK_THREADS:-2}" --bench-seconds "${VITSHRINK_BENCH_SECONDS:-10}"
      --junit "$out.gate.xml" --markdown "$out.gate.md")
[ -n "${VITSHRINK_CHECKPOINT:-}" ] && args+=(--checkpoint "$VITSHRINK_CHECKPOINT")
[ -n "${VITSHRINK_SPEC:-}" ] && args+=(--spec "$VITSHRINK_SPEC")
[ -n "${VITSHRINK_FROM:-}" ] && args+=(--from "$VITSHRINK_FROM")
[ -n "${VITSHRINK_DATA:-}" ] && args+=(--data "$VITSHRINK_DATA")
[ -n "${VITSHRINK_GATE:-}" ] && args+=(--gate "$VITSHRINK_GATE")
[ -n "${VITSHRINK_BASELINE:-}" ] && args+=(--baseline "$VITSHRINK_BASELINE")
# shellcheck disable=SC2206  # extra flags are split on spaces on purpose
[ -n "${VITSHRINK_ARGS:-}" ] && args+=($VITSHRINK_ARGS)

vitshrink "${args[@]}"
code=$?
# the gate's files go inside the output directory once it exists (compile writes it atomically)
if [ -d "$out" ]; then
  for f in gate.xml gate.md; do [ -f "$out.$f" ] && mv "$out.$f" "$out/$f"; done
fi
if [ -n "${GITHUB_STEP_SUMMARY:-}" ] && [ -f "$out/report.md" ] && [ "$code" != 2 ]; then
  { echo; echo "<details><summary>vitshrink report: ${VITSHRINK_MODEL}</summary>"; echo; cat "$out/report.md"; echo; echo "</details>"; } >> "$GITHUB_STEP_SUMMARY"
fi
{ echo "exit-code=$code"; echo "report=$out/report.json"; } >> "${GITHUB_OUTPUT:-/dev/null}"
exit 0
