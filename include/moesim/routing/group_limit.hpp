// Node-limited routing (DeepSeek-V3's device/node-limited routing; Megatron-Core
// moe_router_num_groups / moe_router_group_topk): docs/multinode.md.
#pragma once

#include <cstdint>
#include <vector>

namespace moesim::routing {

// The E experts form `groups` groups of E/groups consecutive experts. Keeps the `limit`
// groups with the largest sum of their top-ceil(k/limit) scores (ties: lower group), then
// writes the k experts with the largest score inside the kept groups to out[0..k) in
// descending score order (ties: lower expert index), exactly like top-k restricted to
// them. Needs k <= limit * E / groups. `scratch` is resized as needed (reused across calls).
void group_limited_top_k(const double* score, std::int64_t E, std::int64_t k, std::int64_t groups,
                         std::int64_t limit, std::int32_t* out, std::vector<double>& scratch);

}  // namespace moesim::routing
