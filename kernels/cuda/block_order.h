// The order in which the wgmma flash-attention kernels take their (block, head) pairs. Plain C++
// (host and device), so that the CPU tests check the index arithmetic without a GPU.
#pragma once

#include <cstdint>

#if defined(__CUDACC__)
#define LSS_HOST_DEVICE __host__ __device__
#else
#define LSS_HOST_DEVICE
#endif

namespace lss::cuda::flash_detail {

struct BlockOfCta {
  int block, head;
};

// One CTA per (block of query or key rows, head, sequence); the grid's x runs over n_blocks x H
// CTAs, in groups of head_group heads (head_group_size): a group's blocks all run before the next
// group's, so that the CTAs resident at once read the same few heads' K and V (forward) or Q, dO
// and dQ (backward) and find them in L2. Within a group the heads are fastest and, with
// `reverse`, the blocks go from last to first (the forward's causal query blocks late in the
// sequence see the most keys; the backward's heaviest key blocks are the first), so that light
// blocks fill the tail. With all heads in one group this is the heads-fastest order of the
// mma.sync kernels. A last group of fewer heads (head_group not dividing H) is allowed.
LSS_HOST_DEVICE inline BlockOfCta block_of_cta_index(int cta, int n_blocks, int H, int head_group,
                                                     bool reverse) {
  const int per_group = n_blocks * head_group;
  const int group = cta / per_group;
  const int in_group = cta - group * per_group;
  const int left = H - group * head_group;
  const int heads = head_group < left ? head_group : left;
  const int block = in_group / heads;
  return {reverse ? n_blocks - 1 - block : block, group * head_group + in_group % heads};
}

// Heads per group, from the measurements in PERFORMANCE.md (sixteenth session, one H200,
// D = 128, H = 16): one head per group was the fastest without masking at every length (4K-64K:
// 2-24% faster than heads fastest) and, causal, from 16K on, where a head's 128 blocks nearly
// fill the GPU. Causal at 4K (32 blocks a head) it was 12% slower: each group started its
// heaviest blocks in the previous group's tail. There four heads a group (128 CTAs) ran as fast
// as heads fastest. So a causal group takes the fewest heads that divide H (no short last group)
// with at least half as many CTAs as the GPU has multiprocessors.
inline int head_group_size(int64_t n_blocks, int H, bool causal, int multiprocessors) {
  if (!causal || H <= 1) return 1;
  for (int g = 1; g < H; ++g)
    if (H % g == 0 && 2 * n_blocks * g >= multiprocessors) return g;
  return H;
}

}  // namespace lss::cuda::flash_detail
