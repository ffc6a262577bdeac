// Eigen views over our contiguous row-major buffers: maps, never copies (DEVELOPERS.md).
#pragma once

#include <Eigen/Core>

namespace moesim::eigen {

template <typename T>
using RowMat = Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
template <typename T>
using MapM = Eigen::Map<RowMat<T>>;  // [rows x cols] row-major view
template <typename T>
using CMapM = Eigen::Map<const RowMat<T>>;
template <typename T>
using MapRow = Eigen::Map<Eigen::Matrix<T, 1, Eigen::Dynamic>>;  // one row vector (a bias)
template <typename T>
using CMapRow = Eigen::Map<const Eigen::Matrix<T, 1, Eigen::Dynamic>>;

}  // namespace moesim::eigen
