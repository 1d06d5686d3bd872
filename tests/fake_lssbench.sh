#!/usr/bin/env bash
# A stand-in for lssbench in the sweep tests: misbehaves by --seq, otherwise runs the real one
# ($LSS_REAL_BINARY). --seq 96: crashes; 128: hangs; 160: out of memory. With $LSS_FAKE_OOM_ABOVE
# set, only one rule: out of memory above that many tokens.
seq=0
args=("$@")
for ((i = 0; i < ${#args[@]}; i++)); do
  [ "${args[$i]}" = "--seq" ] && seq=${args[$((i + 1))]}
done
if [ -n "${LSS_FAKE_OOM_ABOVE:-}" ]; then
  oom=$([ "$seq" -gt "$LSS_FAKE_OOM_ABOVE" ] && echo 1)
else
  if [ "$seq" = 96 ]; then kill -SEGV $$; fi
  if [ "$seq" = 128 ]; then sleep 600; fi
  oom=$([ "$seq" = 160 ] && echo 1)
fi
if [ -n "$oom" ]; then
  echo "[rank 0 on $(hostname)] lssbench: out of memory: out of device memory: asked 123 bytes" >&2
  exit 134
fi
exec "$LSS_REAL_BINARY" "$@"
