// The README's typed remote call, as a program: one FORWARD call to the demo backend.
//   apir-typed-call [path/to/libapir-demo-backend.so]
#include <apir/apir.hpp>

#ifndef APIR_DEMO_BACKEND_PATH
#define APIR_DEMO_BACKEND_PATH "libapir-demo-backend.so"
#endif

struct AddRequest {
    int64_t a = 0, b = 0;
    static constexpr auto wire_fields = apir::fields(&AddRequest::a, &AddRequest::b);
};
struct AddReply {
    int64_t sum = 0;
    static constexpr auto wire_fields = apir::fields(&AddReply::sum);
};
using Add = apir::Forward</*backend command id*/ 1, AddRequest, AddReply>;

int main(int argc, char** argv) {
    apir::LoopbackOptions lo; // or a VirtgpuTransport in a VM
    lo.host.config["apir.load_library.path"] = argc > 1 ? argv[1] : APIR_DEMO_BACKEND_PATH;
    apir::Session session(apir::LoopbackTransport(std::move(lo)));

    if (auto c = session.connect(); !c) { // HANDSHAKE + LOADLIBRARY
        fmt::print("connect: {}\n", c.error());
        return 1;
    }
    apir::Expected<AddReply> r = session.call<Add>(AddRequest{40, 2});
    if (!r) return fmt::print("add: {}\n", r.error()), 1;
    fmt::print("40 + 2 = {}\n", r->sum);
}
