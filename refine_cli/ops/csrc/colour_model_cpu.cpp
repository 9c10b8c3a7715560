// CPU kernels of the local colour models (refine_cli/ops/colour_likelihood.py): the per-pixel passes, each one loop
// over the pixels where torch would make several passes over whole tensors. Built with the scan kernels by
// refine_cli/ops/cpp.py; forward only.
//
// colour_counts: every pixel's cell (its block and colour bin: block * bins + bin) and the count of each
//   (class, cell) over the image, a pixel's class being its best score (the first on ties, as argmax). With
//   confidence c > 0 a pixel counts (best - second best score)^c instead of 1 (scores: probabilities).
//   image (N, 3, H, W) float in [0, 1]; scores (N, K, H, W) float. Returns counts (N, K, rows, cols, bins) float and
//   cells (N, H, W) int32.
// colour_reweigh: out[k, p] = max(x[k, p] * table[k, cell[p]] / sum over k of the same, floor). x (N, K, H, W) float;
//   table (N, K, rows * cols * bins) float; cells (N, H, W) int32.
// mask_detail_counts: for each label map, how many pixels a smoothing of its one-hot map relabels (a box sum of
//   2 * reach + 1 pixels along rows then columns, twice; zeros beyond the image; the first best class on ties) and
//   how many boundary pixels it has (a label change to the right or below). labels (N, H, W) int64 in 0..K-1.
//   Returns (N, 2) int64: changed, boundary. refine_cli/models/colour_spn.py's mask_detail, in one pass per image.

#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <tuple>
#include <vector>

namespace {

constexpr int64_t kChunk = 4096;  // pixels per task of the per-pixel passes

// Runs fn(n, p0, p1, scratch) in parallel over chunks of at most kChunk pixels of each of N images of HW pixels;
// scratch holds kChunk floats of the task's own.
template <typename Fn>
void for_each_chunk(int64_t N, int64_t HW, const Fn& fn) {
  const int64_t chunks = (HW + kChunk - 1) / kChunk;
  at::parallel_for(0, N * chunks, 1, [&](int64_t begin, int64_t end) {
    float scratch[kChunk];
    for (int64_t task = begin; task < end; ++task) {
      const int64_t p0 = (task % chunks) * kChunk;
      fn(task / chunks, p0, std::min(p0 + kChunk, HW), scratch);
    }
  });
}

// The best of K score planes (plane stride HW) for pixels p0..p1, the first on ties: planes outer, pixels inner (the
// pixels are contiguous, the classes are not). top: p1 - p0 floats of scratch. With `second` (p1 - p0 floats), also
// each pixel's second best score (the best of the other planes; -inf with one plane).
template <typename Index>
void best_in_chunk(const float* s, int64_t K, int64_t HW, int64_t p0, int64_t p1, float* top, Index* best,
                   float* second = nullptr) {
  std::copy(s + p0, s + p1, top);
  std::fill(best + p0, best + p1, Index{0});
  if (second != nullptr) std::fill(second, second + (p1 - p0), -std::numeric_limits<float>::infinity());
  for (int64_t k = 1; k < K; ++k) {
    const float* sk = s + k * HW;
    if (second == nullptr) {
      for (int64_t p = p0; p < p1; ++p) {
        if (sk[p] > top[p - p0]) top[p - p0] = sk[p], best[p] = static_cast<Index>(k);
      }
      continue;
    }
    for (int64_t p = p0; p < p1; ++p) {  // selects, not branches: the compiler vectorises the loop
      const float v = sk[p], t = top[p - p0];
      const bool above = v > t;
      second[p - p0] = above ? t : std::max(second[p - p0], v);
      top[p - p0] = above ? v : t;
      best[p] = above ? static_cast<Index>(k) : best[p];
    }
  }
}

std::tuple<at::Tensor, at::Tensor> colour_counts(const at::Tensor& image_in, const at::Tensor& scores_in,
                                                 int64_t levels, int64_t block, double confidence) {
  TORCH_CHECK(image_in.dim() == 4 && image_in.size(1) == 3, "colour_counts: image must be (N, 3, H, W)");
  TORCH_CHECK(scores_in.dim() == 4 && scores_in.size(0) == image_in.size(0) && scores_in.size(2) == image_in.size(2) &&
                  scores_in.size(3) == image_in.size(3) && scores_in.size(1) >= 1,
              "colour_counts: scores must be (N, K, H, W) like the image");
  TORCH_CHECK(levels >= 1 && block >= 1, "colour_counts: levels and block must be at least 1");
  TORCH_CHECK(confidence >= 0, "colour_counts: confidence must be at least 0");
  const at::Tensor image = image_in.to(at::kFloat).contiguous();
  const at::Tensor scores = scores_in.to(at::kFloat).contiguous();
  const int64_t K = scores.size(1);
  const int64_t N = image.size(0), H = image.size(2), W = image.size(3), HW = H * W;
  const int64_t rows = (H + block - 1) / block, cols = (W + block - 1) / block, bins = levels * levels * levels;
  const int64_t per_class = rows * cols * bins;
  at::Tensor counts = at::zeros({N, K, rows, cols, bins}, image.options());
  at::Tensor cells = at::empty({N, H, W}, image.options().dtype(at::kInt));
  const float scale = static_cast<float>(static_cast<double>(levels) - 1e-3);  // as the torch path's multiplier
  at::Tensor best = at::empty({N, H, W}, cells.options());
  const bool weighed = confidence > 0;
  at::Tensor weight = weighed ? at::empty({N, H, W}, image.options()) : at::Tensor();
  for_each_chunk(N, HW, [&](int64_t n, int64_t p0, int64_t p1, float* top) {
    const float* r = image.data_ptr<float>() + n * 3 * HW;
    const float* g = r + HW;
    const float* b = g + HW;
    int32_t* cell = cells.data_ptr<int32_t>() + n * HW;
    auto q = [scale](float v) { return static_cast<int64_t>(std::min(std::max(v, 0.0f), 1.0f) * scale); };
    for (int64_t p = p0; p < p1; ++p) {
      const int64_t y = p / W, x = p - y * W;
      cell[p] = static_cast<int32_t>(((y / block) * cols + x / block) * bins + (q(r[p]) * levels + q(g[p])) * levels +
                                     q(b[p]));
    }
    const float* s = scores.data_ptr<float>() + n * K * HW;
    if (!weighed) {
      best_in_chunk(s, K, HW, p0, p1, top, best.data_ptr<int32_t>() + n * HW);
      return;
    }
    float second[kChunk];
    best_in_chunk(s, K, HW, p0, p1, top, best.data_ptr<int32_t>() + n * HW, second);
    float* w = weight.data_ptr<float>() + n * HW;
    const float c = static_cast<float>(confidence);
    for (int64_t p = p0; p < p1; ++p) {  // one class: every pixel sure (margin 1)
      const float margin = K > 1 ? std::max(top[p - p0] - second[p - p0], 0.0f) : 1.0f;
      w[p] = c == 1.0f ? margin : c == 2.0f ? margin * margin : std::pow(margin, c);
    }
  });
  // The count itself stays one loop: its increments land anywhere in the table.
  const int32_t* cell = cells.data_ptr<int32_t>();
  const int32_t* klass = best.data_ptr<int32_t>();
  float* count = counts.data_ptr<float>();
  if (!weighed) {
    for (int64_t n = 0; n < N; ++n) {
      for (int64_t p = n * HW; p < (n + 1) * HW; ++p) count[(n * K + klass[p]) * per_class + cell[p]] += 1.0f;
    }
  } else {
    const float* w = weight.data_ptr<float>();
    for (int64_t n = 0; n < N; ++n) {
      for (int64_t p = n * HW; p < (n + 1) * HW; ++p) count[(n * K + klass[p]) * per_class + cell[p]] += w[p];
    }
  }
  return {counts, cells};
}

at::Tensor colour_reweigh(const at::Tensor& x_in, const at::Tensor& table_in, const at::Tensor& cells_in,
                          double floor) {
  TORCH_CHECK(x_in.dim() == 4, "colour_reweigh: x must be (N, K, H, W)");
  const int64_t N = x_in.size(0), K = x_in.size(1), HW = x_in.size(2) * x_in.size(3);
  TORCH_CHECK(table_in.dim() == 3 && table_in.size(0) == N && table_in.size(1) == K,
              "colour_reweigh: table must be (N, K, cells)");
  TORCH_CHECK(cells_in.numel() == N * HW, "colour_reweigh: cells must be (N, H, W) like x");
  const at::Tensor x = x_in.to(at::kFloat).contiguous();
  const at::Tensor table = table_in.to(at::kFloat).contiguous();
  const at::Tensor cells = cells_in.to(at::kInt).contiguous();
  const int64_t per_class = table.size(2);
  at::Tensor out = at::empty_like(x);
  const float low = static_cast<float>(floor);
  for_each_chunk(N, HW, [&](int64_t n, int64_t p0, int64_t p1, float* sum) {
    const float* xs = x.data_ptr<float>() + n * K * HW;
    const float* ts = table.data_ptr<float>() + n * K * per_class;
    const int32_t* cell = cells.data_ptr<int32_t>() + n * HW;
    float* os = out.data_ptr<float>() + n * K * HW;
    std::fill(sum, sum + (p1 - p0), 0.0f);
    for (int64_t k = 0; k < K; ++k) {
      const float* xk = xs + k * HW;
      const float* tk = ts + k * per_class;
      float* ok = os + k * HW;
      for (int64_t p = p0; p < p1; ++p) {
        const float v = xk[p] * tk[cell[p]];
        ok[p] = v;
        sum[p - p0] += v;
      }
    }
    for (int64_t k = 0; k < K; ++k) {
      float* ok = os + k * HW;
      for (int64_t p = p0; p < p1; ++p) ok[p] = std::max(ok[p] / sum[p - p0], low);
    }
  });
  return out;
}

// class_map: (N, K, H, W) float scores -> (N, H, W) int64 index of the best class, the first on ties; one pass over
// the scores (torch's max over the strided class axis of an NCHW tensor reads it ~10x slower).
at::Tensor class_map(const at::Tensor& scores_in) {
  TORCH_CHECK(scores_in.dim() == 4 && scores_in.size(1) >= 1, "class_map: scores must be (N, K, H, W)");
  const at::Tensor scores = scores_in.to(at::kFloat).contiguous();
  const int64_t N = scores.size(0), K = scores.size(1), HW = scores.size(2) * scores.size(3);
  at::Tensor out = at::empty({N, scores.size(2), scores.size(3)}, scores.options().dtype(at::kLong));
  for_each_chunk(N, HW, [&](int64_t n, int64_t p0, int64_t p1, float* top) {
    best_in_chunk(scores.data_ptr<float>() + n * K * HW, K, HW, p0, p1, top, out.data_ptr<int64_t>() + n * HW);
  });
  return out;
}

// Box sum of 2 * reach + 1 along a row of W values (zeros beyond its ends): shifted adds, which vectorise.
template <typename In, typename Out>
void row_box(const In* in, int64_t W, int64_t reach, Out* out) {
  std::fill(out, out + W, Out{0});
  for (int64_t d = -reach; d <= reach; ++d) {
    const int64_t x0 = std::max<int64_t>(0, -d), x1 = std::min(W, W - d);
    for (int64_t x = x0; x < x1; ++x) out[x] += static_cast<Out>(in[x + d]);
  }
}

// One label map: the counts of mask_detail_counts. The box sums along columns are running sums of whole rows, in
// unsigned integers whose wrap-around is exact: each sum, once its window is complete, fits its type.
void mask_detail_one(const int64_t* labels, int64_t K, int64_t H, int64_t W, int64_t reach, int64_t* out) {
  const int64_t HW = H * W;
  std::vector<uint8_t> one_hot(W), rows1(K * HW), box1(K * HW);  // at most (2r+1) and (2r+1)^2: reach <= 7
  for (int64_t k = 0; k < K; ++k) {
    for (int64_t y = 0; y < H; ++y) {
      const int64_t* l = labels + y * W;
      for (int64_t x = 0; x < W; ++x) one_hot[x] = l[x] == k;
      row_box(one_hot.data(), W, reach, rows1.data() + k * HW + y * W);
    }
  }
  std::vector<uint8_t> run8(W);
  for (int64_t k = 0; k < K; ++k) {
    const uint8_t* a = rows1.data() + k * HW;
    uint8_t* b = box1.data() + k * HW;
    std::fill(run8.begin(), run8.end(), uint8_t{0});
    for (int64_t y = 0; y < std::min(H, reach); ++y)
      for (int64_t x = 0; x < W; ++x) run8[x] += a[y * W + x];
    for (int64_t y = 0; y < H; ++y) {
      if (y + reach < H) for (int64_t x = 0; x < W; ++x) run8[x] += a[(y + reach) * W + x];
      if (y - reach - 1 >= 0) for (int64_t x = 0; x < W; ++x) run8[x] -= a[(y - reach - 1) * W + x];
      std::copy(run8.begin(), run8.end(), b + y * W);
    }
  }
  std::vector<uint16_t> rows2(K * HW);  // the second smoothing: at most (2r+1)^4
  for (int64_t k = 0; k < K; ++k)
    for (int64_t y = 0; y < H; ++y) row_box(box1.data() + k * HW + y * W, W, reach, rows2.data() + k * HW + y * W);
  std::vector<uint16_t> sums(K * W, 0), top(W);  // per class, the running column sums of the current row's window
  std::vector<int64_t> best(W);
  for (int64_t k = 0; k < K; ++k)
    for (int64_t y = 0; y < std::min(H, reach); ++y)
      for (int64_t x = 0; x < W; ++x) sums[k * W + x] += rows2[k * HW + y * W + x];
  int64_t changed = 0, boundary = 0;
  for (int64_t y = 0; y < H; ++y) {
    for (int64_t k = 0; k < K; ++k) {
      uint16_t* s = sums.data() + k * W;
      if (y + reach < H) for (int64_t x = 0; x < W; ++x) s[x] += rows2[k * HW + (y + reach) * W + x];
      if (y - reach - 1 >= 0) for (int64_t x = 0; x < W; ++x) s[x] -= rows2[k * HW + (y - reach - 1) * W + x];
    }
    std::copy(sums.begin(), sums.begin() + W, top.begin());
    std::fill(best.begin(), best.end(), int64_t{0});
    for (int64_t k = 1; k < K; ++k) {  // the first best on ties
      const uint16_t* s = sums.data() + k * W;
      for (int64_t x = 0; x < W; ++x) {
        const bool above = s[x] > top[x];
        top[x] = above ? s[x] : top[x];
        best[x] = above ? k : best[x];
      }
    }
    const int64_t* l = labels + y * W;
    for (int64_t x = 0; x < W; ++x) changed += best[x] != l[x];
    for (int64_t x = 0; x + 1 < W; ++x) boundary += l[x + 1] != l[x] || (y + 1 < H && l[x + W] != l[x]);
    if (W > 0) boundary += y + 1 < H && l[W - 1 + W] != l[W - 1];
  }
  out[0] = changed;
  out[1] = boundary;
}

at::Tensor mask_detail_counts(const at::Tensor& labels_in, int64_t K, int64_t reach) {
  TORCH_CHECK(labels_in.dim() == 3, "mask_detail_counts: labels must be (N, H, W)");
  TORCH_CHECK(K >= 1 && reach >= 0 && reach <= 7, "mask_detail_counts: K >= 1 and 0 <= reach <= 7");
  const at::Tensor labels = labels_in.to(at::kLong).contiguous();
  const int64_t N = labels.size(0), H = labels.size(1), W = labels.size(2);
  at::Tensor out = at::zeros({N, 2}, labels.options());
  at::parallel_for(0, N, 1, [&](int64_t begin, int64_t end) {
    for (int64_t n = begin; n < end; ++n)
      mask_detail_one(labels.data_ptr<int64_t>() + n * H * W, K, H, W, reach, out.data_ptr<int64_t>() + 2 * n);
  });
  return out;
}

}  // namespace

// Called through torch.ops.refine_cli_colour.* from refine_cli/ops/colour_likelihood.py.
TORCH_LIBRARY(refine_cli_colour, m) {
  m.def("colour_counts(Tensor image, Tensor scores, int levels, int block, float confidence) -> (Tensor, Tensor)");
  m.def("colour_reweigh(Tensor x, Tensor table, Tensor cells, float floor) -> Tensor");
  m.def("class_map(Tensor scores) -> Tensor");
  m.def("mask_detail_counts(Tensor labels, int K, int reach) -> Tensor");
}

TORCH_LIBRARY_IMPL(refine_cli_colour, CPU, m) {
  m.impl("colour_counts", &colour_counts);
  m.impl("colour_reweigh", &colour_reweigh);
  m.impl("class_map", &class_map);
  m.impl("mask_detail_counts", &mask_detail_counts);
}
