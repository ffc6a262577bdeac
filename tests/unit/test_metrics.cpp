// Routing research metrics against closed forms.
#include <gtest/gtest.h>

#include <cmath>
#include <vector>

#include "moesim/metrics/routing_metrics.hpp"

using namespace moesim::metrics;

TEST(Metrics, LoadImbalance) {
  EXPECT_DOUBLE_EQ(load_imbalance(std::vector<std::int64_t>{5, 5, 5, 5}), 1.0);
  EXPECT_DOUBLE_EQ(load_imbalance(std::vector<std::int64_t>{8, 0, 0, 0}), 4.0);
  EXPECT_DOUBLE_EQ(load_imbalance(std::vector<std::int64_t>{3, 1}), 1.5);
  EXPECT_DOUBLE_EQ(load_imbalance(std::vector<std::int64_t>{0, 0}), 0.0);
}

TEST(Metrics, PerfectSpecialisationAndMaximalInformation) {
  // 3 clusters each entirely on its own expert (of 4): specialisation 1, MI = log 3
  // (uniform clusters).
  const std::vector<std::int64_t> c = {0, 7, 0, 0, /**/ 0, 0, 0, 7, /**/ 7, 0, 0, 0};
  EXPECT_DOUBLE_EQ(specialization(c, 3, 4), 1.0);
  EXPECT_NEAR(mutual_information(c, 3, 4), std::log(3.0), 1e-15);
}

TEST(Metrics, IndependentRoutingCarriesNoInformation) {
  // Every cluster spread the same way over 2 experts (1:3): MI 0, specialisation 3/4.
  const std::vector<std::int64_t> c = {1, 3, 2, 6, 5, 15};
  EXPECT_NEAR(mutual_information(c, 3, 2), 0.0, 1e-15);
  EXPECT_DOUBLE_EQ(specialization(c, 3, 2), 0.75);
}

TEST(Metrics, HandComputedMutualInformation) {
  // p = [[1/2, 0], [1/4, 1/4]]: MI = 1/2 log(1/2 / (1/2*3/4)) + 1/4 log(1/4/(1/2*3/4)) + 1/4
  // log(1/4/(1/2*1/4)).
  const std::vector<std::int64_t> c = {2, 0, 1, 1};
  const double want = 0.5 * std::log(4.0 / 3.0) + 0.25 * std::log(2.0 / 3.0) + 0.25 * std::log(2.0);
  EXPECT_NEAR(mutual_information(c, 2, 2), want, 1e-15);
  EXPECT_DOUBLE_EQ(specialization(c, 2, 2), (1.0 + 0.5) / 2);
  EXPECT_DOUBLE_EQ(specialization(std::vector<std::int64_t>{0, 0, 0, 0}, 2, 2), 0.0);  // no tokens
}
