// Host-visible shared memory: Shmem (a resource id and its mapping, released when
// destroyed) and ShmemOwner, what a transport implements to take a blob back.
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
    ShmemOwner() : link_(std::make_shared<Link>(this)) {}
    // A copy is another owner: it gets a link of its own.
    ShmemOwner(const ShmemOwner&) : link_(std::make_shared<Link>(this)) {}
    ShmemOwner& operator=(const ShmemOwner&) noexcept { return *this; }
    ~ShmemOwner() = default;
    /// Called first by the destructor of an owner whose Shmems may outlive it: waits
    /// for a release in progress; destroying one of its Shmems later does nothing.
    void disown_shmem() noexcept {
        std::lock_guard lk(link_->mu);
        link_->owner = nullptr;
    }

private:
    friend class Shmem;
    // What a Shmem holds of its owner: the owner, until it disowns its blobs.
    struct Link {
        explicit Link(ShmemOwner* o) : owner(o) {}
        std::mutex mu;
        ShmemOwner* owner;
    };
    std::shared_ptr<Link> link_;
};

/// One host-visible shared-memory blob: its resource id and its mapping.
/// Move-only; releases the blob (unmap, close) when destroyed. It may outlive the
/// transport that created it (LoopbackTransport, VirtgpuTransport): its mapping is
/// gone with the transport, and destroying it then does nothing.
class Shmem {
public:
    Shmem() = default;
    Shmem(ShmemOwner* owner, uint32_t res_id, std::span<std::byte> bytes) noexcept
        : link_(owner ? owner->link_ : nullptr), res_id_(res_id), bytes_(bytes) {}
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
        if (link_) {
            std::lock_guard lk(link_->mu);
            if (link_->owner) link_->owner->release_shmem(res_id_);
        }
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
    std::shared_ptr<ShmemOwner::Link> link_;
    uint32_t res_id_ = 0;
    std::span<std::byte> bytes_;
};

} // namespace apir
