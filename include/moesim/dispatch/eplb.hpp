// Redundant experts (EPLB, routing.redundant_experts): where the E + r physical expert slots
// of a layer live. Slot s is hosted by rank s / ((E + r) / P) (contiguous blocks, like the
// plain expert placement with E + r "experts"); the slot map slot_expert[s] names the logical
// expert slot s holds. Every logical expert holds at least one slot.
//
// Placement policy (our own implementation of DeepSeek EPLB's replicate + balanced packing):
//  1. replicate: each of the r extra slots goes, one at a time, to the expert with the
//     largest load per replica load_e / replicas_e (ties: the lowest expert id). With distinct
//     loads and r <= E this gives the r hottest experts one extra replica each; a very hot
//     expert may receive several.
//  2. pack: the E + r replicas, each weighing load_e / replicas_e, sorted by weight
//     (descending; ties: expert id, then replica number), go one by one to the rank with
//     room (each rank takes exactly (E + r) / P slots) that does not yet hold that expert,
//     then has the least weight so far, then the lowest rank (a rank holds two replicas of one
//     expert only when no other rank has room).
//  3. number: a rank's slots are ordered by expert id.
// Deterministic (pure integer/double arithmetic on identical inputs on every rank).
#pragma once

#include <cstdint>
#include <span>
#include <vector>

namespace moesim::dispatch {

// The slot map for `load` [E] (e.g. the rows each expert computed over the last N steps),
// E + r slots on `ranks` ranks ((E + r) divisible by ranks). Throws std::invalid_argument
// otherwise.
std::vector<std::int64_t> eplb_placement(std::span<const double> load, std::int64_t redundant,
                                         int ranks);

// The placement before any load is known: eplb_placement of equal loads (replicas of experts
// 0..r-1, spread so no rank holds one expert twice when it can be avoided).
std::vector<std::int64_t> eplb_initial_placement(std::int64_t experts, std::int64_t redundant,
                                                 int ranks);

// max over ranks / mean over ranks of the rows each rank would compute if every expert's
// load were split evenly over its replicas (1 = perfect balance): the packing's objective.
double eplb_rank_imbalance(std::span<const double> load, std::span<const std::int64_t> slot_expert,
                           int ranks);

}  // namespace moesim::dispatch
