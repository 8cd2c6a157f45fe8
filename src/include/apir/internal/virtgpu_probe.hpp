// Internal: probing render nodes, shared by discover_virtgpu() and VirtgpuTransport::open().
#pragma once

#include "apir/internal/virtgpu_ioctl.hpp"

#include <vector>

namespace apir::drm {

/// The nodes to consider: VirtgpuOptions::node, or every render node.
[[nodiscard]] Expected<std::vector<DrmNode>> nodes_to_probe(DrmDevice& dev,
                                                            const VirtgpuOptions& options);

/// The probing chain of one node, each step its own check: open → VERSION (virtio_gpu,
/// major 0) → GETPARAM (3D, blobs, host-visible memory, context init) → capset choice
/// → GET_CAPS (blob support). Fills report; on failure sets report.error and returns
/// an empty fd (everything it opened is closed again).
[[nodiscard]] UniqueFd probe_node(DrmDevice& dev, const DrmNode& node,
                                  const VirtgpuOptions& options, VirtgpuNodeReport& report);

/// One error saying why none of the nodes is usable.
[[nodiscard]] Error no_usable_node(const std::vector<VirtgpuNodeReport>& reports);

} // namespace apir::drm
