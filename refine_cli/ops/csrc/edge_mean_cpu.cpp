// CPU kernel of the colour-gated refiner's one step (refine_cli/models/colour_spn.py): for every pixel, the mean of
// the class maps along its row (or column), each pixel weighted by the product of the links between the two, then
// renormalised over the classes. Built with the scan kernels by refine_cli/ops/cpp.py; forward only (the refiner
// has nothing to train).
//
// With the links l between neighbours along the axis, the two one-sided sums are the first-order recurrences
//   F[t] = x[t] + l[t-1] F[t-1],   B[t] = x[t] + l[t] B[t+1],
// their sum less x itself is T[t] (x[t] counted once), and out[k, t] = T[k, t] / sum over k of T[k, t]: the class
// maps hold probabilities, so the sum of the weights is the sum over the classes. One pass writes F, the reverse
// pass turns it into the result, so the whole step reads x twice and writes the output twice.
//
// A block of up to 64 lines is one task, its lines the inner, contiguous loop of each step: columns in place, rows
// through a transposed copy.

#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty_like.h>
#include <torch/library.h>

#include "transpose.h"

#include <algorithm>
#include <cstdint>
#include <vector>

namespace {

using refine_cli::Assign;
using refine_cli::transpose;

// One block of n <= kBlock independent lines, each scanned over T steps: x and out hold K planes (plane stride ps)
// of T rows (row stride rs) of n contiguous values; links holds T-1 rows (row stride ls) of n values, row t the
// link between steps t and t+1. The n lines are the inner, contiguous loop of every step.
constexpr int64_t kBlock = 64;

void mean_block(const float* __restrict x, const float* __restrict links, float* __restrict out, int64_t K,
                int64_t T, int64_t n, int64_t ps, int64_t rs, int64_t ls, float* __restrict carry,
                float* __restrict total) {
  for (int64_t k = 0; k < K; ++k) std::copy_n(x + k * ps, n, out + k * ps);
  for (int64_t t = 1; t < T; ++t) {
    const float* g = links + (t - 1) * ls;
    for (int64_t k = 0; k < K; ++k) {
      const float* xr = x + k * ps + t * rs;
      float* o = out + k * ps + t * rs;
      const float* prev = o - rs;
      for (int64_t j = 0; j < n; ++j) o[j] = xr[j] + g[j] * prev[j];
    }
  }
  std::fill(carry, carry + K * kBlock, 0.f);
  for (int64_t t = T - 1; t >= 0; --t) {
    std::fill(total, total + n, 0.f);
    const float* g = t + 1 < T ? links + t * ls : nullptr;
    for (int64_t k = 0; k < K; ++k) {
      const float* xr = x + k * ps + t * rs;
      float* o = out + k * ps + t * rs;
      float* c = carry + k * kBlock;
      for (int64_t j = 0; j < n; ++j) {
        const float behind = g ? g[j] * c[j] : 0.f;  // B[t] - x[t]
        c[j] = xr[j] + behind;
        o[j] += behind;
        total[j] += o[j];
      }
    }
    for (int64_t j = 0; j < n; ++j) total[j] = 1.f / total[j];
    for (int64_t k = 0; k < K; ++k) {
      float* o = out + k * ps + t * rs;
      for (int64_t j = 0; j < n; ++j) o[j] *= total[j];
    }
  }
}

// Along W: x, out [K][H][W] planes of one image; links [H][W-1]. A block of rows is copied transposed to a
// [K][W][rows] scratch, so that it runs as columns do.
void mean_along_rows(const float* __restrict x, const float* __restrict links, float* __restrict out, int64_t K,
                     int64_t H, int64_t W) {
  const int64_t plane = H * W, blocks = (H + kBlock - 1) / kBlock;
  at::parallel_for(0, blocks, 1, [&](int64_t b0, int64_t b1) {
    std::vector<float> xs(K * W * kBlock), os(K * W * kBlock), ls(W * kBlock), carry(K * kBlock), total(kBlock);
    for (int64_t b = b0; b < b1; ++b) {
      const int64_t h0 = b * kBlock, n = std::min(kBlock, H - h0);
      for (int64_t k = 0; k < K; ++k)
        transpose(x + k * plane + h0 * W, n, W, W, xs.data() + k * W * n, n, Assign{});
      transpose(links + h0 * (W - 1), n, W - 1, W - 1, ls.data(), n, Assign{});
      mean_block(xs.data(), ls.data(), os.data(), K, W, n, W * n, n, n, carry.data(), total.data());
      for (int64_t k = 0; k < K; ++k)
        transpose(os.data() + k * W * n, W, n, n, out + k * plane + h0 * W, W, Assign{});
    }
  });
}

// Along H: links [H-1][W]; a block of columns is one task.
void mean_along_columns(const float* __restrict x, const float* __restrict links, float* __restrict out, int64_t K,
                        int64_t H, int64_t W) {
  const int64_t blocks = (W + kBlock - 1) / kBlock;
  at::parallel_for(0, blocks, 1, [&](int64_t b0, int64_t b1) {
    std::vector<float> carry(K * kBlock), total(kBlock);
    for (int64_t b = b0; b < b1; ++b) {
      const int64_t j0 = b * kBlock, n = std::min(kBlock, W - j0);
      mean_block(x + j0, links + j0, out + j0, K, H, n, H * W, W, W, carry.data(), total.data());
    }
  });
}

// x: (N, K, H, W) float32; links: (N, H, W-1) for dim 3 (along rows) or (N, H-1, W) for dim 2 (along columns).
at::Tensor edge_mean(const at::Tensor& x_in, const at::Tensor& links_in, int64_t dim) {
  TORCH_CHECK(x_in.dim() == 4 && x_in.scalar_type() == at::kFloat, "x must be a (N, K, H, W) float32 tensor");
  TORCH_CHECK(dim == 2 || dim == 3, "dim must be 2 (along columns) or 3 (along rows)");
  const at::Tensor x = x_in.contiguous(), links = links_in.contiguous();
  const int64_t N = x.size(0), K = x.size(1), H = x.size(2), W = x.size(3);
  const std::vector<int64_t> expected = dim == 3 ? std::vector<int64_t>{N, H, W - 1} : std::vector<int64_t>{N, H - 1, W};
  TORCH_CHECK(links.scalar_type() == at::kFloat && links.sizes().vec() == expected,
              "links must be float32 of shape (N, H, W-1) along rows or (N, H-1, W) along columns");
  at::Tensor out = at::empty_like(x);
  if (x.numel() == 0) return out;
  for (int64_t i = 0; i < N; ++i) {
    const float* xp = x.data_ptr<float>() + i * K * H * W;
    const float* lp = links.data_ptr<float>() + i * links.size(1) * links.size(2);
    float* op = out.data_ptr<float>() + i * K * H * W;
    if (dim == 3) mean_along_rows(xp, lp, op, K, H, W);
    else mean_along_columns(xp, lp, op, K, H, W);
  }
  return out;
}

}  // namespace

// Called through torch.ops.refine_cli_edge.edge_mean from refine_cli/ops/edge_mean.py.
TORCH_LIBRARY(refine_cli_edge, m) { m.def("edge_mean(Tensor x, Tensor links, int dim) -> Tensor"); }

TORCH_LIBRARY_IMPL(refine_cli_edge, CPU, m) { m.impl("edge_mean", &edge_mean); }
