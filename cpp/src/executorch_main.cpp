// edgevit_infer_et: run an edgevit-exported ExecuTorch program (.pte) with the ExecuTorch C++ runtime
// (the one an Android/iOS app links) and print the same key=value lines as edgevit_infer (OpenVINO).
//
//   edgevit_infer_et MODEL.pte INPUT [--threads N] [--runs N] [--warmup N] [--logits-out FILE]
//                    [--mean R,G,B --std R,G,B]
//
// INPUT: a binary PPM (P6) / PGM (P5) image, centre-cropped, resized and normalised exactly as
//        edgevit.images does (mean/std from the manifest beside the program, MODEL.pte.json, unless given),
//        or a raw tensor file (the input's exact bytes, float32 NCHW).
// The XNNPACK delegate and the CPU kernels register themselves when their libraries load: the program
// runs whatever part the exporter delegated in XNNPACK and the rest in the optimized/portable kernels.

#include <executorch/extension/module/module.h>
#include <executorch/extension/tensor/tensor.h>

#include <cstdint>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <iterator>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

#include "app_common.hpp"

// The wheel ships libexecutorch_threadpool.so but not its header (extension/threadpool/threadpool.h);
// these are the two exported functions the app needs, declared as that header declares them.
namespace executorch::extension::threadpool {
class ThreadPool {
public:
    bool _unsafe_reset_threadpool(uint32_t num_threads);
    size_t get_thread_count() const;
};
ThreadPool* get_threadpool();
}  // namespace executorch::extension::threadpool

namespace {

namespace et = executorch;

const char* const kUsage =
    "edgevit_infer_et MODEL.pte INPUT [--threads N] [--runs N] [--warmup N] [--logits-out FILE] "
    "[--mean R,G,B --std R,G,B]";

template <typename T>
T check(et::runtime::Result<T> result, const std::string& what) {
    if (!result.ok())
        throw std::runtime_error(what + " failed: " + et::runtime::to_string(result.error()));
    return std::move(result.get());
}

void check(et::runtime::Error error, const std::string& what) {
    if (error != et::runtime::Error::Ok) throw std::runtime_error(what + " failed: " + et::runtime::to_string(error));
}

std::string read_text(const std::string& path) {
    std::ifstream f(path);
    return f ? std::string(std::istreambuf_iterator<char>(f), std::istreambuf_iterator<char>()) : std::string();
}

// A top-level list of strings in the manifest ("backends": ["XnnpackBackend"]), comma-joined.
std::optional<std::string> manifest_list(const std::string& manifest, const std::string& key) {
    const std::string needle = "\"" + key + "\": [";
    const size_t at = manifest.find(needle);
    if (at == std::string::npos) return std::nullopt;
    const size_t end = manifest.find(']', at);
    std::string out;
    for (char c : manifest.substr(at + needle.size(), end - at - needle.size()))
        if (c != '"' && c != ' ' && c != '\n') out += c;
    return out;
}

int run(int argc, char** argv) {
    const edgevit::AppArgs args = edgevit::parse_args(argc, argv, kUsage);
    if (!std::filesystem::is_regular_file(args.model)) throw std::runtime_error("no such program: " + args.model);
    const std::string manifest = read_text(args.model + ".json");  // written beside the .pte by edgevit
    auto* pool = et::extension::threadpool::get_threadpool();
    if (args.threads > 0 && pool != nullptr) pool->_unsafe_reset_threadpool(static_cast<uint32_t>(args.threads));

    et::extension::Module module(args.model, et::extension::Module::LoadMode::MmapUseMlockIgnoreErrors);
    check(module.load_forward(), "loading " + args.model);
    const auto meta = check(module.method_meta("forward"), "reading the program's forward method");
    if (meta.num_inputs() != 1) throw std::runtime_error("edgevit_infer_et handles single-input programs");
    const auto in_info = check(meta.input_tensor_meta(0), "reading the input description");
    if (in_info.scalar_type() != et::aten::ScalarType::Float || in_info.sizes().size() != 4)
        throw std::runtime_error("edgevit_infer_et takes programs with one float32 NCHW input");
    std::vector<int64_t> in_shape(in_info.sizes().begin(), in_info.sizes().end());
    std::vector<float> input(in_info.nbytes() / sizeof(float));

    const auto mean = args.mean.value_or(edgevit::three(edgevit::manifest_value(manifest, "mean").value_or("0.485,0.456,0.406"), "mean"));
    const auto stdev = args.std.value_or(edgevit::three(edgevit::manifest_value(manifest, "std").value_or("0.229,0.224,0.225"), "std"));
    const std::string preprocess = edgevit::fill_float_input(
        args, input.data(), in_info.nbytes(), in_shape[0], static_cast<int>(in_shape[2]), static_cast<int>(in_shape[3]),
        mean, stdev, edgevit::shape_str(in_shape) + " f32");

    std::vector<et::aten::SizesType> sizes(in_shape.begin(), in_shape.end());
    auto tensor = et::extension::from_blob(input.data(), sizes);
    std::vector<et::runtime::EValue> outputs;
    const std::vector<double> ms = edgevit::time_runs(
        [&] { outputs = check(module.forward(tensor), "running forward"); }, args.warmup, args.runs);
    if (outputs.empty() || !outputs[0].isTensor()) throw std::runtime_error("the program's first output is not a tensor");
    const auto out = outputs[0].toTensor();
    std::vector<int64_t> out_shape(out.sizes().begin(), out.sizes().end());

    const auto backends = manifest_list(manifest, "backends");  // [] for a portable-only program
    const std::string delegate = !backends ? "unknown" : backends->empty() ? "none" : *backends;
    std::cout << "model=" << args.model << "\n";
    if (auto name = edgevit::manifest_value(manifest, "model")) std::cout << "edgevit_model=" << edgevit::unquote(*name) << "\n";
    std::cout << "runtime=executorch\n"
              << "device=CPU\n"
              << "delegate=" << delegate << "\n"
              << "threads=" << (pool != nullptr ? pool->get_thread_count() : 1) << "\n"
              << "inference_precision=f32\n"
              << "input=input\n"
              << "input_shape=" << edgevit::shape_str(in_shape) << "\n"
              << "input_type=f32\n"
              << "preprocess=" << preprocess << "\n"
              << "output=" << manifest_list(manifest, "outputs").value_or("output0") << "\n"
              << "output_shape=" << edgevit::shape_str(out_shape) << "\n";
    const bool is_float = out.scalar_type() == et::aten::ScalarType::Float;
    edgevit::report_results(std::cout, args, is_float ? out.const_data_ptr<float>() : nullptr, out_shape,
                            out.const_data_ptr(), out.nbytes(), ms);
    return 0;
}

}  // namespace

int main(int argc, char** argv) {
    return edgevit::guarded_main([&] { return run(argc, argv); });
}
