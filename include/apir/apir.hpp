// A guest program's umbrella header: the wire codec, errors and logging, the transports
// (loopback with its in-process host, and the virtio-gpu DRM transport when this apir
// was built with it: APIR_HAVE_DRM), typed calls and the session.
//
// A backend library includes apir/backend.hpp instead (the C ABI, the wire codec and
// the protocol's codes).
#pragma once

#include "apir/config.hpp"
#include "apir/export.hpp"

#include "apir/call.hpp"
#include "apir/command.hpp"
#include "apir/error.hpp"
#include "apir/host.hpp"
#include "apir/host_memory.hpp"
#include "apir/log.hpp"
#include "apir/loopback.hpp"
#include "apir/loopback_link.hpp"
#include "apir/protocol.hpp"
#include "apir/reply_page.hpp"
#include "apir/session.hpp"
#include "apir/transport.hpp"
#include "apir/vtest.hpp"
#include "apir/wire.hpp"
#if APIR_HAVE_DRM
#include "apir/virtgpu.hpp"
#endif
