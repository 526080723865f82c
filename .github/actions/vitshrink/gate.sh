#!/usr/bin/env bash
# The action's script: install vitshrink, compile + gate, record the exit code for the later steps.
# Runs the same outside GitHub (the tests run it): inputs come from VITSHRINK_* variables; outputs go
# to $GITHUB_OUTPUT and the summary to $GITHUB_STEP_SUMMARY when those are set. Always exits 0 so that
# the upload step runs; the action's last step turns the recorded code into the job's result.
# Exit codes recorded: 0 passed, 1 verification failed, 2 bad input, 3 gate failed, 4 install failed.
set -uo pipefail

record() { echo "exit-code=$1" >> "${GITHUB_OUTPUT:-/dev/null}"; }

# --- install: from this action's own checkout (the repository root, three levels above this script) ---
install="${VITSHRINK_INSTALL-auto}"  # set but empty: skip, as "skip"
if [ "$install" != "skip" ] && [ -n "$install" ]; then
  if [ "$install" = "auto" ]; then
    root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../../.." && pwd)"
    extras=""
    case ",${VITSHRINK_ENGINES:-ort}," in *,openvino,*|*,native,*|*,all,*) extras="[engines]" ;; esac
    requirement="$root$extras"
  else
    requirement="$install"
  fi
  index=()
  [ -n "${VITSHRINK_TORCH_INDEX:-}" ] && index=(--extra-index-url "$VITSHRINK_TORCH_INDEX")
  # shellcheck disable=SC2206  # "torch==X torchvision==Y": one requirement per word, in the same command
  torch=(${VITSHRINK_TORCH:-torch==2.13.0 torchvision==0.28.0})
  echo "installing vitshrink: pip install ${torch[*]} $requirement"
  if ! python -m pip install --quiet "${index[@]}" "${torch[@]}" "$requirement"; then
    echo "error: vitshrink could not be installed from '$requirement' (the pip output above says why)" >&2
    record 4
    exit 0
  fi
fi

out="${VITSHRINK_OUT:-vitshrink-out}"
args=(compile "${VITSHRINK_MODEL:?VITSHRINK_MODEL (input model) is required}" --out "$out" --quiet
      --batch "${VITSHRINK_BATCH:-1}" --threads "${VITSHRINK_THREADS:-2}" --bench-seconds "${VITSHRINK_BENCH_SECONDS:-10}"
      --engines "${VITSHRINK_ENGINES:-ort}" --junit "$out.gate.xml" --markdown "$out.gate.md")
[ -n "${VITSHRINK_CHECKPOINT:-}" ] && args+=(--checkpoint "$VITSHRINK_CHECKPOINT")
[ -n "${VITSHRINK_SPEC:-}" ] && args+=(--spec "$VITSHRINK_SPEC")
[ -n "${VITSHRINK_FROM:-}" ] && args+=(--from "$VITSHRINK_FROM")
[ -n "${VITSHRINK_DATA:-}" ] && args+=(--data "$VITSHRINK_DATA")
[ -n "${VITSHRINK_GATE:-}" ] && args+=(--gate "$VITSHRINK_GATE")
if [ -n "${VITSHRINK_BASELINE:-}" ]; then
  if [ -e "$VITSHRINK_BASELINE" ]; then
    args+=(--baseline "$VITSHRINK_BASELINE")
    [ -n "${VITSHRINK_MAX_SLOWDOWN:-}" ] && args+=(--max-slowdown "$VITSHRINK_MAX_SLOWDOWN")
  else
    echo "no baseline at '$VITSHRINK_BASELINE' (a first run): the slowdown check is skipped"
  fi
fi
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
record "$code"
echo "report=$out/report.json" >> "${GITHUB_OUTPUT:-/dev/null}"
exit 0
