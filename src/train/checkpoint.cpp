// Checkpoint save/load and stop signals (checkpoint.hpp).
#include "moesim/train/checkpoint.hpp"

#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <csignal>
#include <cstring>
#include <filesystem>
#include <stdexcept>

#include "moesim/dispatch/dispatcher.hpp"
#include "moesim/io/checkpoint_file.hpp"

namespace moesim::train {
namespace {

std::atomic<int> g_stop{0};
extern "C" void on_stop_signal(int) { g_stop.store(1); }

// Tensor names in the file: "param/<name>", "state0/<name>", "state1/<name>".
std::string tensor_name(const char* kind, const std::string& name) {
  return std::string(kind) + "/" + name;
}
const char* const kStateKinds[] = {"state0", "state1"};

// The shard directory of a checkpoint: "<file>.d" beside it; each checkpoint gets its own
// subdirectory "s<step>-<token>" (token: unique per write, so a rewrite of the same step never
// touches the shards the committed manifest refers to).
std::filesystem::path shard_root(const std::string& path) { return path + ".d"; }

std::string unique_token() {
  const auto now = std::chrono::system_clock::now().time_since_epoch();
  const auto ns = std::chrono::duration_cast<std::chrono::nanoseconds>(now).count();
  return std::to_string(ns) + "-" + std::to_string(static_cast<long long>(::getpid()));
}

}  // namespace

std::string checkpoint_path(const Config& cfg) {
  return cfg.checkpoint.file.empty() ? cfg.output.file + ".ckpt" : cfg.checkpoint.file;
}

template <typename T>
void save_checkpoint(const std::string& path, std::int64_t step, model::Model<T>& model,
                     Optimizer<T>& opt, const Config& cfg, const comm::Comm& comm) {
  namespace fs = std::filesystem;
  ParamStore<T>& store = model.params();
  io::CheckpointMeta meta;
  meta.step = step;
  meta.optimizer_steps = opt.steps_taken();
  meta.ranks = comm.size();
  meta.precision = to_string(cfg.model.precision);
  meta.config_ini = to_ini(cfg);
  // Rank 0 names this checkpoint's shard directory and creates it; the broadcast orders it
  // before any rank writes into it.
  const fs::path root = shard_root(path);
  const std::string root_name = root.filename().string();
  std::string subdir, problem;
  if (comm.rank() == 0) {
    subdir = "s" + std::to_string(step) + "-" + unique_token();
    std::error_code ec;
    fs::create_directories(root / subdir, ec);
    if (ec) problem = "cannot create '" + (root / subdir).string() + "': " + ec.message();
  }
  comm.bcast(problem, 0);
  if (!problem.empty()) throw std::runtime_error("writing checkpoint: " + problem);
  comm.bcast(subdir, 0);
  const std::string shard_rel =
      root_name + "/" + subdir + "/r" + std::to_string(comm.rank()) + ".h5";
  // Every rank writes the tensors it owns into its own shard, one tensor buffer at a time:
  // no rank ever holds more than its own parameters plus one converted tensor.
  std::string names;  // "<rank>\t<name>\n" lines, for the manifest
  try {
    io::CheckpointWriter shard((root.parent_path() / shard_rel).string());
    std::vector<double> buf;
    auto add = [&](const std::string& name, const auto* v, std::int64_t n) {
      buf.assign(v, v + n);
      shard.add(name, buf);
      names += std::to_string(comm.rank()) + '\t' + name + '\n';
    };
    for (std::size_t id = 0; id < store.entries().size(); ++id) {
      const auto& e = store.entry(static_cast<int>(id));
      // One writer per logical tensor (replicated: rank 0; expert replicas, E < P groups or
      // redundant slots: the first holder; set by the model).
      if (!e.checkpoint_writer) continue;
      add(tensor_name("param", e.name), store.value(static_cast<int>(id)), e.size);
      for (int s = 0; s < opt.state_slots(); ++s)
        add(tensor_name(kStateKinds[s], e.name), opt.state(s, e.kind).data() + e.offset, e.size);
    }
    // Router state: the aux-loss-free expert bias of each layer (identical on every rank).
    if (comm.rank() == 0)
      for (int l = 0; l < model.num_layers(); ++l) {
        const std::span<double> b = model.layer(l).expert_bias();
        add("state/layer" + std::to_string(l) + ".expert_bias", b.data(),
            static_cast<std::int64_t>(b.size()));
        if (model.layer(l).redundant()) {  // redundant experts: slot map and load window
          const auto map = model.layer(l).slot_expert();
          add("state/layer" + std::to_string(l) + ".slot_expert", map.data(),
              static_cast<std::int64_t>(map.size()));
          const std::span<double> w = model.layer(l).eplb_load();
          add("state/layer" + std::to_string(l) + ".eplb_load", w.data(),
              static_cast<std::int64_t>(w.size()));
        }
      }
    shard.commit(meta);
  } catch (const std::exception& e) {
    problem = "rank " + std::to_string(comm.rank()) + ": " + e.what();
  }
  // Any rank's failure fails the checkpoint everywhere; the committed one stays in place.
  const auto failed = comm.allreduce<std::int64_t>(problem.empty() ? 0 : 1, comm::ReduceOp::sum);
  const std::vector<char> all_names =
      comm.gatherv_bytes(failed > 0 ? std::span<const char>(problem.data(), problem.size())
                                    : std::span<const char>(names.data(), names.size()),
                         0);
  if (failed > 0) {
    std::string msg = problem;
    if (comm.rank() == 0) msg.assign(all_names.begin(), all_names.end());
    comm.bcast(msg, 0);
    throw std::runtime_error("writing checkpoint: " + msg);
  }
  // Rank 0 commits: the manifest (shards + the shard of every tensor) renamed into place.
  // Then the shard directories of earlier checkpoints go.
  if (comm.rank() == 0) {
    try {
      io::CheckpointIndex index;
      for (int r = 0; r < comm.size(); ++r)
        index.shard_files.push_back(root_name + "/" + subdir + "/r" + std::to_string(r) + ".h5");
      std::size_t pos = 0;
      while (pos < all_names.size()) {
        const auto tab = static_cast<std::size_t>(
            std::find(all_names.begin() + static_cast<std::ptrdiff_t>(pos), all_names.end(), '\t') -
            all_names.begin());
        const auto nl = static_cast<std::size_t>(
            std::find(all_names.begin() + static_cast<std::ptrdiff_t>(tab), all_names.end(), '\n') -
            all_names.begin());
        index.shard_of.push_back(std::stoi(std::string(all_names.data() + pos, tab - pos)));
        index.names.emplace_back(all_names.data() + tab + 1, nl - tab - 1);
        pos = nl + 1;
      }
      io::write_checkpoint_manifest(path, meta, index);
      // Committed: earlier checkpoints' shards (and those of writes that never committed) go.
      std::error_code ec;
      for (const auto& dir : fs::directory_iterator(root, ec))
        if (dir.path().filename() != subdir) fs::remove_all(dir.path(), ec);
    } catch (const std::exception& e) {
      problem = e.what();
    }
  }
  comm.bcast(problem, 0);
  if (!problem.empty()) throw std::runtime_error("writing checkpoint: " + problem);
}

template <typename T>
std::int64_t load_checkpoint(const std::string& path, model::Model<T>& model, Optimizer<T>& opt,
                             const comm::Comm& comm) {
  std::string problem;
  std::int64_t step = 0, opt_steps = 0;
  try {
    io::CheckpointReader reader(path);
    step = reader.meta().step;
    opt_steps = reader.meta().optimizer_steps;
    ParamStore<T>& store = model.params();
    std::vector<double> buf;
    // Redundant experts: the stored slot map first (it names the tensors each slot reads);
    // a checkpoint of another r (or none) keeps the initial placement and an empty window.
    for (int l = 0; l < model.num_layers(); ++l) {
      if (!model.layer(l).redundant()) continue;
      const std::string n = "state/layer" + std::to_string(l) + ".slot_expert";
      const std::string w = "state/layer" + std::to_string(l) + ".eplb_load";
      const std::span<const std::int64_t> now = model.layer(l).slot_expert();
      std::vector<double> map(now.size());
      std::vector<std::int64_t> slots(now.size());
      const std::span<double> window = model.layer(l).eplb_load();
      bool same_r = false;
      if (reader.has(n)) {
        try {
          reader.read(n, map);
          same_r = true;
        } catch (const std::exception&) {  // another r: the initial placement stays
        }
      }
      if (same_r) {
        for (std::size_t s = 0; s < map.size(); ++s) slots[s] = static_cast<std::int64_t>(map[s]);
        model.layer(l).set_slot_expert(slots);
        if (reader.has(w)) reader.read(w, window);
      } else {
        std::fill(window.begin(), window.end(), 0.0);
      }
    }
    for (std::size_t id = 0; id < store.entries().size(); ++id) {
      const auto& e = store.entry(static_cast<int>(id));
      buf.resize(static_cast<std::size_t>(e.size));
      reader.read(tensor_name("param", e.name), buf);
      T* v = store.value(static_cast<int>(id));
      for (std::int64_t i = 0; i < e.size; ++i)
        v[i] = static_cast<T>(buf[static_cast<std::size_t>(i)]);
      for (int s = 0; s < opt.state_slots(); ++s) {
        const std::string n = tensor_name(kStateKinds[s], e.name);
        if (!reader.has(n))
          throw std::runtime_error("checkpoint '" + path + "' has no optimizer state '" + n +
                                   "' (written with another optimizer?)");
        reader.read(n, buf);
        T* st = opt.state(s, e.kind).data() + e.offset;
        for (std::int64_t i = 0; i < e.size; ++i)
          st[i] = static_cast<T>(buf[static_cast<std::size_t>(i)]);
      }
    }
    opt.set_steps_taken(opt_steps);
    for (int l = 0; l < model.num_layers(); ++l) {
      const std::string n = "state/layer" + std::to_string(l) + ".expert_bias";
      const std::span<double> b = model.layer(l).expert_bias();
      if (reader.has(n))
        reader.read(n, b);
      else if (!b.empty())
        std::fill(b.begin(), b.end(), 0.0);
    }
  } catch (const std::exception& e) {
    problem = "rank " + std::to_string(comm.rank()) + ": " + e.what();
  }
  // Every rank learns whether any rank failed, so none continues alone.
  const auto failed = comm.allreduce<std::int64_t>(problem.empty() ? 0 : 1, comm::ReduceOp::sum);
  if (failed > 0) {
    std::vector<char> msg(problem.begin(), problem.end());
    const std::vector<char> all = comm.gatherv_bytes(msg, 0);
    // A checkpoint that does not fit the model is bad input (exit 2), not a crash.
    throw ConfigError("checkpoint.file", path,
                      "a checkpoint of this model: " +
                          (comm.rank() == 0 ? std::string(all.begin(), all.end()) : problem));
  }
  return step;
}

void install_stop_signal_handlers() {
  struct sigaction sa {};
  sa.sa_handler = on_stop_signal;
  sigemptyset(&sa.sa_mask);
  sigaction(SIGTERM, &sa, nullptr);
  sigaction(SIGUSR1, &sa, nullptr);
}
bool stop_requested() { return g_stop.load() != 0; }
void request_stop() { g_stop.store(1); }
void clear_stop_request() { g_stop.store(0); }

template void save_checkpoint<float>(const std::string&, std::int64_t, model::Model<float>&,
                                     Optimizer<float>&, const Config&, const comm::Comm&);
template void save_checkpoint<double>(const std::string&, std::int64_t, model::Model<double>&,
                                      Optimizer<double>&, const Config&, const comm::Comm&);
template std::int64_t load_checkpoint<float>(const std::string&, model::Model<float>&,
                                             Optimizer<float>&, const comm::Comm&);
template std::int64_t load_checkpoint<double>(const std::string&, model::Model<double>&,
                                              Optimizer<double>&, const comm::Comm&);

}  // namespace moesim::train
