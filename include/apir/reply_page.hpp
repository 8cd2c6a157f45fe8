// The reply page: how a host tells a guest that its reply is ready.
//
// Every call names a reply page (shared memory). Its first 4 bytes are the
// notification word: the guest stores 0 before submitting (reset_notification), the
// host writes the reply payload after the word and then stores (return code + 1)
// into it (notify_reply); the guest waits until the word is non-zero
// (wait_for_reply) and decodes reply_payload(). Guest and host both use this header;
// the waiting and the notifying are compiled in src/libapir/transport/wait.cpp.
//
//     apir::reset_notification(page);
//     APIR_TRY(transport.submit(command, page.res_id(), deadline));
//     auto code = apir::wait_for_reply(page.bytes(), apir::WaitPolicy{}, deadline);
#pragma once

#include "apir/error.hpp"
#include "apir/export.hpp"
#include "apir/protocol.hpp"
#include "apir/transport.hpp"

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <span>

namespace apir {

/// The notification word at the start of a reply page.
[[nodiscard]] inline std::atomic_ref<uint32_t>
notification_word(std::span<std::byte> page) noexcept {
    return std::atomic_ref<uint32_t>(*reinterpret_cast<uint32_t*>(page.data()));
}
/// The guest stores 0 before submitting.
inline void reset_notification(const Shmem& page) noexcept {
    notification_word(page.bytes()).store(0, std::memory_order_relaxed);
}
/// The reply payload: everything after the notification word.
[[nodiscard]] inline std::span<std::byte> reply_payload(const Shmem& page) noexcept {
    return page.bytes().subspan(reply_header_size);
}

/// How a transport helps the wait: a host in this process can wake a blocked waiter
/// and report that it died. A remote host (DRM) offers neither.
struct WaitHooks {
    /// Non-null when the host wakes sleepers with a futex on the notification word
    /// after storing it; the waiter counts itself here while blocked.
    std::atomic<uint32_t>* sleepers = nullptr;
    /// Non-null when the transport knows whether its host is still running.
    const std::atomic<bool>* host_alive = nullptr;
    /// Non-null when the transport learns how long its waits should spin.
    SpinBudget* budget = nullptr;
    /// Non-null when the host runs on a CPU of this machine: the CPU it last ran on
    /// (-1 unknown). A waiter on that same CPU cannot win by spinning: it yields at once.
    const std::atomic<int>* host_cpu = nullptr;
    /// The host is another process of this machine, on a CPU the waiter cannot know
    /// (vtest's server): the spin yields the CPU between looks, since the host may be
    /// waiting for this very CPU. Without host_cpu's hold-off: a yield that kept the
    /// waiter off the CPU for long usually ran the host, and the spin's length bounds
    /// what a yield to another program costs.
    bool yield_between_looks = false;
};

/// Waits until the notification word is non-zero (acquire), then returns the
/// return code (word - 1). TIMEOUT on deadline, DISCONNECTED when the host died.
/// The one wait loop every transport shares (src/libapir/transport/wait.cpp).
[[nodiscard]] APIR_EXPORT Expected<uint32_t> wait_for_reply(std::span<std::byte> page,
                                                            const WaitPolicy& policy,
                                                            Deadline deadline,
                                                            const WaitHooks& hooks = {});

/// Host side: stores (code + 1) with release ordering, after the reply payload.
/// If a waiter may be blocked on the word, wakes it.
APIR_EXPORT void notify_reply(std::span<std::byte> page, uint32_t code,
                              std::atomic<uint32_t>* sleepers) noexcept;

} // namespace apir
