#include "app_common.hpp"

#include <algorithm>
#include <chrono>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <iterator>
#include <numeric>
#include <sstream>
#include <stdexcept>

#include "image.hpp"

namespace fs = std::filesystem;

namespace edgevit {

namespace {
[[noreturn]] void usage(const std::string& why, const std::string& usage_line) {
    throw std::invalid_argument(why + "\nusage: " + usage_line);
}
}  // namespace

AppArgs parse_args(int argc, char** argv, const std::string& usage_line, const ExtraFlag& extra) {
    AppArgs a;
    std::vector<std::string> positional;
    for (int i = 1; i < argc; ++i) {
        std::string k = argv[i];
        auto value = [&]() -> std::string {
            if (i + 1 >= argc) usage(k + " needs a value", usage_line);
            return argv[++i];
        };
        if (k == "--threads") a.threads = std::stoi(value());
        else if (k == "--runs") a.runs = std::max(1, std::stoi(value()));
        else if (k == "--warmup") a.warmup = std::max(0, std::stoi(value()));
        else if (k == "--logits-out") a.logits_out = value();
        else if (k == "--mean") a.mean = three(value(), "--mean");
        else if (k == "--std") a.std = three(value(), "--std");
        else if (k == "-h" || k == "--help") usage("", usage_line);
        else if (extra && extra(k, value)) continue;
        else if (!k.empty() && k[0] == '-') usage("unknown option " + k, usage_line);
        else positional.push_back(k);
    }
    if (positional.size() != 2) usage("expected MODEL and INPUT", usage_line);
    a.model = positional[0];
    a.input = positional[1];
    return a;
}

std::vector<float> parse_floats(std::string text) {
    for (char& c : text)
        if (c == '[' || c == ']' || c == ',') c = ' ';
    std::istringstream in(text);
    return {std::istream_iterator<float>(in), std::istream_iterator<float>()};
}

std::array<float, 3> three(const std::string& text, const std::string& what) {
    auto v = parse_floats(text);
    if (v.size() != 3) throw std::invalid_argument(what + " needs three comma-separated values");
    return {v[0], v[1], v[2]};
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

std::string shape_str(const std::vector<int64_t>& shape) {
    std::string out;
    for (size_t i = 0; i < shape.size(); ++i) out += (i ? "x" : "") + std::to_string(shape[i]);
    return out;
}

std::vector<float> image_chw(const std::string& path, int height, int width, const std::array<float, 3>& mean,
                             const std::array<float, 3>& stdev) {
    return to_chw_normalised(fit_to(read_pnm(path), height, width), mean, stdev);
}

std::string fill_float_input(const AppArgs& args, void* dst, size_t bytes, int64_t batch, int height, int width,
                             const std::array<float, 3>& mean, const std::array<float, 3>& stdev,
                             const std::string& shape_label) {
    if (is_image(args.input)) {
        const std::vector<float> chw = image_chw(args.input, height, width, mean, stdev);
        const size_t per_image = bytes / static_cast<size_t>(batch);
        if (chw.size() * sizeof(float) != per_image)
            throw std::runtime_error("the model input " + shape_label + " is not a batch of 3-channel float images");
        for (int64_t b = 0; b < batch; ++b)  // a static batch gets the same image in every slot
            std::memcpy(static_cast<char*>(dst) + b * per_image, chw.data(), per_image);
        return "app";
    }
    const std::vector<char> raw = read_file(args.input);
    if (raw.size() != bytes)
        throw std::runtime_error(args.input + " has " + std::to_string(raw.size()) + " bytes; the input " +
                                 shape_label + " takes " + std::to_string(bytes));
    std::memcpy(dst, raw.data(), raw.size());
    return "none";
}

std::vector<double> time_runs(const std::function<void()>& infer, int warmup, int runs) {
    for (int i = 0; i < warmup; ++i) infer();
    std::vector<double> ms;
    for (int i = 0; i < runs; ++i) {
        const auto t0 = std::chrono::steady_clock::now();
        infer();
        ms.push_back(std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count());
    }
    return ms;
}

void report_results(std::ostream& out, const AppArgs& args, const float* logits, const std::vector<int64_t>& shape,
                    const void* raw, size_t raw_bytes, const std::vector<double>& ms) {
    if (logits != nullptr && shape.size() == 2) {
        const size_t classes = static_cast<size_t>(shape[1]);  // first image of the batch
        std::vector<size_t> idx(classes);
        std::iota(idx.begin(), idx.end(), 0);
        const size_t k = std::min<size_t>(5, classes);
        std::partial_sort(idx.begin(), idx.begin() + static_cast<long>(k), idx.end(),
                          [&](size_t a, size_t b) { return logits[a] > logits[b] || (logits[a] == logits[b] && a < b); });
        out << "top5=";
        for (size_t i = 0; i < k; ++i) out << (i ? "," : "") << idx[i] << ":" << logits[idx[i]];
        out << "\n";
    }
    std::vector<double> sorted = ms;
    std::sort(sorted.begin(), sorted.end());
    out << "runs=" << args.runs << "\n"
        << "latency_ms_median=" << sorted[sorted.size() / 2] << "\n"
        << "latency_ms_min=" << sorted.front() << "\n"
        << "latency_ms_mean=" << std::accumulate(ms.begin(), ms.end(), 0.0) / ms.size() << "\n";
    if (!args.logits_out.empty()) {
        std::ofstream f(args.logits_out, std::ios::binary);
        f.write(static_cast<const char*>(raw), static_cast<std::streamsize>(raw_bytes));
        if (!f) throw std::runtime_error("cannot write " + args.logits_out);
        out << "logits_out=" << args.logits_out << "\n";
    }
}

std::optional<std::string> manifest_value(const std::string& text, const std::string& key) {
    const std::string needle = "\"edgevit." + key + "\": \"";
    size_t pos = text.find(needle);
    if (pos == std::string::npos) return std::nullopt;
    std::string value;
    for (pos += needle.size(); pos < text.size() && text[pos] != '"'; ++pos) {
        if (text[pos] == '\\' && pos + 1 < text.size()) ++pos;  // \" and \\ inside the JSON string
        value += text[pos];
    }
    return value;
}

std::string unquote(std::string s) {
    if (s.size() >= 2 && s.front() == '"' && s.back() == '"') return s.substr(1, s.size() - 2);
    return s;
}

int guarded_main(const std::function<int()>& body) {
    try {
        return body();
    } catch (const std::exception& e) {
        std::cerr << "error: " << e.what() << "\n";
        return 2;
    }
}

}  // namespace edgevit
