// `moesim calibrate`: micro-benchmarks on the ranks it is given, least-squares alpha-beta
// fits per level, and a machine file (simulate.md) written by rank 0. Every MPI call goes
// through comm::Comm; the GEMMs are the experts' own code path (experts::ExpertBank), the
// pack bandwidth is dispatch::gather_rows, the router cost is routing::Router.
#include <sched.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <ctime>
#include <fstream>
#include <functional>
#include <numeric>
#include <sstream>
#include <thread>
#include <type_traits>

#include "moesim/build_info.hpp"
#include "moesim/cli/cli.hpp"
#include "moesim/data/cluster_task.hpp"
#include "moesim/dispatch/dispatcher.hpp"
#include "moesim/experts/expert_ffn.hpp"
#include "moesim/routing/router.hpp"
#include "moesim/simulate/step_model.hpp"
#include "moesim/train/optimizer.hpp"
#include "moesim/util/params.hpp"
#include "moesim/util/rng.hpp"

namespace moesim::cli {
namespace {

using Clock = std::chrono::steady_clock;
double since(Clock::time_point t0) {
  return std::chrono::duration<double>(Clock::now() - t0).count();
}

using Fit = simulate::LineFit;
constexpr auto fit_line = simulate::fit_hockney;  // alpha from small, beta from large messages

std::string fmt(double v) {
  char buf[64];
  std::snprintf(buf, sizeof buf, "%.6g", v);
  return buf;
}

// One-way time of `bytes` between ranks a and b (ping-pong / 2), others idle.
double pingpong(const comm::Comm& comm, int a, int b, std::size_t bytes, int reps) {
  std::vector<char> buf(std::max<std::size_t>(bytes, 1));
  comm.barrier();
  double t = 0;
  if (comm.rank() == a || comm.rank() == b) {
    const int peer = comm.rank() == a ? b : a;
    for (int warm = 0; warm < 2; ++warm) {
      if (comm.rank() == a) {
        comm.send_bytes(buf.data(), bytes, peer, 7);
        comm.recv_bytes(buf.data(), bytes, peer, 7);
      } else {
        comm.recv_bytes(buf.data(), bytes, peer, 7);
        comm.send_bytes(buf.data(), bytes, peer, 7);
      }
    }
    std::vector<double> ts;  // median round trip: robust to a loaded machine's preemptions
    for (int i = 0; i < reps; ++i) {
      const auto t0 = Clock::now();
      if (comm.rank() == a) {
        comm.send_bytes(buf.data(), bytes, peer, 7);
        comm.recv_bytes(buf.data(), bytes, peer, 7);
      } else {
        comm.recv_bytes(buf.data(), bytes, peer, 7);
        comm.send_bytes(buf.data(), bytes, peer, 7);
      }
      ts.push_back(since(t0));
    }
    std::sort(ts.begin(), ts.end());
    t = ts[ts.size() / 2] / 2.0;
  }
  comm.barrier();
  return comm.allreduce(t, comm::ReduceOp::max);
}

// Median over `reps` of the slowest rank's time of one alltoallv with srows[p] bytes to and
// rrows[p] bytes from each peer p (byte rows). idle > 0: every rank sleeps that many seconds
// after the barrier, so the link idles as it does while experts compute (sleeping, not spinning:
// with more ranks than cores, spinning ranks starve the ones that must send).
double alltoallv_time(const comm::Comm& c, const std::vector<int>& srows,
                      const std::vector<int>& rrows, int reps, double idle = 0) {
  const int P = c.size();
  std::vector<int> sdispl(P), rdispl(P);
  int so = 0, ro = 0;
  for (int p = 0; p < P; ++p) {
    sdispl[static_cast<std::size_t>(p)] = so;
    rdispl[static_cast<std::size_t>(p)] = ro;
    so += srows[static_cast<std::size_t>(p)];
    ro += rrows[static_cast<std::size_t>(p)];
  }
  std::vector<char> sbuf(static_cast<std::size_t>(std::max(so, 1))),
      rbuf(static_cast<std::size_t>(std::max(ro, 1)));
  std::vector<double> times;
  for (int i = -2; i < reps; ++i) {
    c.barrier();
    if (idle > 0) std::this_thread::sleep_for(std::chrono::duration<double>(idle));
    const auto t0 = Clock::now();
    c.alltoallv_rows(sbuf.data(), srows, sdispl, rbuf.data(), rrows, rdispl, 1);
    const double t = c.allreduce(since(t0), comm::ReduceOp::max);
    if (i >= 0) times.push_back(t);
  }
  std::sort(times.begin(), times.end());
  return times[times.size() / 2];
}

// One bank's forward and backward timed `reps` times (after one untimed round): `reset` restores
// the inputs untimed, then a barrier; each repetition counts the slowest rank's own time (the
// statistic runs record), median over repetitions, divided by the bank's `n_exp` experts.
template <typename Reset, typename Fwd, typename Bwd>
void time_fwd_bwd(const comm::Comm& comm, int reps, std::int64_t n_exp, Reset&& reset, Fwd&& fwd,
                  Bwd&& bwd, double& fwd_s, double& bwd_s) {
  std::vector<double> tf, tb;
  for (int i = -1; i < reps; ++i) {
    reset();
    comm.barrier();
    const auto t0 = Clock::now();
    fwd();
    const double a1 = since(t0);
    const auto t1 = Clock::now();
    bwd();
    const double b1 = since(t1);
    if (i >= 0) {
      tf.push_back(a1);
      tb.push_back(b1);
    }
  }
  comm.allreduce(std::span<double>(tf), comm::ReduceOp::max);
  comm.allreduce(std::span<double>(tb), comm::ReduceOp::max);
  std::sort(tf.begin(), tf.end());
  std::sort(tb.begin(), tb.end());
  fwd_s = tf[tf.size() / 2] / static_cast<double>(n_exp);
  bwd_s = tb[tb.size() / 2] / static_cast<double>(n_exp);
}

// FLOP rate of one expert's forward + backward at `rows` rows (the experts' code path), all
// ranks at once. `n_exp` experts (distinct weights and inputs, `rows` each) run back to back as a
// rank's local experts do in a run, so caches hold what they hold there; fwd_s and bwd_s are per
// expert (the bank's time / n_exp). Each repetition starts after a barrier and counts the slowest
// rank's own time, the statistic runs record (every phase is the maximum over ranks of each rank's
// own time); median over repetitions. The same on every rank. (Timing from barrier to barrier
// instead was tried: across emulated nodes it adds the inter-node barrier's latency to every GEMM.)
template <typename T>
double expert_gflops(const Config& cfg, const comm::Comm& comm, std::int64_t d, std::int64_t f,
                     std::int64_t rows, std::int64_t n_exp, int reps, double& fwd_s,
                     double& bwd_s) {
  ParamStore<T> store;
  experts::ExpertBank<T> bank(store, "calibrate", 0, n_exp, d, f, cfg.model.activation, 1.0);
  store.allocate();
  store.initialize(1);
  bank.bind(store);
  const auto n = static_cast<std::size_t>(rows * n_exp);
  std::vector<T> x0(n * static_cast<std::size_t>(d)), x(x0.size()), y(x0.size()), dy(x0.size());
  std::vector<T> h(n * static_cast<std::size_t>(f)), a(h.size());
  const CounterRng rng(1, Stream::data_train, 99);
  for (std::size_t i = 0; i < x0.size(); ++i) {
    x0[i] = static_cast<T>(rng.normal(i));
    dy[i] = static_cast<T>(rng.normal(i + x0.size()));
  }
  std::vector<std::int64_t> offset(static_cast<std::size_t>(n_exp) + 1);
  for (std::size_t e = 0; e < offset.size(); ++e) offset[e] = static_cast<std::int64_t>(e) * rows;
  time_fwd_bwd(
      comm, reps, n_exp, [&] { std::copy(x0.begin(), x0.end(), x.begin()); },
      [&] { bank.forward(x.data(), offset, h.data(), a.data(), y.data()); },
      [&] { bank.backward(x.data(), h.data(), a.data(), dy.data(), offset); }, fwd_s, bwd_s);
  // 2 GEMMs forward + 4 backward, each 2 rows d f FLOP.
  const double flops =
      12.0 * static_cast<double>(rows) * static_cast<double>(d) * static_cast<double>(f);
  return flops / (fwd_s + bwd_s) / 1e9;
}

// The same for bfloat16 experts (mixed precision: bf16 weights and activations, fp32
// accumulation; ExpertBank<float> with bf16 = true, the run's code path). fwd_s, bwd_s per expert.
void expert_times_bf16(const Config& cfg, const comm::Comm& comm, std::int64_t d, std::int64_t f,
                       std::int64_t rows, std::int64_t n_exp, int reps, double& fwd_s,
                       double& bwd_s) {
  using experts::bf16;
  ParamStore<float> store;
  experts::ExpertBank<float> bank(store, "calibrate", 0, n_exp, d, f, cfg.model.activation, 1.0,
                                  ParamKind::expert, true);
  store.allocate();
  store.initialize(1);
  bank.bind(store);
  const auto n = static_cast<std::size_t>(rows * n_exp);
  const auto nd = n * static_cast<std::size_t>(d), nf = n * static_cast<std::size_t>(f);
  std::vector<bf16> x0(nd), x(nd), y16(nd), dy(nd), a(nf);
  std::vector<float> h(nf), y(nd), scratch_f(nf), scratch_d(nd);
  const CounterRng rng(1, Stream::data_train, 98);
  for (std::size_t i = 0; i < nd; ++i) {
    x0[i] = experts::to_bf16(static_cast<float>(rng.normal(i)));
    dy[i] = experts::to_bf16(static_cast<float>(rng.normal(i + nd)));
  }
  std::vector<std::int64_t> offset(static_cast<std::size_t>(n_exp) + 1);
  for (std::size_t e = 0; e < offset.size(); ++e) offset[e] = static_cast<std::int64_t>(e) * rows;
  time_fwd_bwd(
      comm, reps, n_exp, [&] { std::copy(x0.begin(), x0.end(), x.begin()); },
      [&] { bank.forward_bf16(x.data(), offset, h.data(), a.data(), y.data(), y16.data()); },
      [&] {
        bank.backward_bf16(x.data(), h.data(), a.data(), scratch_f.data(), dy.data(), offset,
                           scratch_d.data());
      },
      fwd_s, bwd_s);
}

std::string hostname() {
  char buf[256] = {0};
  if (gethostname(buf, sizeof buf - 1) != 0) return "unknown";
  return buf;
}

// The running kernel's boot id: equal on every rank of one physical machine, network namespaces
// (emulated nodes) included; "" if unreadable.
std::string boot_id() {
  std::ifstream in("/proc/sys/kernel/random/boot_id");
  std::string id;
  std::getline(in, id);
  return id;
}

// CPUs this process may run on (its affinity mask; --bind-to none: the machine's).
std::int64_t usable_cpus() {
  cpu_set_t set;
  CPU_ZERO(&set);
  if (sched_getaffinity(0, sizeof set, &set) == 0) return CPU_COUNT(&set);
  return static_cast<std::int64_t>(std::thread::hardware_concurrency());
}

std::string utc() {
  const std::time_t t = std::time(nullptr);
  std::tm tm{};
  gmtime_r(&t, &tm);
  char buf[32];
  std::strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%SZ", &tm);
  return buf;
}

}  // namespace

int run_calibrate(const Config& cfg, const comm::Comm& comm) {
  const int P = comm.size();
  if (P < 2)
    throw ConfigError("(MPI ranks)", std::to_string(P),
                      "moesim calibrate needs >= 2 ranks (mpirun -n 2 moesim calibrate ...)");
  // The output path is checked on rank 0 before any measurement.
  std::string problem;
  if (comm.rank() == 0) {
    std::ofstream probe(cfg.cluster.output, std::ios::app);
    if (!probe) problem = "cannot be opened for writing";
  }
  comm.bcast(problem, 0);
  if (!problem.empty()) throw ConfigError("cluster.output", cfg.cluster.output, problem);

  // Nodes: ranks that share memory (MPI_COMM_TYPE_SHARED).
  const comm::Comm node = comm.split_shared();
  std::int64_t leader = comm.rank();
  node.bcast(std::span<std::int64_t>(&leader, 1), 0);
  std::vector<std::int64_t> leaders(static_cast<std::size_t>(P));
  comm.gather(std::span<const std::int64_t>(&leader, 1), std::span<std::int64_t>(leaders), 0);
  std::int64_t peers[3] = {-1, -1, 0};  // intra peer of rank 0, inter peer, node count
  if (comm.rank() == 0) {
    std::vector<std::int64_t> distinct = leaders;
    std::sort(distinct.begin(), distinct.end());
    distinct.erase(std::unique(distinct.begin(), distinct.end()), distinct.end());
    peers[2] = static_cast<std::int64_t>(distinct.size());
    for (int r = 1; r < P; ++r) {
      if (leaders[static_cast<std::size_t>(r)] == leaders[0] && peers[0] < 0) peers[0] = r;
      if (leaders[static_cast<std::size_t>(r)] != leaders[0] && peers[1] < 0) peers[1] = r;
    }
  }
  comm.bcast(std::span<std::int64_t>(peers, 3), 0);
  const std::int64_t nodes = peers[2];
  const std::int64_t R =
      comm.allreduce(static_cast<std::int64_t>(node.size()), comm::ReduceOp::max);
  std::ostringstream notes;
  auto say = [&](const std::string& s) {
    if (comm.rank() == 0) {
      std::printf("%s\n", s.c_str());
      std::fflush(stdout);
    }
    notes << "# " << s << "\n";
  };
  // Ranks sharing one machine's cores: every rank has the same boot id, and either the "nodes"
  // are emulated (several MPI_COMM_TYPE_SHARED groups on one kernel: network namespaces) or the
  // ranks outnumber the CPUs. Then the expert times below are timed with all ranks busy on those
  // cores, and simulate shares them out (cluster.shared_cores). One real node with a core per rank
  // writes 0: a machine file calibrated on one node of a cluster is projected to many nodes,
  // whose ranks do not share that node's cores.
  std::int64_t shared_cores = 0;
  {
    const std::string id = boot_id();
    const auto h = static_cast<std::int64_t>(std::hash<std::string>{}(id) >> 1);
    const std::int64_t lo = comm.allreduce(h, comm::ReduceOp::min);
    const std::int64_t hi = comm.allreduce(h, comm::ReduceOp::max);
    const std::int64_t cpus = comm.allreduce(usable_cpus(), comm::ReduceOp::max);
    const std::int64_t unknown =
        comm.allreduce(static_cast<std::int64_t>(id.empty() ? 1 : 0), comm::ReduceOp::max);
    if (lo == hi && unknown == 0 && (nodes >= 2 || P > cpus)) shared_cores = cpus;
  }
  say("moesim calibrate on " + hostname() + " at " + utc() + ": " + std::to_string(P) + " ranks, " +
      std::to_string(nodes) + " node(s), up to " + std::to_string(R) +
      " ranks per node (MPI_COMM_TYPE_SHARED); moesim " + MOESIM_VERSION + " git " +
      MOESIM_GIT_COMMIT);
  say(shared_cores > 0 ? "all ranks on one machine (one boot id): they share its " +
                             std::to_string(shared_cores) + " cores"
                       : std::string("a core per rank (several machines, or one node with at "
                                     "least as many CPUs as ranks)"));

  const std::vector<std::size_t> sizes{8, 512, 4096, 32768, 262144, 1048576, 4194304};
  auto level_pingpong = [&](int peer, const char* level, Fit& fit) {
    std::vector<double> x, y;
    for (std::size_t b : sizes) {
      const int reps = b <= 32768 ? 200 : b <= 1048576 ? 31 : 11;
      const double t = pingpong(comm, 0, peer, b, reps);
      x.push_back(static_cast<double>(b));
      y.push_back(t);
      say(std::string("ping-pong ") + level + " " + std::to_string(b) + " B: " + fmt(t * 1e6) +
          " us one way");
    }
    fit = fit_line(x, y);
    say(std::string("ping-pong ") + level + " fit: alpha " + fmt(fit.a * 1e6) + " us, beta " +
        fmt(1e-9 / fit.b) + " GB/s, relative RMS residual " + fmt(fit.rel_rms));
  };
  Fit pp_intra, pp_inter;
  if (peers[0] > 0) level_pingpong(static_cast<int>(peers[0]), "intra", pp_intra);
  if (peers[1] > 0) level_pingpong(static_cast<int>(peers[1]), "inter", pp_inter);

  // Alltoallv inside a node (the modelled operation): uniform and skewed blocks.
  // Regression t = a + bytes_busiest * b with a = alpha * (R - 1) messages.
  Fit a2a;
  double a2a_msgs = 1;
  const std::int64_t single =
      comm.allreduce(static_cast<std::int64_t>(node.size() < 2 ? 1 : 0), comm::ReduceOp::max);
  if (single == 0) {  // every node has >= 2 ranks (collective decision)
    std::vector<double> x, y;
    const int rn = node.size();
    a2a_msgs = rn - 1;
    for (std::size_t b : {64UL, 1024UL, 16384UL, 131072UL, 1048576UL}) {
      for (double skew : {1.0, 4.0}) {
        // `b` bytes to every other rank of the node, `skew` times that to the next one.
        std::vector<int> srows(static_cast<std::size_t>(rn)), rrows(srows.size());
        const int me = node.rank(), row = static_cast<int>(b);
        const int heavy = static_cast<int>(std::lround(row * skew));
        for (int p = 0; p < rn; ++p) {
          srows[static_cast<std::size_t>(p)] = p == me ? 0 : (p == (me + 1) % rn ? heavy : row);
          rrows[static_cast<std::size_t>(p)] =
              p == me ? 0 : (p == (me + rn - 1) % rn ? heavy : row);
        }
        const double busiest = node.allreduce(
            static_cast<double>(std::max(std::accumulate(srows.begin(), srows.end(), 0),
                                         std::accumulate(rrows.begin(), rrows.end(), 0))),
            comm::ReduceOp::max);
        const int reps = b <= 16384 ? 101 : 21;
        const double t = alltoallv_time(node, srows, rrows, reps);
        // Every node measures; the slowest node's numbers are used.
        const double tm = comm.allreduce(t, comm::ReduceOp::max);
        const double bm = comm.allreduce(busiest, comm::ReduceOp::max);
        x.push_back(bm);
        y.push_back(tm);
        say("alltoallv intra " + std::to_string(rn) + " ranks, " + std::to_string(b) +
            " B per peer, skew " + fmt(skew) + ": busiest endpoint " + fmt(bm) + " B, " +
            fmt(tm * 1e6) + " us");
      }
    }
    a2a = fit_line(x, y);
    say("alltoallv intra fit: alpha " + fmt(a2a.a / a2a_msgs * 1e6) + " us per message, beta " +
        fmt(1e-9 / a2a.b) + " GB/s per rank, relative RMS residual " + fmt(a2a.rel_rms));
  }

  // Alltoallv across nodes (the modelled operation at the inter level): every rank sends `b`
  // bytes to each rank on another node and nothing inside its node, `skew` times that to its
  // first inter-node peer in rank order. The model's inter level is messages x alpha + the
  // busiest node's max(out, in) bytes / beta (the NIC is shared), so the fit is
  // t = a + node_bytes b with a = alpha x (inter-node peers of the busiest rank). Ping-pong (one
  // flow, one direction at a time) stays in the notes: it is no NIC shared by R ranks moving
  // data both ways at once, which is what the dispatch does.
  Fit a2a_inter;
  simulate::BucketFit bucket;
  double inter_msgs = 1;
  if (nodes >= 2) {
    std::vector<std::int64_t> leader_of(static_cast<std::size_t>(P));
    if (comm.rank() == 0) leader_of = leaders;
    comm.bcast(std::span<std::int64_t>(leader_of), 0);
    const auto other_node = [&](int a, int b) {
      return leader_of[static_cast<std::size_t>(a)] != leader_of[static_cast<std::size_t>(b)];
    };
    const auto heavy_target = [&](int r) {
      for (int k = 1; k < P; ++k)
        if (other_node(r, (r + k) % P)) return (r + k) % P;
      return -1;
    };
    const int me = comm.rank();
    inter_msgs = comm.allreduce(static_cast<double>(P - node.size()), comm::ReduceOp::max);
    std::vector<double> x, y;
    for (std::size_t b : {64UL, 1024UL, 16384UL, 131072UL, 1048576UL}) {
      for (double skew : {1.0, 4.0}) {
        const int row = static_cast<int>(b), heavy = static_cast<int>(std::lround(row * skew));
        std::vector<int> srows(static_cast<std::size_t>(P), 0), rrows(srows.size(), 0);
        for (int p = 0; p < P; ++p) {
          if (!other_node(me, p)) continue;
          srows[static_cast<std::size_t>(p)] = p == heavy_target(me) ? heavy : row;
          rrows[static_cast<std::size_t>(p)] = heavy_target(p) == me ? heavy : row;
        }
        double io[2] = {static_cast<double>(std::accumulate(srows.begin(), srows.end(), 0)),
                        static_cast<double>(std::accumulate(rrows.begin(), rrows.end(), 0))};
        node.allreduce(std::span<double>(io, 2), comm::ReduceOp::sum);  // the node's out, in
        const double node_bytes = comm.allreduce(std::max(io[0], io[1]), comm::ReduceOp::max);
        const int reps = b <= 16384 ? 51 : 11;
        const double t = alltoallv_time(comm, srows, rrows, reps);
        x.push_back(node_bytes);
        y.push_back(t);
        say("alltoallv inter " + std::to_string(P) + " ranks, " + std::to_string(b) +
            " B per inter-node peer, skew " + fmt(skew) + ": busiest node " + fmt(node_bytes) +
            " B, " + fmt(t * 1e6) + " us");
      }
    }
    a2a_inter = fit_line(x, y);
    say("alltoallv inter fit: alpha " + fmt(a2a_inter.a / inter_msgs * 1e6) +
        " us per message, beta " + fmt(1e-9 / a2a_inter.b) +
        " GB/s per node, relative RMS residual " + fmt(a2a_inter.rel_rms));

    // A burstable link (token bucket): a uniform exchange between one rank per node at
    // busiest-node sizes 16 KiB .. 8 MiB, back-to-back and after 30 ms of idle link; what the
    // idle time saves is fitted as c + k min(S, S_1) (simulate::fit_bucket). One rank per node,
    // the others waiting: the bucket belongs to the node's link, and with more ranks than cores
    // the idle-link timings were too erratic to fit (2 x 2 ranks on 2 cores: no plateau in two
    // of two tries). 30 ms refill 30 ms x beta: a larger bucket is measured as what refilled.
    const comm::Comm heads = comm.split(node.rank() == 0 ? 0 : 1, comm.rank());
    if (node.rank() == 0) {
      const int H = heads.size();
      std::vector<double> sz, t_busy, t_idle;
      for (int i = 0; i < 10; ++i) {
        const double target = 16384.0 * std::pow(2.0, i);  // bytes out of (and into) each node
        const int row = std::max(1, static_cast<int>(std::lround(target / (H - 1))));
        std::vector<int> rows(static_cast<std::size_t>(H), row);
        rows[static_cast<std::size_t>(heads.rank())] = 0;
        const double busy = alltoallv_time(heads, rows, rows, 7);
        const double idle = alltoallv_time(heads, rows, rows, 7, 0.03);
        sz.push_back(static_cast<double>(row) * (H - 1));
        t_busy.push_back(busy);
        t_idle.push_back(idle);
        say("alltoallv inter, one rank per node, " + fmt(sz.back()) + " B per node: back-to-back " +
            fmt(busy * 1e6) + " us, after 30 ms idle " + fmt(idle * 1e6) + " us");
      }
      // the link's rate for one flow per node, from these back-to-back times (the layout's
      // alltoallv beta above includes R flows sharing the link)
      const Fit one = fit_line(sz, t_busy);
      bucket =
          simulate::fit_bucket(sz, t_busy, t_idle, one.b > 0 ? 1.0 / one.b : 1.0 / a2a_inter.b);
      say(bucket.accepted
              ? "inter-node token bucket: " + fmt(bucket.bytes) + " B per node at " +
                    fmt(bucket.beta_burst / 1e9) + " GB/s (saving k " + fmt(bucket.k * 1e9) +
                    " ns/B up to " + fmt(bucket.knee) + " B, after-idle constant " +
                    fmt(bucket.c * 1e6) + " us, relative RMS residual " + fmt(bucket.rel_rms) + ")"
              : std::string("inter-node token bucket: none (the idle link saves no time, or "
                            "no plateau in 16 KiB .. 8 MiB)"));
    }
    comm.barrier_sleeping(0.005);  // the other ranks wait without taking a core
  }

  // Allreduce (reference for the ring/tree model; not fitted into the machine file).
  for (std::size_t n : {128UL, 16384UL, 1048576UL}) {
    std::vector<float> v(n, 1.0f);
    std::vector<double> ts;
    for (int i = -2; i < 10; ++i) {
      comm.barrier();
      const auto t0 = Clock::now();
      comm.allreduce(std::span<float>(v), comm::ReduceOp::sum);
      const double t = comm.allreduce(since(t0), comm::ReduceOp::max);
      if (i >= 0) ts.push_back(t);
    }
    std::sort(ts.begin(), ts.end());
    say("allreduce " + std::to_string(n * 4) + " B on " + std::to_string(P) +
        " ranks: " + fmt(ts[ts.size() / 2] * 1e6) + " us (median)");
  }

  // Pack bandwidth (dispatch::gather_rows), all ranks at once: bytes read + written / s.
  double mem_bw = 0;
  {
    const std::int64_t width = cfg.model.d_model,
                       rows = std::max<std::int64_t>(16384, (8 << 20) / (4 * width));
    std::vector<float> in(static_cast<std::size_t>(rows * width), 1.0f), out(in.size());
    std::vector<std::int32_t> idx(static_cast<std::size_t>(rows));
    for (std::int64_t i = 0; i < rows; ++i)
      idx[static_cast<std::size_t>(i)] = static_cast<std::int32_t>((i * 7919) % rows);
    std::vector<double> ts;
    for (int i = -1; i < 8; ++i) {
      comm.barrier();
      const auto t0 = Clock::now();
      dispatch::gather_rows(in.data(), idx.data(), rows, width, out.data());
      const double t = since(t0);
      if (i >= 0) ts.push_back(t);
    }
    std::sort(ts.begin(), ts.end());
    const double bw = 2.0 * static_cast<double>(rows * width) * 4.0 / ts[ts.size() / 2];
    mem_bw = comm.allreduce(bw, comm::ReduceOp::sum) / P;
    say("pack (gather_rows) " + std::to_string(rows) + " rows x " + std::to_string(width) +
        " float32, all ranks at once: " + fmt(mem_bw / 1e9) + " GB/s per rank (mean)");
  }

  // Expert GEMMs at this config's shapes (forward 2 GEMMs + backward 4), all ranks at once.
  const std::int64_t E = cfg.routing.num_experts;
  const std::int64_t typical = std::max<std::int64_t>(
      16, cfg.data.tokens_per_step * cfg.routing.k / std::max<std::int64_t>(E, 1) / P);
  const std::int64_t d_model = cfg.model.d_model, d_ff = cfg.model.d_ff;
  std::vector<std::int64_t> shapes{std::max<std::int64_t>(8, typical / 8), typical, typical * 4};
  double gflops = 0, gflops64 = 0, spread = 0;
  {
    std::vector<double> rates;
    for (std::int64_t rows : shapes) {
      double fw = 0, bw = 0;
      comm.barrier();
      const double rm = expert_gflops<float>(cfg, comm, d_model, d_ff, rows, 1, 9, fw, bw);
      rates.push_back(rm);
      say("expert GEMMs float32 rows " + std::to_string(rows) + " d_model " +
          std::to_string(cfg.model.d_model) + " d_ff " + std::to_string(cfg.model.d_ff) + ": fwd " +
          fmt(fw * 1e3) + " ms, bwd " + fmt(bw * 1e3) + " ms, " + fmt(rm) +
          " GFLOP/s per rank (all ranks at once, slowest rank per repetition, median)");
    }
    gflops = rates[1];
    double s = 0;
    for (double r : rates) s += (r - gflops) * (r - gflops) / (gflops * gflops);
    spread = std::sqrt(s / static_cast<double>(rates.size()));
    double fw = 0, bw = 0;
    comm.barrier();
    gflops64 = expert_gflops<double>(cfg, comm, d_model, d_ff, typical, 1, 9, fw, bw);
    say("expert GEMMs float64 rows " + std::to_string(typical) + ": " + fmt(gflops64) +
        " GFLOP/s per rank");
  }

  // The expert-time table (cluster.expert_table): one expert's forward and backward at rows
  // 8, 16, 32, ... for the config's shape and cluster.calibrate_expert_shapes, in float32,
  // float64 and bfloat16 (mixed precision; even d_model only), timed as a bank of the rank's E/P
  // local experts (at most 16), all ranks at once, the same statistic as above. Rows double up to
  // 8x the typical rows per expert (a skewed or capacity-padded expert gets several times the
  // mean) and stop early once the bank's forward + backward takes more than 50 ms; beyond the last
  // point the model extrapolates linearly (curve_time).
  std::ostringstream table;
  {
    auto shapes_to_time = parse_expert_shapes(cfg.cluster.calibrate_expert_shapes);
    shapes_to_time.insert(shapes_to_time.begin(), {d_model, d_ff});
    std::sort(shapes_to_time.begin(), shapes_to_time.end());
    shapes_to_time.erase(std::unique(shapes_to_time.begin(), shapes_to_time.end()),
                         shapes_to_time.end());
    const std::int64_t top = std::max<std::int64_t>(64, 8 * typical);
    const std::int64_t local = std::clamp<std::int64_t>(E / P, 1, 16);  // experts per rank
    // T = void: bfloat16 (mixed precision, expert_times_bf16).
    const auto time_shape = [&]<typename T>(const char* prec, std::int64_t d, std::int64_t f) {
      for (std::int64_t rows = 8;; rows *= 2) {
        double fw = 0, bw = 0;
        comm.barrier();
        if constexpr (std::is_void_v<T>)
          expert_times_bf16(cfg, comm, d, f, rows, local, 5, fw, bw);
        else
          (void)expert_gflops<T>(cfg, comm, d, f, rows, local, 5, fw, bw);
        if (!table.str().empty()) table << "; ";
        table << prec << " " << d << "x" << f << " " << rows << " " << fmt(fw * 1e3) << " "
              << fmt(bw * 1e3);
        if (rows >= top || static_cast<double>(local) * (fw + bw) > 0.05) {
          say(std::string("expert table ") + prec + " " + std::to_string(d) + "x" +
              std::to_string(f) + ": rows 8.." + std::to_string(rows) + ", at " +
              std::to_string(rows) + " rows fwd " + fmt(fw * 1e3) + " ms, bwd " + fmt(bw * 1e3) +
              " ms");
          break;
        }
      }
    };
    for (const auto& [d, f] : shapes_to_time) {
      time_shape.operator()<float>("float32", d, f);
      time_shape.operator()<double>("float64", d, f);
      if (d % 2 == 0) time_shape.operator()<void>("bfloat16", d, f);  // bf16 needs an even d
    }
  }

  // Router work per token x expert (softmax, rule, drop policy), the router's own code.
  double route_ns = 0;
  {
    RoutingConfig rc = cfg.routing;
    const std::int64_t S = rc.group_size > 0 ? rc.group_size : 1024;
    const routing::Router router(rc, S);
    std::vector<double> logits(static_cast<std::size_t>(S * E)), probs(logits.size());
    const CounterRng rng(3, Stream::data_train, 5);
    for (std::size_t i = 0; i < logits.size(); ++i) logits[i] = rng.normal(i);
    routing::GroupRouting gr;
    std::vector<double> ts;
    for (int i = -2; i < 20; ++i) {
      const auto t0 = Clock::now();
      router.route(logits, probs, true, gr);
      if (i >= 0) ts.push_back(since(t0));
    }
    std::sort(ts.begin(), ts.end());
    route_ns = comm.allreduce(ts[ts.size() / 2], comm::ReduceOp::sum) / P /
               static_cast<double>(S * E) * 1e9;
    say("router " + std::string(to_string(rc.rule)) + " S " + std::to_string(S) + " E " +
        std::to_string(E) + ": " + fmt(route_ns) + " ns per token x expert");
  }

  // Optimizer step per parameter (train::Optimizer, the run's own code), all ranks at once.
  double opt_ns = 0;
  {
    const std::int64_t n = 1 << 20;
    ParamStore<float> store;
    store.add("calibrate.p", ParamKind::expert, n, 0.02);
    store.allocate();
    store.initialize(1);
    for (float& g : store.grads(ParamKind::expert)) g = 1e-3f;
    train::Optimizer<float> opt(cfg.training, store);
    std::vector<double> ts;
    for (int i = -1; i < 9; ++i) {
      comm.barrier();
      const auto t0 = Clock::now();
      opt.step(store);
      if (i >= 0) ts.push_back(since(t0));
    }
    std::sort(ts.begin(), ts.end());
    opt_ns =
        comm.allreduce(ts[ts.size() / 2], comm::ReduceOp::sum) / P / static_cast<double>(n) * 1e9;
    say(std::string("optimizer ") + to_string(cfg.training.optimizer) + " over " +
        std::to_string(n) + " float32 parameters: " + fmt(opt_ns) + " ns per parameter");
  }

  // The synthetic batch (data::ClusterTask::generate, the run's own code) per token x input
  // feature: a rank's share of data.tokens_per_step (at least 1024 tokens), all ranks at once,
  // slowest rank per repetition, median.
  double data_ns = 0;
  {
    const data::ClusterTask task(cfg.data, cfg.training.seed);
    const std::int64_t n = std::max<std::int64_t>(1024, cfg.data.tokens_per_step / P);
    const std::int64_t D = task.input_dim();
    std::vector<float> xs(static_cast<std::size_t>(n * D));
    std::vector<std::int32_t> ys(static_cast<std::size_t>(n));
    std::vector<double> ts;
    for (int i = -1; i < 9; ++i) {
      comm.barrier();
      const auto t0 = Clock::now();
      task.generate(Stream::data_train, (i + 1) * n * P + comm.rank() * n, n, xs.data(), ys.data(),
                    nullptr);
      if (i >= 0) ts.push_back(since(t0));
    }
    comm.allreduce(std::span<double>(ts), comm::ReduceOp::max);
    std::sort(ts.begin(), ts.end());
    data_ns = ts[ts.size() / 2] / static_cast<double>(n * D) * 1e9;
    say("data batch " + cfg.data.task + " " + std::to_string(n) + " tokens x " + std::to_string(D) +
        " features: " + fmt(data_ns) + " ns per value");
  }

  if (comm.rank() == 0) {
    const bool has_a2a = a2a.b > 0;
    const double intra_alpha = has_a2a ? a2a.a / a2a_msgs : pp_intra.a;
    const double intra_beta = has_a2a ? 1.0 / a2a.b : (pp_intra.b > 0 ? 1.0 / pp_intra.b : 10e9);
    std::ostringstream ini;
    ini << "# Machine file written by `moesim calibrate` (the measurements are below).\n";
    ini << "# intra level: alltoallv fit (busiest endpoint bytes) when >= 2 ranks share a node,\n"
           "# else ping-pong. inter level: alltoallv across nodes (busiest node's bytes: the\n"
           "# NIC is shared); without a second node the inter keys repeat the intra fit (not\n"
           "# measured).\n";
    ini << notes.str();
    ini << "\n[cluster]\n";
    ini << "name = " << hostname() << "\n";
    ini << "measured = moesim calibrate " << utc() << " on " << P << " ranks, " << nodes
        << " node(s)\n";
    ini << "ranks_per_node = " << R << "\n";
    ini << "intra_latency_us = " << fmt(intra_alpha * 1e6) << "\n";
    ini << "intra_bandwidth_GBps = " << fmt(intra_beta / 1e9) << "\n";
    if (a2a_inter.b > 0) {
      ini << "inter_latency_us = " << fmt(a2a_inter.a / inter_msgs * 1e6) << "\n";
      ini << "inter_bandwidth_GBps = " << fmt(1e-9 / a2a_inter.b) << "\n";
      ini << "inter_fit_rel_rms = " << fmt(a2a_inter.rel_rms) << "\n";
      ini << "inter_burst_bytes = " << fmt(bucket.bytes) << "\n";
      ini << "inter_burst_GBps = " << fmt(bucket.beta_burst / 1e9) << "\n";
    } else if (peers[1] > 0) {
      ini << "inter_latency_us = " << fmt(pp_inter.a * 1e6) << "\n";
      ini << "inter_bandwidth_GBps = " << fmt(1e-9 / pp_inter.b) << "\n";
      ini << "inter_fit_rel_rms = " << fmt(pp_inter.rel_rms) << "\n";
    } else {
      ini << "inter_latency_us = " << fmt(intra_alpha * 1e6) << "\n";
      ini << "inter_bandwidth_GBps = " << fmt(intra_beta / 1e9) << "\n";
    }
    ini << "gemm_GFLOPs = " << fmt(gflops) << "\n";
    ini << "gemm_GFLOPs_float64 = " << fmt(gflops64) << "\n";
    ini << "memory_bandwidth_GBps = " << fmt(mem_bw / 1e9) << "\n";
    ini << "route_ns_per_score = " << fmt(route_ns) << "\n";
    ini << "optimizer_ns_per_param = " << fmt(opt_ns) << "\n";
    ini << "data_ns_per_value = " << fmt(data_ns) << "\n";
    ini << "shared_cores = " << shared_cores << "\n";
    ini << "intra_fit_rel_rms = " << fmt(has_a2a ? a2a.rel_rms : pp_intra.rel_rms) << "\n";
    ini << "gemm_fit_rel_rms = " << fmt(spread) << "\n";
    ini << "expert_table = " << table.str() << "\n";
    std::ofstream out(cfg.cluster.output, std::ios::trunc);
    out << ini.str();
    out.close();
    if (!out) throw ConfigError("cluster.output", cfg.cluster.output, "a writable file path");
    std::printf("wrote %s\n", cfg.cluster.output.c_str());
  }
  comm.barrier();
  return 0;
}

}  // namespace moesim::cli
