// bf16 autocast on any device. tch 0.24's `autocast` switches CUDA's only (LibTorch's deprecated
// device-less call); LibTorch 2.x keeps a switch per device type, and on CPU its bf16 matrix
// products run on AMX / AVX512-BF16 where the processor has them (oneDNN).
#include <ATen/autocast_mode.h>

extern "C" {

// Turns bf16 autocast on for the device type (0: CPU, 1: CUDA) and returns whether it was on.
bool dapt_autocast_enter(int device_type) {
    const auto device = device_type == 1 ? at::kCUDA : at::kCPU;
    const bool previous = at::autocast::is_autocast_enabled(device);
    at::autocast::set_autocast_enabled(device, true);
    at::autocast::set_autocast_dtype(device, at::kBFloat16);
    at::autocast::increment_nesting();
    return previous;
}

// Restores the switch; the cache of cast weights is dropped when the outermost scope ends.
void dapt_autocast_exit(int device_type, bool previous) {
    const auto device = device_type == 1 ? at::kCUDA : at::kCPU;
    if (at::autocast::decrement_nesting() == 0) {
        at::autocast::clear_cache();
    }
    at::autocast::set_autocast_enabled(device, previous);
}

}  // extern "C"
