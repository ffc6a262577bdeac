// Start decisions of a run: fresh, resume, or already complete (resume.hpp).
#include "moesim/train/resume.hpp"

#include <map>
#include <sstream>

#include "moesim/train/checkpoint.hpp"

namespace moesim::train {
namespace {

// "section.key" -> value of a resolved INI text (to_ini's format).
std::map<std::string, std::string> flat(const std::string& ini) {
  std::map<std::string, std::string> out;
  std::istringstream in(ini);
  std::string line, section;
  while (std::getline(in, line)) {
    if (line.empty() || line[0] == '#') continue;
    if (line[0] == '[') {
      section = line.substr(1, line.find(']') - 1);
      continue;
    }
    const auto eq = line.find('=');
    if (eq == std::string::npos) continue;
    std::string key = line.substr(0, eq), value = line.substr(eq + 1);
    while (!key.empty() && key.back() == ' ') key.pop_back();
    while (!value.empty() && value.front() == ' ') value.erase(value.begin());
    out[section + "." + key] = value;
  }
  return out;
}

std::string join(const std::vector<std::string>& lines) {
  std::string out;
  for (const auto& l : lines) out += "\n  " + l;
  return out;
}

}  // namespace

bool may_differ_on_resume(const std::string& key) {
  const auto section = key.substr(0, key.find('.'));
  return section == "output" || section == "checkpoint" || section == "bench" ||
         section == "trace" || key == "training.steps" || key == "training.eval_every" ||
         key == "routing.dispatch" || key == "routing.redundant_experts" ||
         key == "routing.rebalance_every" || key == "routing.overlap_degree";
}

std::vector<std::string> trajectory_differences(const std::string& stored_ini, const Config& now) {
  // Re-resolve the stored text with this build's parser, so keys added since it was written
  // take their defaults (which reproduce the old behaviour) instead of reading as changes.
  const Config stored = parse_config(stored_ini, "stored config", {});
  const auto a = flat(to_ini(stored)), b = flat(to_ini(now));
  std::vector<std::string> diffs;
  for (const auto& [key, value] : b) {
    if (may_differ_on_resume(key)) continue;
    const auto it = a.find(key);
    const std::string old = it == a.end() ? "(absent)" : it->second;
    if (old != value) diffs.push_back(key + ": was " + old + ", now " + value);
  }
  return diffs;
}

StartDecision decide_start(const Config& now, const CheckpointState& ckpt,
                           const ResultState& result) {
  StartDecision d;
  const std::string ckpt_path = checkpoint_path(now);
  const std::string& out = now.output.file;
  const std::int64_t steps = now.training.steps;
  if (!now.checkpoint.resume) {
    d.kind = StartKind::fresh;
    // A run that writes checkpoints replaces this file at its first checkpoint; one that does
    // not would leave another run's state for a later --resume to pick up.
    d.remove_stale_checkpoint = ckpt.exists;
    if (ckpt.exists)
      d.note = "starting afresh (no --resume): the old checkpoint " + ckpt_path + " is removed";
    return d;
  }
  auto same_trajectory = [&](const std::string& ini, const std::string& what,
                             const std::string& path) {
    std::vector<std::string> diffs;
    try {
      diffs = trajectory_differences(ini, now);
    } catch (const ConfigError& e) {
      throw ConfigError(
          what, path,
          std::string("a file whose stored config this build can read (") + e.what() + ")");
    }
    if (!diffs.empty())
      throw ConfigError(what, path,
                        "a file of the same run: these parameters differ from it, and resuming "
                        "would silently change the run it records (use another output.file, or "
                        "run without --resume to start afresh):" +
                            join(diffs));
  };
  const bool result_done =
      result.readable && result.complete && result.rows == steps && result.contiguous;
  if (!ckpt.exists) {
    if (result_done) {
      same_trajectory(result.config_ini, "output.file", out);
      d.kind = StartKind::already_complete;
      d.note = "run already complete: " + out + " holds all " + std::to_string(steps) +
               " steps; nothing to do";
      return d;
    }
    d.kind = StartKind::fresh;
    if (result.exists)
      d.note = "no checkpoint " + ckpt_path + " to resume from: starting from step 0 (" + out +
               (result.readable ? " is replaced)" : " is unreadable and replaced)");
    return d;
  }
  if (!ckpt.readable)
    throw ConfigError(
        "checkpoint.file", ckpt_path,
        "a readable, intact checkpoint (" + ckpt.problem + "); remove it to start afresh");
  same_trajectory(ckpt.config_ini, "checkpoint.file", ckpt_path);
  if (ckpt.step < 0)
    throw ConfigError("checkpoint.file", ckpt_path,
                      "a checkpoint with a step >= 0 (it says " + std::to_string(ckpt.step) + ")");
  if (ckpt.step > steps)
    throw ConfigError("training.steps", std::to_string(steps),
                      "at least the checkpoint's step " + std::to_string(ckpt.step) + " (" +
                          ckpt_path + "): a run cannot resume past its end");
  if (result_done) {
    same_trajectory(result.config_ini, "output.file", out);
    d.kind = StartKind::already_complete;
    d.note = "run already complete: " + out + " holds all " + std::to_string(steps) +
             " steps; nothing to do";
    return d;
  }
  if (ckpt.step > 0) {
    if (!result.exists)
      throw ConfigError("output.file", out,
                        "the result file of the checkpointed run: it is missing, and resuming "
                        "from step " +
                            std::to_string(ckpt.step) + " (" + ckpt_path +
                            ") would produce a file without steps 0.." +
                            std::to_string(ckpt.step - 1) +
                            "; restore it, or remove the checkpoint to start afresh");
    if (!result.readable)
      throw ConfigError("output.file", out,
                        "a readable result file to resume into (" + result.problem +
                            "); remove the checkpoint " + ckpt_path + " to start afresh");
    same_trajectory(result.config_ini, "output.file", out);
    if (result.rows < ckpt.step || !result.contiguous)
      throw ConfigError("output.file", out,
                        "a result file with rows for every step before the checkpoint's step " +
                            std::to_string(ckpt.step) + " (it has " + std::to_string(result.rows) +
                            (result.contiguous ? "" : ", not contiguous") +
                            "): resuming would leave steps without rows; remove the checkpoint "
                            "to start afresh");
  }
  d.kind = ckpt.step == 0 ? StartKind::fresh : StartKind::resume;
  d.step = ckpt.step;
  d.note = "resuming from checkpoint " + ckpt_path + " at step " + std::to_string(ckpt.step) +
           (ckpt.step == steps ? " (all steps done; finishing the result file)" : "");
  return d;
}

}  // namespace moesim::train
