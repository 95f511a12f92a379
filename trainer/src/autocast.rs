//! bf16 autocast on CPU as well as CUDA (a C++ shim over LibTorch's per-device switch: tch 0.24's
//! `autocast` turns on CUDA's only). On CPU the bf16 matrix products run on AMX or AVX512-BF16
//! where the processor has them, several times float32's speed; elsewhere they are emulated and slower.

use tch::Device;

extern "C" {
    fn dapt_autocast_enter(device_type: i32) -> bool;
    fn dapt_autocast_exit(device_type: i32, previous: bool);
}

/// Runs `f` with bf16 autocast on `device` when `enabled` (the switch is restored afterwards, also
/// when `f` panics). Matrix products and attention run in bf16; LibTorch keeps reductions,
/// normalisations and the loss (the model casts logits to float32) in float32.
pub fn autocast<T>(device: Device, enabled: bool, f: impl FnOnce() -> T) -> T {
    if !enabled {
        return f();
    }
    let device_type = i32::from(device.is_cuda());
    struct Scope(i32, bool);
    impl Drop for Scope {
        fn drop(&mut self) {
            // SAFETY: restores what `dapt_autocast_enter` returned for the same device type.
            unsafe { dapt_autocast_exit(self.0, self.1) }
        }
    }
    // SAFETY: the shim only flips LibTorch's thread-local autocast state.
    let _scope = Scope(device_type, unsafe { dapt_autocast_enter(device_type) });
    f()
}

/// Whether this processor has native bf16 matrix instructions (AMX-BF16 or AVX512-BF16, from
/// `/proc/cpuinfo`'s flags; false where that file is absent).
pub fn cpu_bf16_native() -> bool {
    static NATIVE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *NATIVE.get_or_init(|| {
        std::fs::read_to_string("/proc/cpuinfo").is_ok_and(|info| {
            info.lines()
                .filter(|line| line.starts_with("flags"))
                .take(1)
                .any(|line| {
                    line.split_whitespace()
                        .any(|flag| flag == "amx_bf16" || flag == "avx512_bf16")
                })
        })
    })
}

/// Refuses bf16 autocast on a CPU without native bf16 instructions; `key` names the setting.
pub fn check_cpu_bf16(key: &str) -> crate::Result<()> {
    if cpu_bf16_native() {
        Ok(())
    } else {
        Err(crate::Error::Setting {
            key: key.into(),
            reason: "this processor has neither AMX-BF16 nor AVX512-BF16 (see /proc/cpuinfo): bf16 on it is emulated and slower than float32; leave it off".into(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{Kind, Tensor};

    #[test]
    fn cpu_autocast_multiplies_in_bf16_inside_the_scope_only() {
        let a = Tensor::ones([4, 8], (Kind::Float, Device::Cpu));
        let b = Tensor::ones([8, 3], (Kind::Float, Device::Cpu));
        assert_eq!(a.matmul(&b).kind(), Kind::Float);
        let (outer, inner) = autocast(Device::Cpu, true, || {
            let inner = autocast(Device::Cpu, true, || a.matmul(&b).kind());
            // Leaving the nested scope keeps the outer one on.
            (a.matmul(&b).kind(), inner)
        });
        assert_eq!((outer, inner), (Kind::BFloat16, Kind::BFloat16));
        assert_eq!(a.matmul(&b).kind(), Kind::Float);
        assert_eq!(
            autocast(Device::Cpu, false, || a.matmul(&b).kind()),
            Kind::Float
        );
        // Elementwise work and reductions stay in float32.
        assert_eq!(
            autocast(Device::Cpu, true, || (&a + 1.0).sum(Kind::Float).kind()),
            Kind::Float
        );
    }
}
