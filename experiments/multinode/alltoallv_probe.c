// Step-1 check of the emulated cluster (docs/multinode_cluster.md): which emulated node each rank
// is on (host name and MPI_Comm_split_type(SHARED)), and the time of an MPI_Alltoallv of 1 KiB and
// 2 MiB per rank (bytes split evenly over the peers; median-free mean over the iterations, max
// over ranks). Built by run_study.sh with mpicc (an experiment tool, not part of the library).
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

int main(int argc, char** argv) {
  MPI_Init(&argc, &argv);
  int r, p;
  MPI_Comm_rank(MPI_COMM_WORLD, &r);
  MPI_Comm_size(MPI_COMM_WORLD, &p);
  char h[256];
  gethostname(h, sizeof h);
  MPI_Comm node;
  MPI_Comm_split_type(MPI_COMM_WORLD, MPI_COMM_TYPE_SHARED, 0, MPI_INFO_NULL, &node);
  int nr, ns;
  MPI_Comm_rank(node, &nr);
  MPI_Comm_size(node, &ns);
  printf("rank %d host %s node-local %d/%d\n", r, h, nr, ns);
  fflush(stdout);
  MPI_Barrier(MPI_COMM_WORLD);
  const long sizes[2] = {1024, 2 * 1024 * 1024};
  for (int s = 0; s < 2; s++) {
    const long per = sizes[s] / p;
    char* sb = malloc(sizes[s]);
    char* rb = malloc(sizes[s]);
    memset(sb, 1, sizes[s]);
    int* c = malloc(p * sizeof(int));
    int* d = malloc(p * sizeof(int));
    for (int i = 0; i < p; i++) {
      c[i] = (int)per;
      d[i] = (int)(i * per);
    }
    const int it = s ? 20 : 200;
    for (int w = 0; w < 5; w++) MPI_Alltoallv(sb, c, d, MPI_BYTE, rb, c, d, MPI_BYTE, MPI_COMM_WORLD);
    MPI_Barrier(MPI_COMM_WORLD);
    double t = MPI_Wtime();
    for (int i = 0; i < it; i++) MPI_Alltoallv(sb, c, d, MPI_BYTE, rb, c, d, MPI_BYTE, MPI_COMM_WORLD);
    t = (MPI_Wtime() - t) / it;
    double m;
    MPI_Reduce(&t, &m, 1, MPI_DOUBLE, MPI_MAX, 0, MPI_COMM_WORLD);
    if (!r) printf("alltoallv %ld bytes per rank: %.1f us\n", sizes[s], m * 1e6);
    free(sb); free(rb); free(c); free(d);
  }
  MPI_Comm_free(&node);
  MPI_Finalize();
  return 0;
}
