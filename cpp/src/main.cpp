// edgevit_infer: run an edgevit-exported model with the OpenVINO C++ runtime and print the top-5
// classes and the latency as key=value lines (one per line, easy to parse from scripts and tests).
//
//   edgevit_infer MODEL INPUT [--device CPU] [--precision f32|bf16|f16] [--threads N] [--runs N]
//                 [--warmup N] [--logits-out FILE] [--mean R,G,B --std R,G,B]
//
// MODEL: an IR folder from `edgevit export --to openvino`, its model.xml, or an .onnx file.
// INPUT: a binary PPM (P6) / PGM (P5) image, centre-cropped and resized to the model's input size and
//        normalised with the mean/std stored in the model (or fed as uint8 NHWC when the IR was exported
//        with --embed-preprocess); any other file is a raw tensor (the input's exact bytes, e.g. float32 NCHW).
// Inference precision defaults to f32: OpenVINO would otherwise pick bf16 on CPUs with AMX/AVX512-BF16.

#include <openvino/openvino.hpp>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <iterator>
#include <map>
#include <numeric>
#include <optional>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

#include "image.hpp"

namespace fs = std::filesystem;

namespace {

struct Args {
    std::string model, input, device = "CPU", precision = "f32", logits_out;
    int threads = 0, runs = 10, warmup = 1;
    std::optional<std::array<float, 3>> mean, std;
};

[[noreturn]] void usage(const std::string& why) {
    throw std::invalid_argument(
        why + "\nusage: edgevit_infer MODEL INPUT [--device CPU] [--precision f32|bf16|f16] [--threads N] "
              "[--runs N] [--warmup N] [--logits-out FILE] [--mean R,G,B --std R,G,B]");
}

std::vector<float> parse_floats(std::string text) {  // "[0.485, 0.456, 0.406]" or "0.485,0.456,0.406"
    for (char& c : text)
        if (c == '[' || c == ']' || c == ',') c = ' ';
    std::istringstream in(text);
    return {std::istream_iterator<float>(in), std::istream_iterator<float>()};
}

std::array<float, 3> three(const std::string& text, const std::string& what) {
    auto v = parse_floats(text);
    if (v.size() != 3) usage(what + " needs three comma-separated values");
    return {v[0], v[1], v[2]};
}

Args parse(int argc, char** argv) {
    Args a;
    std::vector<std::string> positional;
    for (int i = 1; i < argc; ++i) {
        std::string k = argv[i];
        auto value = [&]() -> std::string {
            if (i + 1 >= argc) usage(k + " needs a value");
            return argv[++i];
        };
        if (k == "--device") a.device = value();
        else if (k == "--precision") a.precision = value();
        else if (k == "--threads") a.threads = std::stoi(value());
        else if (k == "--runs") a.runs = std::max(1, std::stoi(value()));
        else if (k == "--warmup") a.warmup = std::max(0, std::stoi(value()));
        else if (k == "--logits-out") a.logits_out = value();
        else if (k == "--mean") a.mean = three(value(), "--mean");
        else if (k == "--std") a.std = three(value(), "--std");
        else if (k == "-h" || k == "--help") usage("");
        else if (!k.empty() && k[0] == '-') usage("unknown option " + k);
        else positional.push_back(k);
    }
    if (positional.size() != 2) usage("expected MODEL and INPUT");
    a.model = positional[0];
    a.input = positional[1];
    return a;
}

// edgevit metadata: the "edgevit" rt_info section of an exported IR, or the ONNX metadata_props that
// the ONNX frontend exposes under "framework" with their "edgevit." prefix.
std::optional<std::string> metadata(const std::shared_ptr<ov::Model>& model, const std::string& key) {
    if (model->has_rt_info("edgevit", key)) return model->get_rt_info<std::string>("edgevit", key);
    if (model->has_rt_info("framework", "edgevit." + key))
        return model->get_rt_info<std::string>("framework", "edgevit." + key);
    return std::nullopt;
}

std::string unquote(std::string s) {
    if (s.size() >= 2 && s.front() == '"' && s.back() == '"') return s.substr(1, s.size() - 2);
    return s;
}

std::string shape_str(const ov::Shape& s) {
    std::string out;
    for (size_t i = 0; i < s.size(); ++i) out += (i ? "x" : "") + std::to_string(s[i]);
    return out;
}

std::vector<char> read_file(const std::string& path) {
    std::ifstream f(path, std::ios::binary);
    if (!f) throw std::runtime_error("cannot open " + path);
    return {std::istreambuf_iterator<char>(f), std::istreambuf_iterator<char>()};
}

bool is_image(const std::string& path) {
    auto ext = fs::path(path).extension().string();
    std::transform(ext.begin(), ext.end(), ext.begin(), [](unsigned char c) { return std::tolower(c); });
    return ext == ".ppm" || ext == ".pgm" || ext == ".pnm";
}

int run(const Args& args) {
    std::string model_path = args.model;
    if (fs::is_directory(model_path)) model_path = (fs::path(model_path) / "model.xml").string();
    ov::Core core;
    std::shared_ptr<ov::Model> model = core.read_model(model_path);
    if (model->inputs().size() != 1) throw std::runtime_error("edgevit_infer handles single-input models");

    const bool u8_input = model->input().get_element_type() == ov::element::u8;  // --embed-preprocess
    std::vector<float> size = parse_floats(metadata(model, "input_size").value_or(""));
    ov::PartialShape pshape = model->input().get_partial_shape();
    if (pshape.is_dynamic()) {  // dynamic batch (and/or size): one image at the exported size
        if (size.size() != 2 && (pshape[2].is_dynamic() || pshape[3].is_dynamic()))
            throw std::runtime_error("the model has a dynamic input size and no edgevit input_size metadata");
        auto dim = [&](size_t i, size_t hw) {  // hw: 0 height, 1 width (from the metadata when dynamic)
            return pshape[i].is_static() ? pshape[i].get_length() : static_cast<int64_t>(size.at(hw));
        };
        if (u8_input) pshape = ov::PartialShape{1, dim(1, 0), dim(2, 1), 3};
        else pshape = ov::PartialShape{1, 3, dim(2, 0), dim(3, 1)};
        model->reshape({{model->input().get_any_name(), pshape}});
    }
    const ov::Shape in_shape = model->input().get_shape();
    const int64_t batch = static_cast<int64_t>(in_shape[0]);
    const int height = static_cast<int>(u8_input ? in_shape[1] : in_shape[2]);
    const int width = static_cast<int>(u8_input ? in_shape[2] : in_shape[3]);

    ov::AnyMap config{ov::hint::inference_precision(ov::element::Type(args.precision))};
    if (args.threads > 0) config.emplace(ov::inference_num_threads(args.threads));
    ov::CompiledModel compiled = core.compile_model(model, args.device, config);
    ov::InferRequest request = compiled.create_infer_request();

    ov::Tensor input(model->input().get_element_type(), in_shape);
    std::string preprocess;
    if (is_image(args.input)) {
        const edgevit::Image img = edgevit::fit_to(edgevit::read_pnm(args.input), height, width);
        const size_t per_image = input.get_byte_size() / static_cast<size_t>(batch);
        std::vector<float> chw;
        if (!u8_input) {
            const auto mean = args.mean.value_or(three(metadata(model, "mean").value_or("0.485,0.456,0.406"), "mean"));
            const auto stdev = args.std.value_or(three(metadata(model, "std").value_or("0.229,0.224,0.225"), "std"));
            chw = edgevit::to_chw_normalised(img, mean, stdev);
        }
        for (int64_t b = 0; b < batch; ++b) {  // a static batch gets the same image in every slot
            auto* dst = static_cast<char*>(input.data()) + b * per_image;
            if (u8_input) std::memcpy(dst, img.rgb.data(), per_image);
            else std::memcpy(dst, chw.data(), per_image);
        }
        preprocess = u8_input ? "embedded" : "app";
    } else {
        const std::vector<char> raw = read_file(args.input);
        if (raw.size() != input.get_byte_size())
            throw std::runtime_error(args.input + " has " + std::to_string(raw.size()) + " bytes; the input " +
                                     shape_str(in_shape) + " " + input.get_element_type().get_type_name() +
                                     " takes " + std::to_string(input.get_byte_size()));
        std::memcpy(input.data(), raw.data(), raw.size());
        preprocess = "none";
    }
    request.set_input_tensor(input);

    for (int i = 0; i < args.warmup; ++i) request.infer();
    std::vector<double> ms;
    for (int i = 0; i < args.runs; ++i) {
        const auto t0 = std::chrono::steady_clock::now();
        request.infer();
        ms.push_back(std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count());
    }
    std::vector<double> sorted = ms;
    std::sort(sorted.begin(), sorted.end());

    const ov::Tensor out = request.get_output_tensor(0);
    std::cout << "model=" << model_path << "\n";
    if (auto name = metadata(model, "model")) std::cout << "edgevit_model=" << unquote(*name) << "\n";
    std::cout << "device=" << args.device << "\n"
              << "inference_precision=" << compiled.get_property(ov::hint::inference_precision).get_type_name() << "\n"
              << "input=" << model->input().get_any_name() << "\n"
              << "input_shape=" << shape_str(in_shape) << "\n"
              << "input_type=" << input.get_element_type().get_type_name() << "\n"
              << "preprocess=" << preprocess << "\n"
              << "output=" << compiled.output(0).get_any_name() << "\n"
              << "output_shape=" << shape_str(out.get_shape()) << "\n";
    if (out.get_element_type() == ov::element::f32 && out.get_shape().size() == 2) {
        const size_t classes = out.get_shape()[1];
        const float* logits = out.data<const float>();  // first image of the batch
        std::vector<size_t> idx(classes);
        std::iota(idx.begin(), idx.end(), 0);
        const size_t k = std::min<size_t>(5, classes);
        std::partial_sort(idx.begin(), idx.begin() + static_cast<long>(k), idx.end(),
                          [&](size_t a, size_t b) { return logits[a] > logits[b] || (logits[a] == logits[b] && a < b); });
        std::cout << "top5=";
        for (size_t i = 0; i < k; ++i) std::cout << (i ? "," : "") << idx[i] << ":" << logits[idx[i]];
        std::cout << "\n";
    }
    std::cout << "runs=" << args.runs << "\n"
              << "latency_ms_median=" << sorted[sorted.size() / 2] << "\n"
              << "latency_ms_min=" << sorted.front() << "\n"
              << "latency_ms_mean=" << std::accumulate(ms.begin(), ms.end(), 0.0) / ms.size() << "\n";
    if (!args.logits_out.empty()) {
        std::ofstream f(args.logits_out, std::ios::binary);
        f.write(static_cast<const char*>(out.data()), static_cast<std::streamsize>(out.get_byte_size()));
        if (!f) throw std::runtime_error("cannot write " + args.logits_out);
        std::cout << "logits_out=" << args.logits_out << "\n";
    }
    return 0;
}

}  // namespace

int main(int argc, char** argv) {
    try {
        return run(parse(argc, argv));
    } catch (const std::exception& e) {
        std::cerr << "error: " << e.what() << "\n";
        return 2;
    }
}
