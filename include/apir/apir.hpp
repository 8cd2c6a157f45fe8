// Everything a guest program needs: wire codec, transports, typed calls, session.
#pragma once

#include "apir/call.hpp"
#include "apir/error.hpp"
#include "apir/host.hpp"
#include "apir/log.hpp"
#include "apir/loopback.hpp"
#include "apir/protocol.hpp"
#include "apir/session.hpp"
#include "apir/transport.hpp"
#include "apir/wire.hpp"
