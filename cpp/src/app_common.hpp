// What the edgevit C++ apps share, whatever runtime they drive: command-line parsing, image or raw-tensor
// input, timing, and the key=value report (one per line, easy to parse from scripts and tests).
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <iosfwd>
#include <optional>
#include <string>
#include <vector>

namespace edgevit {

struct AppArgs {
    std::string model, input, logits_out;
    int threads = 0, runs = 10, warmup = 1;
    std::optional<std::array<float, 3>> mean, std;
};

// A runtime-specific flag: return true if `flag` is yours, reading its argument with `value()`.
using ExtraFlag = std::function<bool(const std::string& flag, const std::function<std::string()>& value)>;

// Parses MODEL INPUT and the shared flags (--threads --runs --warmup --logits-out --mean --std);
// `usage_line` is shown with every argument error (thrown as std::invalid_argument).
AppArgs parse_args(int argc, char** argv, const std::string& usage_line, const ExtraFlag& extra = nullptr);

std::vector<float> parse_floats(std::string text);  // "[0.485, 0.456, 0.406]" or "0.485,0.456,0.406"
std::array<float, 3> three(const std::string& text, const std::string& what);
std::vector<char> read_file(const std::string& path);
bool is_image(const std::string& path);  // .ppm/.pgm/.pnm: decoded and preprocessed; else raw bytes
std::string shape_str(const std::vector<int64_t>& shape);

// Image -> centre crop + resize to (height, width) -> CHW float (x/255 - mean)/std, as edgevit.images.
std::vector<float> image_chw(const std::string& path, int height, int width, const std::array<float, 3>& mean,
                             const std::array<float, 3>& stdev);

// Fill `dst` (`bytes` long, `batch` equal slots) from INPUT: an image replicated into every slot, or a
// raw file of exactly `bytes` bytes. Returns the preprocess label ("app" or "none").
std::string fill_float_input(const AppArgs& args, void* dst, size_t bytes, int64_t batch, int height, int width,
                             const std::array<float, 3>& mean, const std::array<float, 3>& stdev,
                             const std::string& shape_label);

// `warmup` untimed calls, then `runs` timed ones (milliseconds each).
std::vector<double> time_runs(const std::function<void()>& infer, int warmup, int runs);

// top5= (for a [batch, classes] float output: the first image), runs=, latency_ms_*=, and the raw output
// bytes written to --logits-out.
void report_results(std::ostream& out, const AppArgs& args, const float* logits, const std::vector<int64_t>& shape,
                    const void* raw, size_t raw_bytes, const std::vector<double>& ms);

// The manifest written beside an ExecuTorch program (model.pte.json): the value of metadata key
// "edgevit.<key>" (a JSON-encoded string), unescaped; nullopt when absent.
std::optional<std::string> manifest_value(const std::string& manifest_text, const std::string& key);
std::string unquote(std::string s);

// Runs `body`; exceptions become "error: ..." on stderr and exit status 2.
int guarded_main(const std::function<int()>& body);

}  // namespace edgevit
