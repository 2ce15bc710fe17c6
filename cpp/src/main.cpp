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

#include <cstring>
#include <filesystem>
#include <iostream>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

#include "app_common.hpp"
#include "image.hpp"

namespace fs = std::filesystem;

namespace {

const char* const kUsage =
    "edgevit_infer MODEL INPUT [--device CPU] [--precision f32|bf16|f16] [--threads N] [--runs N] [--warmup N] "
    "[--logits-out FILE] [--mean R,G,B --std R,G,B]";

// edgevit metadata: the "edgevit" rt_info section of an exported IR, or the ONNX metadata_props that
// the ONNX frontend exposes under "framework" with their "edgevit." prefix.
std::optional<std::string> metadata(const std::shared_ptr<ov::Model>& model, const std::string& key) {
    if (model->has_rt_info("edgevit", key)) return model->get_rt_info<std::string>("edgevit", key);
    if (model->has_rt_info("framework", "edgevit." + key))
        return model->get_rt_info<std::string>("framework", "edgevit." + key);
    return std::nullopt;
}

std::vector<int64_t> dims(const ov::Shape& s) { return {s.begin(), s.end()}; }

int run(int argc, char** argv) {
    std::string device = "CPU", precision = "f32";
    const edgevit::AppArgs args = edgevit::parse_args(argc, argv, kUsage, [&](const std::string& k, const auto& value) {
        if (k == "--device") device = value();
        else if (k == "--precision") precision = value();
        else return false;
        return true;
    });
    std::string model_path = args.model;
    if (fs::is_directory(model_path)) model_path = (fs::path(model_path) / "model.xml").string();
    ov::Core core;
    std::shared_ptr<ov::Model> model = core.read_model(model_path);
    if (model->inputs().size() != 1) throw std::runtime_error("edgevit_infer handles single-input models");

    const bool u8_input = model->input().get_element_type() == ov::element::u8;  // --embed-preprocess
    std::vector<float> size = edgevit::parse_floats(metadata(model, "input_size").value_or(""));
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

    ov::AnyMap config{ov::hint::inference_precision(ov::element::Type(precision))};
    if (args.threads > 0) config.emplace(ov::inference_num_threads(args.threads));
    ov::CompiledModel compiled = core.compile_model(model, device, config);
    ov::InferRequest request = compiled.create_infer_request();

    ov::Tensor input(model->input().get_element_type(), in_shape);
    const std::string shape_label = edgevit::shape_str(dims(in_shape)) + " " + input.get_element_type().get_type_name();
    std::string preprocess;
    if (u8_input && edgevit::is_image(args.input)) {
        const edgevit::Image img = edgevit::fit_to(edgevit::read_pnm(args.input), height, width);
        const size_t per_image = input.get_byte_size() / static_cast<size_t>(batch);
        for (int64_t b = 0; b < batch; ++b)
            std::memcpy(static_cast<char*>(input.data()) + b * per_image, img.rgb.data(), per_image);
        preprocess = "embedded";
    } else {
        const auto mean = args.mean.value_or(edgevit::three(metadata(model, "mean").value_or("0.485,0.456,0.406"), "mean"));
        const auto stdev = args.std.value_or(edgevit::three(metadata(model, "std").value_or("0.229,0.224,0.225"), "std"));
        preprocess = edgevit::fill_float_input(args, input.data(), input.get_byte_size(), batch, height, width, mean,
                                               stdev, shape_label);
    }
    request.set_input_tensor(input);
    const std::vector<double> ms = edgevit::time_runs([&] { request.infer(); }, args.warmup, args.runs);

    const ov::Tensor out = request.get_output_tensor(0);
    std::cout << "model=" << model_path << "\n";
    if (auto name = metadata(model, "model")) std::cout << "edgevit_model=" << edgevit::unquote(*name) << "\n";
    std::cout << "device=" << device << "\n"
              << "inference_precision=" << compiled.get_property(ov::hint::inference_precision).get_type_name() << "\n"
              << "input=" << model->input().get_any_name() << "\n"
              << "input_shape=" << edgevit::shape_str(dims(in_shape)) << "\n"
              << "input_type=" << input.get_element_type().get_type_name() << "\n"
              << "preprocess=" << preprocess << "\n"
              << "output=" << compiled.output(0).get_any_name() << "\n"
              << "output_shape=" << edgevit::shape_str(dims(out.get_shape())) << "\n";
    const float* logits = out.get_element_type() == ov::element::f32 ? out.data<const float>() : nullptr;
    edgevit::report_results(std::cout, args, logits, dims(out.get_shape()), out.data(), out.get_byte_size(), ms);
    return 0;
}

}  // namespace

int main(int argc, char** argv) {
    return edgevit::guarded_main([&] { return run(argc, argv); });
}
