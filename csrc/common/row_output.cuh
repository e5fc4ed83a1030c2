// The decode kernels' epilogue for one query row: its normalised output and LSE, written as the
// final result (a request with a single split) or as a partial for the combine kernel.
#pragma once

#include <math_constants.h>

#include "common/decode_params.h"
#include "common/ptx_sm80.cuh"

namespace flash_mla_backend {

template <typename Element>
class RowOutput {
 public:
  // q_row: the row among the kv head's rows_per_kv_head; split: the global split index of this
  // piece (num_splits[req] + its ordinal); valid: the request's inputs passed the kernel's checks
  // (else NaN); row_max (base 2) and row_sum: the row's online-softmax state over the keys this
  // CTA saw.
  __device__ RowOutput(const DecodeParams& p, int req, int kv_head, int q_row, int split, bool final_output,
                       bool valid, float row_max, float row_sum)
      : final_output_(final_output) {
    const QueryRow qr(p, kv_head, q_row);
    const bool seen = row_sum > 0.f;
    out_scale_ = !valid ? CUDART_NAN_F : seen ? value_scale(p) / row_sum : 0.f;
    lse_log2_ = !valid ? CUDART_NAN_F : seen ? row_max + log2f(row_sum) : -CUDART_INF_F;
    if (final_output) {
      out_ = static_cast<Element*>(p.out) + int64_t(req) * p.o_batch_stride + qr.token * p.o_seq_stride +
             qr.head * p.o_head_stride;
      lse_ = p.lse + (int64_t(req) * p.h_q + qr.head) * p.s_q + qr.token;
      return;
    }
    const int row = accum_row(req, p.num_splits[req], split - p.num_splits[req]);
    // A num_splits that is not get_mla_metadata's can point outside the workspace: nothing is
    // written then, and the combine kernel, which checks the same bound, gives NaN.
    if (row < 0 || row >= num_accum_rows(p.num_sm_parts)) return;
    const int64_t accum_index = (int64_t(row) * p.h_kv + kv_head) * p.rows_per_kv_head + q_row;
    accum_ = p.out_accum + accum_index * kHeadDimV;
    lse_ = p.lse_accum + accum_index;
  }

  // kPairs column pairs (first_col + 8 i, first_col + 8 i + 1), the layout of an mma accumulator
  // row; pair_at(i) gives pair i before normalisation, as a float2.
  template <int kPairs, typename PairAt>
  __device__ void store_pairs(int first_col, PairAt pair_at) const {
    if (final_output_) {
#pragma unroll
      for (int i = 0; i < kPairs; ++i) {
        const float2 v = pair_at(i);
        *reinterpret_cast<uint32_t*>(out_ + first_col + 8 * i) =
            MmaTraits<Element>::pack(v.x * out_scale_, v.y * out_scale_);
      }
    } else if (accum_ != nullptr) {
#pragma unroll
      for (int i = 0; i < kPairs; ++i) {
        const float2 v = pair_at(i);
        *reinterpret_cast<float2*>(accum_ + first_col + 8 * i) = make_float2(v.x * out_scale_, v.y * out_scale_);
      }
    }
  }

  // Column `col` alone, given before normalisation (for accumulators that hold a row's columns
  // apart, as the swapped-operand kernel's do).
  __device__ void store(int col, float v) const {
    if (final_output_)
      out_[col] = MmaTraits<Element>::round(v * out_scale_);
    else if (accum_ != nullptr)
      accum_[col] = v * out_scale_;
  }

  // The final LSE is natural-log with +inf for a row that saw nothing; a partial one stays base 2
  // with -inf, which the combine kernel expects.
  __device__ void store_lse() const {
    if (lse_ == nullptr) return;
    *lse_ = final_output_ ? (lse_log2_ == -CUDART_INF_F ? CUDART_INF_F : lse_log2_ * kLn2) : lse_log2_;
  }

 private:
  bool final_output_;
  float out_scale_;  // 1 / row_sum, times the FP8 cache's value scale
  float lse_log2_;
  Element* out_ = nullptr;
  float* accum_ = nullptr;
  float* lse_ = nullptr;
};

}  // namespace flash_mla_backend
