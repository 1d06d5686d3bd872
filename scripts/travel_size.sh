#!/usr/bin/env bash
# What a device call carries, in bytes, counted as the device tool counts it: a tar archive of the
# working tree's tracked and untracked-not-ignored files, the folder shared/ (ignored or not) and
# each carried path (a 512-byte header per file, each file padded to 512 bytes: on a tree of 2,814
# files that is 2.3 MiB above the files' own bytes, and the tool refused 64.3 MiB so counted).
#   bash scripts/travel_size.sh [CARRY...]   from the repository root: prints the bytes, then the MiB
# gpu_bundle.sh sources it for travel_bytes.

# NUL-ended file names on stdin -> the bytes of their tar archive; tar's errors are shown.
tar_bytes() { tar --no-recursion --null -cf - -T - | wc -c; }

# travel_bytes [CARRY...]: the bytes that travel from the current folder, a git working tree.
travel_bytes() {
  local p
  {
    # Regular files only: a tracked file deleted here does not travel, and tar would stop on it.
    git ls-files -z -co --exclude-standard | while IFS= read -r -d '' f; do
      if [[ -f $f ]]; then printf '%s\0' "$f"; fi
    done
    for p in shared "$@"; do
      if [[ -e $p ]]; then find "$p" -type f -print0; fi
    done
  } | tar_bytes  # one archive, as the tool packs one
}

if [[ ${BASH_SOURCE[0]} == "$0" ]]; then
  set -euo pipefail
  git rev-parse --is-inside-work-tree >/dev/null 2>&1 || { echo "travel_size.sh: $PWD is not a git working tree" >&2; exit 1; }
  bytes=$(travel_bytes "$@")
  awk -v b="$bytes" 'BEGIN { printf "%d bytes (%.1f MiB; the device tool takes at most 64 MiB)\n", b, b / 1048576 }'
fi
