//! Variable-length flash attention on CUDA (feature `cuda`): packed rows are flattened to one
//! sequence of tokens and the kernel is told where each segment starts (`cu_seqlens`), so attention
//! stays inside segments without a `[t, t]` mask per row. The kernel is PyTorch's own
//! (`aten::_flash_attention_forward`, reached through `csrc/flash_varlen.cpp`); its autograd
//! formula gives the backward.
use std::ffi::{c_char, CStr};

use tch::{Kind, Tensor};

extern "C" {
    fn dapt_flash_varlen_forward(
        q: *const std::ffi::c_void,
        k: *const std::ffi::c_void,
        v: *const std::ffi::c_void,
        cu_seqlens: *const std::ffi::c_void,
        max_seqlen: i64,
        scale: f64,
        out: *mut *mut std::ffi::c_void,
    ) -> *mut c_char;
    fn free(pointer: *mut std::ffi::c_void);
}

/// Causal attention of `q: [total, heads, head_dim]` over `k`, `v: [total, kv_heads, head_dim]`
/// within the segments that `cu_seqlens` (int32 on the same device, `[segments + 1]`) delimits;
/// `q`, `k`, `v` in bf16 or f16 on CUDA. Returns `[total, heads, head_dim]`.
pub fn varlen_attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    cu_seqlens: &Tensor,
    max_seqlen: i64,
) -> Result<Tensor, String> {
    let head_dim = q.size()[2];
    let scale = 1.0 / (head_dim as f64).sqrt();
    let mut out: *mut std::ffi::c_void = std::ptr::null_mut();
    // SAFETY: the pointers are tch's `at::Tensor*` handles, alive for the call; on success the shim
    // hands over a new heap-allocated `at::Tensor*` that `Tensor::from_ptr` takes ownership of.
    unsafe {
        let error = dapt_flash_varlen_forward(
            q.as_ptr().cast(),
            k.as_ptr().cast(),
            v.as_ptr().cast(),
            cu_seqlens.as_ptr().cast(),
            max_seqlen,
            scale,
            &mut out,
        );
        if !error.is_null() {
            let message = CStr::from_ptr(error).to_string_lossy().into_owned();
            free(error.cast());
            return Err(message);
        }
        Ok(Tensor::from_ptr(out.cast()))
    }
}

/// Whether the flash kernel takes these inputs: CUDA, bf16/f16, head_dim a multiple of 8 up to 256.
pub fn supported(q: &Tensor) -> bool {
    let head_dim = q.size().last().copied().unwrap_or(0);
    q.device().is_cuda()
        && matches!(q.kind(), Kind::BFloat16 | Kind::Half)
        && head_dim % 8 == 0
        && head_dim <= 256
}
