// The options of a Session (SessionOptions) and of one call (CallOptions).
#pragma once

#include "apir/deadline.hpp"
#include "apir/log.hpp"
#include "apir/protocol.hpp"
#include "apir/wait.hpp"

#include <chrono>
#include <cstddef>
#include <optional>

namespace apir {

struct SessionOptions {
    std::chrono::nanoseconds handshake_timeout =
        std::chrono::milliseconds(default_handshake_timeout_ms);
    std::chrono::nanoseconds load_library_timeout =
        std::chrono::milliseconds(default_load_library_timeout_ms);
    /// Deadline of FORWARD calls; none waits forever (as ggml does).
    std::optional<std::chrono::nanoseconds> forward_timeout;
    WaitPolicy wait;
    /// Size of each command buffer (ggml uses 4 KiB); a larger request fails with
    /// ENCODE_OVERFLOW before anything is sent.
    size_t command_buffer_size = 4096;
    /// Whether connect() sends LOADLIBRARY after the handshake.
    bool load_library = true;
    /// Whether stats() carries the time calls take (total, max): two clock reads per
    /// call, more than the rest of a fast loopback call costs. Counts are always kept.
    bool time_calls = false;
    /// Cap on what one reply may make the guest allocate (strings, vectors).
    size_t max_reply_alloc = reply_page_size;
    /// Staging blobs lent at once to threads that hold none (at most 1024): past it,
    /// stage() waits its turn. A thread that already holds one gets another at once,
    /// up to twice this many in all (see Session::stage).
    size_t staging_blobs = 4;
    /// Bytes of free staging blobs the session keeps for reuse: a blob given back
    /// while the free ones add up to more is released, so one large transfer does not
    /// keep its memory (blobs lent to other threads do not count).
    size_t staging_retain_bytes = size_t{64} << 20;
    /// How long stage() without a deadline waits for a blob other threads hold.
    std::chrono::nanoseconds staging_timeout = std::chrono::seconds(60);
    Logger logger;
};

/// Per-call options.
struct CallOptions {
    /// Overrides the session's deadline for this call.
    std::optional<Deadline> deadline;
    /// Receives the call's duration (submit to decoded reply), if set.
    std::chrono::nanoseconds* duration = nullptr;
};

} // namespace apir
