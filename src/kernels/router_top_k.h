// The MoE router's top-k selection for one token, shared by the CPU op (kernels/cpu/moe.cpp) and the CUDA kernel
// (kernels/cuda/moe.cu) so that both choose the same experts with the same weights.
#pragma once
#include <cstdint>

#include "kernels/host_device.h"

namespace l3c::ops {

// chosen (top_k) = the top_k experts of probs (num_experts) by probability, descending, by repeated selection (top_k
// is small): the largest remaining probability, the lower index on ties (a strict comparison over ascending indices
// keeps the first maximum). weights (top_k) = their probabilities, divided by their sum (in double) when normalize.
template <typename P>
L3C_HOST_DEVICE inline void router_top_k(int32_t* chosen, P* weights, const P* probs, int64_t num_experts,
                                         int64_t top_k, bool normalize) {
  double selected = 0.0;
  for (int64_t s = 0; s < top_k; ++s) {
    int64_t best = -1;
    for (int64_t e = 0; e < num_experts; ++e) {
      bool taken = false;
      for (int64_t t = 0; t < s; ++t) taken = taken || chosen[t] == e;
      if (!taken && (best < 0 || probs[e] > probs[best])) best = e;
    }
    chosen[s] = static_cast<int32_t>(best);
    weights[s] = probs[best];
    selected += static_cast<double>(probs[best]);
  }
  if (normalize)
    for (int64_t s = 0; s < top_k; ++s) weights[s] = static_cast<P>(static_cast<double>(weights[s]) / selected);
}

}  // namespace l3c::ops
