// CPU kernels of the three-way spatial propagation (Liu et al., NIPS 2017): D directional scans of
// (N, K, C, H, W) maps merged by element-wise max, with gate normalisation and border masking fused in, and
// the hand-written reverse-time backward. Built at first use by refine_cli/ops/cpp.py.
//
// Work is split over (n, c) pairs (OpenMP through at::parallel_for); the K maps of a pair share its gates, so
// their gate gradients are summed without atomics. A scan runs on float copies laid out with the neighbour
// axis contiguous, so each time step is one branch-free vector loop: the natural H x W layout for the vertical
// directions, the transposed W x H one for the horizontal ones (the two horizontal scans share one transposed
// copy of x; a backward scan walks the rows in reverse order). Hidden states live in per-thread scratch only:
// the backward recomputes them, one more forward, instead of keeping D full-size float maps alive.

// Only the ATen pieces in use (not torch/extension.h): the first build takes seconds instead of a minute or more.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include "transpose.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <tuple>
#include <type_traits>
#include <vector>

namespace {

using refine_cli::Add;
using refine_cli::Assign;
using refine_cli::Max;
using refine_cli::transpose;

// Direction codes follow refine_cli.ops.DIRECTIONS.
enum Direction : int64_t { kLeftToRight = 0, kRightToLeft = 1, kTopToBottom = 2, kBottomToTop = 3 };
enum Norm : int64_t { kNone = 0, kBounded = 1, kUnitSum = 2 };

// A direction as a scan over T steps of L neighbours on a [T][L] buffer; `reverse` walks the rows T-1 .. 0.
struct Geo {
  int64_t T, L;
  bool horizontal, reverse;
  int64_t row(int64_t t) const { return reverse ? T - 1 - t : t; }
};

Geo make_geo(int64_t dir, int64_t H, int64_t W) {
  const bool horizontal = dir == kLeftToRight || dir == kRightToLeft;
  const bool reverse = dir == kRightToLeft || dir == kBottomToTop;
  return horizontal ? Geo{W, H, true, reverse} : Geo{H, W, false, reverse};
}

// Normalise one direction's raw gates (natural layout) so that |g1| + |g2| + |g3| <= 1: divide by the sum of
// magnitudes where it reaches 1 (kBounded) or everywhere, plus eps (kUnitSum). Vector loop, no branch.
template <int64_t norm, typename scalar_t, typename acc_t>
void normalise(const scalar_t* __restrict r0, const scalar_t* __restrict r1, const scalar_t* __restrict r2,
               int64_t n, acc_t eps, acc_t* __restrict g0, acc_t* __restrict g1, acc_t* __restrict g2) {
  for (int64_t i = 0; i < n; ++i) {
    const acc_t a = static_cast<acc_t>(r0[i]), b = static_cast<acc_t>(r1[i]), c = static_cast<acc_t>(r2[i]);
    if constexpr (norm == kNone) {
      g0[i] = a, g1[i] = b, g2[i] = c;
    } else {
      const acc_t s = std::abs(a) + std::abs(b) + std::abs(c);
      const acc_t inv = acc_t(1) / (norm == kUnitSum ? s + eps : (s >= acc_t(1) ? s : acc_t(1)));
      g0[i] = a * inv, g1[i] = b * inv, g2[i] = c * inv;
    }
  }
}

// In place, dLoss/dg -> dLoss/dr through g = r / s (where `normalise` divided): with s = |r1| + |r2| + |r3|,
// dr_i = dg_i / s - sign(r_i) (sum_j dg_j r_j) / s^2. d: three planes, plane_stride apart, like r.
template <int64_t norm, typename scalar_t, typename acc_t>
void normalise_backward(const scalar_t* __restrict r, int64_t plane_stride, int64_t n, acc_t eps,
                        acc_t* __restrict d) {
  const scalar_t *r0 = r, *r1 = r + plane_stride, *r2 = r + 2 * plane_stride;
  acc_t *d0 = d, *d1 = d + plane_stride, *d2 = d + 2 * plane_stride;
  // Branch-free so that it vectorises: the "bounded" case keeps dg where s < 1 through on = 0, inv = 1.
  auto sign = [](acc_t v) { return static_cast<acc_t>(v > acc_t(0)) - static_cast<acc_t>(v < acc_t(0)); };
  for (int64_t i = 0; i < n; ++i) {
    const acc_t a = static_cast<acc_t>(r0[i]), b = static_cast<acc_t>(r1[i]), c = static_cast<acc_t>(r2[i]);
    const acc_t s = std::abs(a) + std::abs(b) + std::abs(c);
    // torch's clamp(min=1) passes the gradient to s where s >= 1: the same condition here.
    const acc_t on = norm == kUnitSum ? acc_t(1) : static_cast<acc_t>(s >= acc_t(1));
    const acc_t inv = acc_t(1) / (norm == kUnitSum ? s + eps : std::max(s, acc_t(1)));
    const acc_t k = on * (d0[i] * a + d1[i] * b + d2[i] * c) * inv * inv;
    d0[i] = d0[i] * inv - sign(a) * k;
    d1[i] = d1[i] * inv - sign(b) * k;
    d2[i] = d2[i] * inv - sign(c) * k;
  }
}

// g0..g2 in the scan layout, masked: the first step has no gates, neighbour l = 0 has no g1, l = L-1 no g3
// (after normalisation, as normalize_gates followed by the plain scan does it).
template <typename scalar_t, typename acc_t>
void prepare_gates(const scalar_t* raw, int64_t plane_stride, const Geo& g, int64_t norm, acc_t eps, acc_t* tmp,
                   acc_t* out) {
  const int64_t n = g.T * g.L;
  acc_t* dst = g.horizontal ? tmp : out;
  const scalar_t *r0 = raw, *r1 = raw + plane_stride, *r2 = raw + 2 * plane_stride;
  if (norm == kBounded) normalise<kBounded>(r0, r1, r2, n, eps, dst, dst + n, dst + 2 * n);
  else if (norm == kUnitSum) normalise<kUnitSum>(r0, r1, r2, n, eps, dst, dst + n, dst + 2 * n);
  else normalise<kNone>(r0, r1, r2, n, eps, dst, dst + n, dst + 2 * n);
  if (g.horizontal) {
    for (int j = 0; j < 3; ++j) transpose(tmp + j * n, g.L, g.T, g.T, out + j * n, g.L, Assign{});
  }
  acc_t *g0 = out, *g1 = out + n, *g2 = out + 2 * n;
  const int64_t first = g.row(0) * g.L;
  std::fill(g0 + first, g0 + first + g.L, acc_t(0));
  std::fill(g1 + first, g1 + first + g.L, acc_t(0));
  std::fill(g2 + first, g2 + first + g.L, acc_t(0));
  for (int64_t t = 0; t < g.T; ++t) g0[t * g.L] = g2[t * g.L + g.L - 1] = acc_t(0);
}

// Forward scan. x, gates: [T][L]; hp: [T][L + 2], the hidden state with one zero pad on each side of L, so the
// three neighbours of l are p[l], p[l + 1], p[l + 2] of the previous row and the inner loop has no branch.
template <typename acc_t>
void scan_forward(const acc_t* __restrict x, const acc_t* __restrict g0, const acc_t* __restrict g1,
                  const acc_t* __restrict g2, const Geo& g, acc_t* __restrict hp) {
  const int64_t T = g.T, L = g.L, P = L + 2;
  for (int64_t t = 0; t < T; ++t) hp[t * P] = hp[t * P + L + 1] = acc_t(0);
  const int64_t r0 = g.row(0);
  std::copy(x + r0 * L, x + r0 * L + L, hp + r0 * P + 1);
  for (int64_t t = 1; t < T; ++t) {
    const int64_t r = g.row(t), o = r * L;
    const acc_t* __restrict p = hp + g.row(t - 1) * P;
    acc_t* __restrict q = hp + r * P + 1;
    for (int64_t l = 0; l < L; ++l) {
      const acc_t a = g0[o + l], b = g1[o + l], c = g2[o + l];
      q[l] = (acc_t(1) - a - b - c) * x[o + l] + a * p[l] + b * p[l + 1] + c * p[l + 2];
    }
  }
}

// Reverse-time scan of one map. dy: [T][L] gradient of this scan's output. Adds dLoss/dx into dx and the
// unmasked gate gradients into dg0..dg2 (all [T][L]); work holds 2 * (L + 2) values.
template <typename acc_t>
void scan_backward(const acc_t* __restrict dy, const acc_t* __restrict x, const acc_t* __restrict g0,
                   const acc_t* __restrict g1, const acc_t* __restrict g2, const acc_t* __restrict hp, const Geo& g,
                   acc_t* __restrict dx, acc_t* __restrict dg0, acc_t* __restrict dg1, acc_t* __restrict dg2,
                   acc_t* __restrict work) {
  const int64_t T = g.T, L = g.L, P = L + 2;
  acc_t* __restrict d = work;          // dLoss/dh at the current step
  acc_t* __restrict carry = work + P;  // what the current step sends back to the previous one
  std::fill(carry, carry + L, acc_t(0));
  for (int64_t t = T - 1; t >= 0; --t) {
    const int64_t o = g.row(t) * L;
    for (int64_t l = 0; l < L; ++l) d[l] = dy[o + l] + carry[l];
    if (t == 0) {
      for (int64_t l = 0; l < L; ++l) dx[o + l] += d[l];
      break;
    }
    const acc_t* __restrict p = hp + g.row(t - 1) * P;
    for (int64_t l = 0; l < L; ++l) {
      const acc_t a = g0[o + l], b = g1[o + l], c = g2[o + l], xv = x[o + l], dv = d[l];
      dx[o + l] += (acc_t(1) - a - b - c) * dv;
      dg0[o + l] += dv * (p[l] - xv);
      dg1[o + l] += dv * (p[l + 1] - xv);
      dg2[o + l] += dv * (p[l + 2] - xv);
    }
    // h[t][l] reads h[t-1][l-1] through g1, h[t-1][l] through g2, h[t-1][l+1] through g3: gathered per target.
    for (int64_t m = 1; m < L - 1; ++m) {
      carry[m] = g1[o + m] * d[m] + g0[o + m + 1] * d[m + 1] + g2[o + m - 1] * d[m - 1];
    }
    carry[0] = g1[o] * d[0] + (L > 1 ? g0[o + 1] * d[1] : acc_t(0));
    if (L > 1) carry[L - 1] = g1[o + L - 1] * d[L - 1] + g2[o + L - 2] * d[L - 2];
  }
}

struct Shape {
  int64_t N, K, C, H, W, D;
  int64_t HW() const { return H * W; }
};

Shape check_inputs(const at::Tensor& x, const at::Tensor& gates, const std::vector<int64_t>& dirs) {
  TORCH_CHECK(x.dim() == 5, "x must be (N, K, C, H, W)");
  TORCH_CHECK(gates.dim() == 6, "gates must be (N, D, 3, C, H, W)");
  TORCH_CHECK(x.is_contiguous() && gates.is_contiguous(), "x and gates must be contiguous");
  TORCH_CHECK(x.device().is_cpu() && gates.device().is_cpu(), "the C++ kernels take CPU tensors");
  TORCH_CHECK(x.scalar_type() == gates.scalar_type(), "x and gates must share a dtype");
  const Shape s{x.size(0), x.size(1), x.size(2), x.size(3), x.size(4), gates.size(1)};
  TORCH_CHECK(gates.size(0) == s.N && gates.size(2) == 3 && gates.size(3) == s.C && gates.size(4) == s.H &&
                  gates.size(5) == s.W,
              "gates must be (N, D, 3, C, H, W) for x (N, K, C, H, W)");
  TORCH_CHECK(static_cast<int64_t>(dirs.size()) == s.D && s.D >= 1 && s.D <= 255, "one direction code per gate set");
  for (auto d : dirs) TORCH_CHECK(d >= 0 && d <= 3, "direction codes are 0..3");
  return s;
}

// One (n, c) pair's view of the inputs.
template <typename scalar_t>
struct Pair {
  const Shape& s;
  const scalar_t* x;      // (N, K, C, H, W)
  const scalar_t* gates;  // (N, D, 3, C, H, W)
  int64_t n, c;
  int64_t x_offset(int64_t k) const { return ((n * s.K + k) * s.C + c) * s.HW(); }
  int64_t gate_offset(int64_t di) const { return ((n * s.D + di) * 3 * s.C + c) * s.HW(); }
  int64_t gate_plane_stride() const { return s.C * s.HW(); }
};

// Per-thread scratch (plane = H * W values).
template <typename acc_t>
struct Scratch {
  int64_t hw, padded;
  std::vector<acc_t> gates, tmp, xn, xt, hp, work;
  Scratch(const Shape& s, bool keep_hidden)
      : hw(s.HW()), padded(s.HW() + 2 * std::max(s.H, s.W)) {
    gates.resize(3 * s.D * hw);  // every direction's prepared gates, reused for the K maps
    tmp.resize(3 * hw);
    xn.resize(hw);
    xt.resize(hw);
    hp.resize((keep_hidden ? s.D : 1) * padded);
    work.resize(2 * (std::max(s.H, s.W) + 2));
  }
  acc_t* gate(int64_t di, int j) { return gates.data() + (3 * di + j) * hw; }
  acc_t* hidden(int64_t i) { return hp.data() + i * padded; }
};

template <typename scalar_t, typename acc_t>
void prepare_all_gates(const Pair<scalar_t>& pr, const std::vector<int64_t>& dirs, int64_t norm, acc_t eps,
                       Scratch<acc_t>& sc) {
  for (int64_t di = 0; di < pr.s.D; ++di) {
    const Geo g = make_geo(dirs[di], pr.s.H, pr.s.W);
    prepare_gates(pr.gates + pr.gate_offset(di), pr.gate_plane_stride(), g, norm, eps, sc.tmp.data(),
                  sc.gate(di, 0));
  }
}

// x of map k as acc_t in the natural layout, and transposed when a horizontal direction needs it.
template <typename scalar_t, typename acc_t>
const acc_t* load_x(const Pair<scalar_t>& pr, int64_t k, bool transposed_too, Scratch<acc_t>& sc) {
  const scalar_t* src = pr.x + pr.x_offset(k);
  const acc_t* xn;
  if constexpr (std::is_same_v<scalar_t, acc_t>) {
    xn = src;
  } else {
    std::transform(src, src + sc.hw, sc.xn.data(), [](scalar_t v) { return static_cast<acc_t>(v); });
    xn = sc.xn.data();
  }
  if (transposed_too) transpose(xn, pr.s.H, pr.s.W, pr.s.W, sc.xt.data(), pr.s.H, Assign{});
  return xn;
}

// dst (natural H x W) = op(dst, hidden state of a scan).
template <typename acc_t, typename Op>
void merge_hidden(const acc_t* hp, const Geo& g, acc_t* dst, Op op) {
  const int64_t P = g.L + 2;
  if (g.horizontal) {
    transpose(hp + 1, g.T, g.L, P, dst, g.T, op);  // [W][H + 2] -> [H][W]
    return;
  }
  for (int64_t t = 0; t < g.T; ++t) {
    const acc_t* __restrict src = hp + t * P + 1;
    acc_t* __restrict out = dst + t * g.L;
    for (int64_t l = 0; l < g.L; ++l) out[l] = op(out[l], src[l]);
  }
}

// Pairs per OpenMP chunk: tiny problems (tests, gradcheck) run inline instead of waking the thread pool.
int64_t grain(const Shape& s) {
  const int64_t work = std::max<int64_t>(1, s.K * s.D * s.HW());
  return std::max<int64_t>(1, (int64_t{1} << 15) / work);
}

bool any_horizontal(const std::vector<int64_t>& dirs) {
  return std::any_of(dirs.begin(), dirs.end(), [](int64_t d) { return d == kLeftToRight || d == kRightToLeft; });
}

at::Tensor forward(const at::Tensor& x, const at::Tensor& gates, at::IntArrayRef dir_codes, int64_t norm,
                   double eps) {
  const std::vector<int64_t> dirs(dir_codes.begin(), dir_codes.end());
  const Shape s = check_inputs(x, gates, dirs);
  auto out = at::empty_like(x);
  if (x.numel() == 0) return out;
  const bool horizontal = any_horizontal(dirs);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "spn_scan_forward", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    scalar_t* op = out.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, s.N * s.C, grain(s), [&](int64_t begin, int64_t end) {
      Scratch<acc_t> sc(s, false);
      std::vector<acc_t> best(sc.hw);
      for (int64_t task = begin; task < end; ++task) {
        const Pair<scalar_t> pr{s, x.const_data_ptr<scalar_t>(), gates.const_data_ptr<scalar_t>(), task / s.C,
                                task % s.C};
        prepare_all_gates(pr, dirs, norm, static_cast<acc_t>(eps), sc);
        for (int64_t k = 0; k < s.K; ++k) {
          const acc_t* xn = load_x(pr, k, horizontal, sc);
          for (int64_t di = 0; di < s.D; ++di) {
            const Geo g = make_geo(dirs[di], s.H, s.W);
            scan_forward(g.horizontal ? sc.xt.data() : xn, sc.gate(di, 0), sc.gate(di, 1), sc.gate(di, 2), g,
                         sc.hidden(0));
            if (di == 0) merge_hidden(sc.hidden(0), g, best.data(), Assign{});
            else merge_hidden(sc.hidden(0), g, best.data(), Max{});
          }
          scalar_t* o = op + pr.x_offset(k);
          std::transform(best.begin(), best.end(), o, [](acc_t v) { return static_cast<scalar_t>(v); });
        }
      }
    });
  });
  return out;
}

// Returns (dx, dgates) in the accumulation dtype (float32 for half inputs; the caller casts). The gradient of
// the max goes to the first direction, in `dirs` order, that attains it.
std::tuple<at::Tensor, at::Tensor> backward(const at::Tensor& grad, const at::Tensor& x, const at::Tensor& gates,
                                           at::IntArrayRef dir_codes, int64_t norm, double eps, bool need_dx,
                                           bool need_dg) {
  const std::vector<int64_t> dirs(dir_codes.begin(), dir_codes.end());
  const Shape s = check_inputs(x, gates, dirs);
  TORCH_CHECK(grad.sizes() == x.sizes() && grad.is_contiguous() && grad.scalar_type() == x.scalar_type(),
              "grad must be contiguous and shaped and typed like x");
  const auto acc_type = at::toOpMathType(x.scalar_type());
  auto dx = at::zeros(x.sizes(), x.options().dtype(acc_type));
  auto dgates = at::zeros(gates.sizes(), gates.options().dtype(acc_type));
  if (x.numel() == 0 || !(need_dx || need_dg)) return {dx, dgates};
  const bool horizontal = any_horizontal(dirs);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "spn_scan_backward", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* dyp = grad.const_data_ptr<scalar_t>();
    acc_t* dxp = dx.mutable_data_ptr<acc_t>();
    acc_t* dgp = dgates.mutable_data_ptr<acc_t>();
    const acc_t aeps = static_cast<acc_t>(eps);
    at::parallel_for(0, s.N * s.C, grain(s), [&](int64_t begin, int64_t end) {
      Scratch<acc_t> sc(s, true);
      const int64_t hw = sc.hw;
      // Gate gradients of the horizontal directions, summed over k in their scan layout before one transpose.
      std::vector<acc_t> dg_t(horizontal ? 3 * s.D * hw : 0), dym(hw), dyt(hw), dxt(horizontal ? hw : 0),
          best(s.D > 1 ? hw : 0);
      std::vector<int32_t> winner(s.D > 1 ? hw : 0);  // as wide as float, so the select loops vectorise
      for (int64_t task = begin; task < end; ++task) {
        const Pair<scalar_t> pr{s, x.const_data_ptr<scalar_t>(), gates.const_data_ptr<scalar_t>(), task / s.C,
                                task % s.C};
        prepare_all_gates(pr, dirs, norm, aeps, sc);
        std::fill(dg_t.begin(), dg_t.end(), acc_t(0));
        auto dg_of = [&](int64_t di, const Geo& g) {  // where direction di's gate gradients accumulate
          return g.horizontal ? dg_t.data() + 3 * di * hw : dgp + pr.gate_offset(di);
        };
        for (int64_t k = 0; k < s.K; ++k) {
          const acc_t* xn = load_x(pr, k, horizontal, sc);
          const scalar_t* dy = dyp + pr.x_offset(k);
          acc_t* dxk = dxp + pr.x_offset(k);
          for (int64_t di = 0; di < s.D; ++di) {
            const Geo g = make_geo(dirs[di], s.H, s.W);
            scan_forward(g.horizontal ? sc.xt.data() : xn, sc.gate(di, 0), sc.gate(di, 1), sc.gate(di, 2), g,
                         sc.hidden(di));
          }
          if (s.D > 1) {  // which direction wins the max, element by element
            for (int64_t di = 0; di < s.D; ++di) {
              const Geo g = make_geo(dirs[di], s.H, s.W);
              if (di == 0) {
                merge_hidden(sc.hidden(0), g, best.data(), Assign{});
                std::fill(winner.begin(), winner.end(), int32_t(0));
                continue;
              }
              merge_hidden(sc.hidden(di), g, sc.tmp.data(), Assign{});
              const acc_t* __restrict v = sc.tmp.data();
              acc_t* __restrict b = best.data();
              int32_t* __restrict w = winner.data();
              const int32_t code = static_cast<int32_t>(di);
              for (int64_t i = 0; i < hw; ++i) {  // selects, not branches: the winner is data-dependent
                const bool take = (v[i] > b[i]) | ((v[i] != v[i]) & (b[i] == b[i]));
                b[i] = take ? v[i] : b[i];
                w[i] = take ? code : w[i];
              }
            }
          }
          if (horizontal) std::fill(dxt.begin(), dxt.end(), acc_t(0));
          for (int64_t di = 0; di < s.D; ++di) {
            const Geo g = make_geo(dirs[di], s.H, s.W);
            if (s.D == 1) {
              std::transform(dy, dy + hw, dym.begin(), [](scalar_t v) { return static_cast<acc_t>(v); });
            } else {
              const int32_t code = static_cast<int32_t>(di);
              for (int64_t i = 0; i < hw; ++i) dym[i] = winner[i] == code ? static_cast<acc_t>(dy[i]) : acc_t(0);
            }
            if (g.horizontal) transpose(dym.data(), s.H, s.W, s.W, dyt.data(), s.H, Assign{});
            acc_t* dg = dg_of(di, g);
            scan_backward(g.horizontal ? dyt.data() : dym.data(), g.horizontal ? sc.xt.data() : xn,
                          sc.gate(di, 0), sc.gate(di, 1), sc.gate(di, 2), sc.hidden(di), g,
                          g.horizontal ? dxt.data() : dxk, dg, dg + (g.horizontal ? hw : pr.gate_plane_stride()),
                          dg + 2 * (g.horizontal ? hw : pr.gate_plane_stride()), sc.work.data());
          }
          if (horizontal) transpose(dxt.data(), s.W, s.H, s.H, dxk, s.W, Add{});
        }
        if (!need_dg) continue;
        for (int64_t di = 0; di < s.D; ++di) {
          const Geo g = make_geo(dirs[di], s.H, s.W);
          const int64_t ps = pr.gate_plane_stride();
          acc_t* src = dg_of(di, g);
          const int64_t src_stride = g.horizontal ? hw : ps;
          // Masked gates get no gradient (the first step is never accumulated).
          for (int64_t t = 0; t < g.T; ++t) src[t * g.L] = src[2 * src_stride + t * g.L + g.L - 1] = acc_t(0);
          acc_t* out = dgp + pr.gate_offset(di);
          if (g.horizontal) {
            for (int j = 0; j < 3; ++j) transpose(src + j * hw, g.T, g.L, g.L, out + j * ps, g.T, Assign{});
          }
          const scalar_t* r = pr.gates + pr.gate_offset(di);
          if (norm == kBounded) normalise_backward<kBounded>(r, ps, hw, aeps, out);
          else if (norm == kUnitSum) normalise_backward<kUnitSum>(r, ps, hw, aeps, out);
        }
      }
    });
  });
  return {dx, dgates};
}

}  // namespace

// Called through torch.ops.refine_cli_spn.* from refine_cli/ops/cpp.py (inside an autograd.Function).
TORCH_LIBRARY(refine_cli_spn, m) {
  m.def("scan_forward(Tensor x, Tensor gates, int[] dirs, int norm, float eps) -> Tensor");
  m.def("scan_backward(Tensor grad, Tensor x, Tensor gates, int[] dirs, int norm, float eps, bool need_dx, "
        "bool need_dg) -> (Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(refine_cli_spn, CPU, m) {
  m.impl("scan_forward", &forward);
  m.impl("scan_backward", &backward);
}
