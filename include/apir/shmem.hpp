// Host-visible shared memory: Shmem (a resource id and its mapping, released when
// destroyed), ShmemOwner, what a transport implements to take a blob back, and
// ShmemLink, which lets a Shmem outlive its owner.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <mutex>
#include <span>
#include <utility>

namespace apir {

/// What owns shared memory and takes it back. Implemented by the transports.
class ShmemOwner {
public:
    virtual void release_shmem(uint32_t res_id) noexcept = 0;

protected:
    ~ShmemOwner() = default;
};

/// The tie between an owner and the Shmems it hands out, shared by them: a Shmem
/// releases its blob through it while the owner lives. An owner whose Shmems may outlive
/// it makes one (ShmemLink::make(*this)) and calls disown() first in its destructor.
class ShmemLink {
public:
    explicit ShmemLink(ShmemOwner& owner) noexcept : owner_(&owner) {}
    [[nodiscard]] static std::shared_ptr<ShmemLink> make(ShmemOwner& owner) {
        return std::make_shared<ShmemLink>(owner);
    }
    ShmemLink(const ShmemLink&) = delete;
    ShmemLink& operator=(const ShmemLink&) = delete;

    /// Waits for a release in progress; releasing a Shmem later does nothing.
    void disown() noexcept {
        std::lock_guard lk(mu_);
        owner_ = nullptr;
    }
    /// Hands res_id back to the owner, if it is still there.
    void release(uint32_t res_id) noexcept {
        std::lock_guard lk(mu_);
        if (owner_) owner_->release_shmem(res_id);
    }

private:
    std::mutex mu_;
    ShmemOwner* owner_;
};

/// One host-visible shared-memory blob: its resource id and its mapping.
/// Move-only; releases the blob (unmap, close) when destroyed. It may outlive the
/// transport that created it (LoopbackTransport, VirtgpuTransport): its mapping is
/// gone with the transport, and destroying it then does nothing.
class Shmem {
public:
    Shmem() = default;
    Shmem(std::shared_ptr<ShmemLink> link, uint32_t res_id, std::span<std::byte> bytes) noexcept
        : link_(std::move(link)), res_id_(res_id), bytes_(bytes) {}
    Shmem(Shmem&& o) noexcept
        : link_(std::move(o.link_)), res_id_(std::exchange(o.res_id_, 0)),
          bytes_(std::exchange(o.bytes_, {})) {}
    Shmem& operator=(Shmem&& o) noexcept {
        if (this != &o) {
            reset();
            link_ = std::move(o.link_);
            res_id_ = std::exchange(o.res_id_, 0);
            bytes_ = std::exchange(o.bytes_, {});
        }
        return *this;
    }
    Shmem(const Shmem&) = delete;
    Shmem& operator=(const Shmem&) = delete;
    ~Shmem() { reset(); }

    void reset() noexcept {
        if (link_) link_->release(res_id_);
        link_.reset();
        res_id_ = 0;
        bytes_ = {};
    }

    [[nodiscard]] uint32_t res_id() const noexcept { return res_id_; }
    [[nodiscard]] std::span<std::byte> bytes() const noexcept { return bytes_; }
    [[nodiscard]] size_t size() const noexcept { return bytes_.size(); }
    [[nodiscard]] std::byte* data() const noexcept { return bytes_.data(); }
    explicit operator bool() const noexcept { return link_ != nullptr; }

private:
    std::shared_ptr<ShmemLink> link_;
    uint32_t res_id_ = 0;
    std::span<std::byte> bytes_;
};

} // namespace apir
