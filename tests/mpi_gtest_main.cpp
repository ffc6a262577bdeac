// GoogleTest main for MPI tests: every rank runs every test; the result is combined over
// ranks so a failure anywhere fails everywhere; only rank 0 prints. A fatal failure on one
// rank aborts the job (MPI_Abort) so peers never wait forever in a collective.
#include <gtest/gtest.h>
// Only the C API: keep Open MPI's deprecated C++ bindings (and their warnings) out.
#define OMPI_SKIP_MPICXX 1
#define MPICH_SKIP_MPICXX 1
#include <mpi.h>

#include <cstdio>

namespace {
class AbortOnFatalFailure : public testing::EmptyTestEventListener {
  void OnTestPartResult(const testing::TestPartResult& r) override {
    if (r.fatally_failed()) {
      int size = 1;
      MPI_Comm_size(MPI_COMM_WORLD, &size);
      if (size > 1) {
        std::fprintf(stderr, "fatal test failure on a rank: %s:%d %s\n",
                     r.file_name() ? r.file_name() : "?", r.line_number(), r.summary());
        std::fflush(stderr);
        MPI_Abort(MPI_COMM_WORLD, 1);
      }
    }
  }
};
}  // namespace

int main(int argc, char** argv) {
  MPI_Init(&argc, &argv);
  testing::InitGoogleTest(&argc, argv);
  int rank = 0;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  auto& listeners = testing::UnitTest::GetInstance()->listeners();
  if (rank != 0) delete listeners.Release(listeners.default_result_printer());
  listeners.Append(new AbortOnFatalFailure);
  int local = RUN_ALL_TESTS();
  int global = 0;
  MPI_Allreduce(&local, &global, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD);
  if (rank == 0 && global != local) std::fprintf(stderr, "a test failed on another rank\n");
  MPI_Finalize();
  return global;
}
