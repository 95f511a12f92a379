// Collectives for data-parallel training (the `dist` feature of dapt-trainer).
//
// tch 0.24 binds nothing of PyTorch's distributed library, but LibTorch ships it: libtorch_cpu.so
// exports c10d's TCPStore (rendezvous) and ProcessGroupGloo (collectives over TCP on CPU tensors).
// This shim creates a process group and starts collectives on tch's tensors, which cross the
// boundary as the `at::Tensor*` that tch's `C_tensor` pointers are. Every call catches C++
// exceptions and returns the message (malloc'd, for the caller to free) or null on success.
#include <torch/csrc/distributed/c10d/PrefixStore.hpp>
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>

#include <chrono>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <string>
#include <vector>

namespace {
char* copy_message(const std::string& message) {
    char* copy = static_cast<char*>(std::malloc(message.size() + 1));
    if (copy != nullptr) {
        std::memcpy(copy, message.c_str(), message.size() + 1);
    }
    return copy;
}

template <typename F>
char* guarded(F&& body) {
    try {
        body();
        return nullptr;
    } catch (const std::exception& e) {
        return copy_message(e.what());
    } catch (...) {
        return copy_message("unknown C++ exception");
    }
}
}  // namespace

struct DaptGroup {
    c10::intrusive_ptr<c10d::Store> store;
    c10::intrusive_ptr<c10d::ProcessGroupGloo> group;
    std::chrono::milliseconds timeout;
};

struct DaptWork {
    c10::intrusive_ptr<c10d::Work> work;
};

extern "C" {

// Joins the group of `world` ranks whose TCPStore listens on host:port (served by this process when
// `serve_store`: rank 0, unless a launcher's agent serves it); keys live under `prefix`. The gloo
// device binds to the interface named by GLOO_SOCKET_IFNAME when set, else to `bind_host`'s address
// when given, else to this machine's hostname (loopback when that does not resolve). Collectives
// that wait longer than `timeout_ms` (a lost or stuck peer) fail.
char* dapt_dist_init(const char* host, uint16_t port, int rank, int world, bool serve_store,
                     const char* prefix, const char* bind_host, int64_t timeout_ms,
                     DaptGroup** out) {
    return guarded([&] {
        const std::chrono::milliseconds timeout(timeout_ms);
        c10d::TCPStoreOptions options;
        options.port = port;
        options.isServer = serve_store;
        options.numWorkers = static_cast<std::size_t>(world);
        options.waitWorkers = true;
        options.timeout = timeout;
        auto tcp = c10::make_intrusive<c10d::TCPStore>(std::string(host), options);
        auto store = c10::make_intrusive<c10d::PrefixStore>(std::string(prefix), tcp);
        auto gloo = c10d::ProcessGroupGloo::Options::create(timeout);
        const char* interface = std::getenv("GLOO_SOCKET_IFNAME");
        if (interface != nullptr && interface[0] != '\0') {
            gloo->devices.push_back(c10d::ProcessGroupGloo::createDeviceForInterface(interface));
        } else if (bind_host != nullptr && bind_host[0] != '\0') {
            gloo->devices.push_back(c10d::ProcessGroupGloo::createDeviceForHostname(bind_host));
        } else {
            gloo->devices.push_back(c10d::ProcessGroupGloo::createDefaultDevice());
        }
        auto group = c10::make_intrusive<c10d::ProcessGroupGloo>(store, rank, world, gloo);
        *out = new DaptGroup{store, group, timeout};
    });
}

void dapt_dist_free(DaptGroup* group) { delete group; }

// Sums `tensor` over every rank, in place (started; finish with dapt_dist_wait).
char* dapt_dist_allreduce(DaptGroup* group, const at::Tensor* tensor, DaptWork** out) {
    return guarded([&] {
        std::vector<at::Tensor> tensors{*tensor};
        c10d::AllreduceOptions options;
        options.reduceOp = c10d::ReduceOp::SUM;
        *out = new DaptWork{group->group->allreduce(tensors, options)};
    });
}

// Copies `tensor` of rank `root` into every rank's `tensor` (started).
char* dapt_dist_broadcast(DaptGroup* group, const at::Tensor* tensor, int root, DaptWork** out) {
    return guarded([&] {
        std::vector<at::Tensor> tensors{*tensor};
        c10d::BroadcastOptions options;
        options.rootRank = root;
        options.rootTensor = 0;
        *out = new DaptWork{group->group->broadcast(tensors, options)};
    });
}

// Sums `input` ([world * n]) over every rank; rank r's `output` ([n]) receives part r (started).
char* dapt_dist_reduce_scatter(DaptGroup* group, const at::Tensor* output, const at::Tensor* input,
                               DaptWork** out) {
    return guarded([&] {
        at::Tensor o = *output;
        at::Tensor i = *input;
        c10d::ReduceScatterOptions options;
        options.reduceOp = c10d::ReduceOp::SUM;
        *out = new DaptWork{group->group->_reduce_scatter_base(o, i, options)};
    });
}

// Concatenates every rank's `input` ([n]) into `output` ([world * n]) in rank order (started).
char* dapt_dist_allgather(DaptGroup* group, const at::Tensor* output, const at::Tensor* input,
                          DaptWork** out) {
    return guarded([&] {
        at::Tensor o = *output;
        at::Tensor i = *input;
        *out = new DaptWork{group->group->_allgather_base(o, i)};
    });
}

// Returns once every rank has called it (started).
char* dapt_dist_barrier(DaptGroup* group, DaptWork** out) {
    return guarded([&] { *out = new DaptWork{group->group->barrier()}; });
}

// Waits for a started collective and frees its handle; an error of the collective (a peer lost,
// the timeout passed) is returned.
char* dapt_dist_wait(DaptGroup* group, DaptWork* work) {
    char* error = guarded([&] {
        if (!work->work->wait(group->timeout)) {
            throw std::runtime_error("collective did not complete");
        }
    });
    delete work;
    return error;
}

}  // extern "C"
