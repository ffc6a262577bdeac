// Checkpoint save/load and stop signals (checkpoint.hpp).
#include "moesim/train/checkpoint.hpp"

#include <algorithm>
#include <atomic>
#include <csignal>
#include <cstring>
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

// Flat byte stream of (name, values) pairs for the gather to rank 0.
void put(std::vector<char>& out, const std::string& name, const double* v, std::uint64_t n) {
  const auto len = static_cast<std::uint32_t>(name.size());
  out.insert(out.end(), reinterpret_cast<const char*>(&len),
             reinterpret_cast<const char*>(&len) + sizeof len);
  out.insert(out.end(), name.begin(), name.end());
  out.insert(out.end(), reinterpret_cast<const char*>(&n),
             reinterpret_cast<const char*>(&n) + sizeof n);
  out.insert(out.end(), reinterpret_cast<const char*>(v), reinterpret_cast<const char*>(v + n));
}

std::vector<io::CheckpointEntry> parse(const std::vector<char>& bytes) {
  std::vector<io::CheckpointEntry> out;
  std::size_t pos = 0;
  while (pos < bytes.size()) {
    std::uint32_t len = 0;
    std::memcpy(&len, bytes.data() + pos, sizeof len);
    pos += sizeof len;
    io::CheckpointEntry e;
    e.name.assign(bytes.data() + pos, len);
    pos += len;
    std::uint64_t n = 0;
    std::memcpy(&n, bytes.data() + pos, sizeof n);
    pos += sizeof n;
    e.data.resize(n);
    std::memcpy(e.data.data(), bytes.data() + pos, n * sizeof(double));
    pos += n * sizeof(double);
    out.push_back(std::move(e));
  }
  return out;
}

}  // namespace

std::string checkpoint_path(const Config& cfg) {
  return cfg.checkpoint.file.empty() ? cfg.output.file + ".ckpt" : cfg.checkpoint.file;
}

template <typename T>
void save_checkpoint(const std::string& path, std::int64_t step, model::Model<T>& model,
                     Optimizer<T>& opt, const Config& cfg, const comm::Comm& comm) {
  ParamStore<T>& store = model.params();
  std::vector<char> bytes;
  std::vector<double> buf;
  for (std::size_t id = 0; id < store.entries().size(); ++id) {
    const auto& e = store.entry(static_cast<int>(id));
    // One writer per logical tensor (replicated: rank 0; expert replicas, E < P groups or
    // redundant slots: the first holder; set by the model).
    if (!e.checkpoint_writer) continue;
    buf.assign(store.value(static_cast<int>(id)), store.value(static_cast<int>(id)) + e.size);
    put(bytes, tensor_name("param", e.name), buf.data(), buf.size());
    for (int s = 0; s < opt.state_slots(); ++s) {
      const T* st = opt.state(s, e.kind).data() + e.offset;
      buf.assign(st, st + e.size);
      put(bytes, tensor_name(kStateKinds[s], e.name), buf.data(), buf.size());
    }
  }
  // Router state: the aux-loss-free expert bias of each layer (identical on every rank).
  if (comm.rank() == 0)
    for (int l = 0; l < model.num_layers(); ++l) {
      const std::span<double> b = model.layer(l).expert_bias();
      put(bytes, "state/layer" + std::to_string(l) + ".expert_bias", b.data(), b.size());
      if (model.layer(l).redundant()) {  // redundant experts: slot map and load window
        const auto map = model.layer(l).slot_expert();
        buf.assign(map.begin(), map.end());
        put(bytes, "state/layer" + std::to_string(l) + ".slot_expert", buf.data(), buf.size());
        const std::span<double> w = model.layer(l).eplb_load();
        put(bytes, "state/layer" + std::to_string(l) + ".eplb_load", w.data(), w.size());
      }
    }
  const std::vector<char> all = comm.gatherv_bytes(bytes, 0);
  std::string problem;
  if (comm.rank() == 0) {
    io::CheckpointMeta meta;
    meta.step = step;
    meta.optimizer_steps = opt.steps_taken();
    meta.ranks = comm.size();
    meta.precision = to_string(cfg.model.precision);
    meta.config_ini = to_ini(cfg);
    try {
      io::write_checkpoint(path, meta, parse(all));
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
