// Variable-length flash attention for packed rows (the `cuda` feature of dapt-trainer).
//
// tch 0.24 binds `_flash_attention_backward` but not `_flash_attention_forward`; this shim calls the
// forward through ATen's dispatcher, whose autograd kernel (PyTorch's derivatives.yaml) records the
// backward, so gradients flow as for any other tch operation. Tensors cross the boundary as the
// `at::Tensor*` that tch's `C_tensor` pointers are.
#include <ATen/ATen.h>

#include <cstdlib>
#include <cstring>
#include <exception>
#include <string>

namespace {
char* copy_message(const char* message) {
    const size_t length = std::strlen(message);
    char* copy = static_cast<char*>(std::malloc(length + 1));
    if (copy != nullptr) {
        std::memcpy(copy, message, length + 1);
    }
    return copy;
}
}  // namespace

extern "C" {

// q: [total, heads, head_dim], k and v: [total, kv_heads, head_dim] (bf16 or f16, CUDA);
// cu_seqlens: [segments + 1] int32, the cumulative segment lengths over the flattened batch.
// On success `*out` is a new tensor [total, heads, head_dim] (owned by the caller) and the result is
// null; on failure the result is an error message for the caller to free with `free`.
char* dapt_flash_varlen_forward(const at::Tensor* q, const at::Tensor* k, const at::Tensor* v,
                                const at::Tensor* cu_seqlens, int64_t max_seqlen, double scale,
                                at::Tensor** out) {
    try {
        auto result = at::_flash_attention_forward(
            *q, *k, *v, *cu_seqlens, *cu_seqlens, max_seqlen, max_seqlen,
            /*dropout_p=*/0.0, /*is_causal=*/true, /*return_debug_mask=*/false, scale);
        *out = new at::Tensor(std::get<0>(result));
        return nullptr;
    } catch (const std::exception& e) {
        return copy_message(e.what());
    }
}

}  // extern "C"
