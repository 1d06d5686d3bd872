# Sourced by gpu_bundle.sh and gpu_variant.sh: check_build_stamp BUILD_DIR ROOT TMPDIR fails (via
# die) when the commit stamped into BUILD_DIR's binaries at build time differs from the tree's now.
# A commit or an edit made after the build would leave results naming other code than they ran.
check_build_stamp() {
  local build=$1 root=$2 tmp=$3 stamped now
  local header=$build/generated/lss_git_commit.h
  [[ -f $header ]] || return 0
  cmake -DSRC="$root" -DOUT="$tmp/now.h" -P "$root/cmake/git_commit.cmake"
  stamped=$(sed -n 's/^#define LSS_GIT_COMMIT "\(.*\)"$/\1/p' "$header")
  now=$(sed -n 's/^#define LSS_GIT_COMMIT "\(.*\)"$/\1/p' "$tmp/now.h")
  rm -f "$tmp/now.h"
  [[ $stamped == "$now" ]] || die "the binaries in $build are stamped commit '$stamped' but the tree is at '$now': rebuild (cmake --build $build) so that results name the code they ran"
}
