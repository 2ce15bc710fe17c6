#include "image.hpp"

#include <algorithm>
#include <cctype>
#include <cmath>
#include <fstream>
#include <iterator>
#include <stdexcept>

namespace edgevit {

namespace {

// Next header token of a PNM file; '#' starts a comment that runs to the end of the line.
std::string next_token(const std::vector<char>& data, size_t& pos) {
    for (;;) {
        while (pos < data.size() && std::isspace(static_cast<unsigned char>(data[pos]))) ++pos;
        if (pos < data.size() && data[pos] == '#') {
            while (pos < data.size() && data[pos] != '\n') ++pos;
            continue;
        }
        break;
    }
    size_t start = pos;
    while (pos < data.size() && !std::isspace(static_cast<unsigned char>(data[pos]))) ++pos;
    if (start == pos) throw std::runtime_error("truncated PNM header");
    return std::string(data.begin() + static_cast<long>(start), data.begin() + static_cast<long>(pos));
}

struct Taps {
    std::vector<int> lo, hi;
    std::vector<double> frac;
};

// Source sampling positions for each destination index, exactly as edgevit.images._taps.
Taps taps(int src, int dst) {
    Taps t;
    const double scale = static_cast<double>(src) / static_cast<double>(dst);
    for (int i = 0; i < dst; ++i) {
        double pos = (static_cast<double>(i) + 0.5) * scale - 0.5;
        pos = std::min(std::max(pos, 0.0), static_cast<double>(src - 1));
        const double lo = std::floor(pos);
        t.lo.push_back(static_cast<int>(lo));
        t.hi.push_back(std::min(static_cast<int>(lo) + 1, src - 1));
        t.frac.push_back(pos - lo);
    }
    return t;
}

}  // namespace

Image read_pnm(const std::string& path) {
    std::ifstream f(path, std::ios::binary);
    if (!f) throw std::runtime_error("cannot open " + path);
    std::vector<char> data((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
    if (data.size() < 2 || data[0] != 'P' || (data[1] != '6' && data[1] != '5'))
        throw std::runtime_error(path + " is not a binary PPM (P6) or PGM (P5) image");
    const int channels = data[1] == '6' ? 3 : 1;
    size_t pos = 2;
    const int width = std::stoi(next_token(data, pos));
    const int height = std::stoi(next_token(data, pos));
    const int maxval = std::stoi(next_token(data, pos));
    if (width <= 0 || height <= 0 || maxval <= 0 || maxval > 255)
        throw std::runtime_error(path + ": unsupported PNM size or maxval (8-bit only)");
    ++pos;  // the single whitespace after maxval
    const size_t count = static_cast<size_t>(width) * height * channels;
    if (data.size() < pos + count) throw std::runtime_error(path + ": truncated pixel data");
    Image img{height, width, std::vector<uint8_t>(static_cast<size_t>(width) * height * 3)};
    for (size_t p = 0; p < static_cast<size_t>(width) * height; ++p) {
        for (int c = 0; c < 3; ++c) {
            double v = static_cast<uint8_t>(data[pos + p * channels + (channels == 3 ? c : 0)]);
            if (maxval != 255) v = std::floor(v * 255.0 / maxval + 0.5);
            img.rgb[p * 3 + c] = static_cast<uint8_t>(v);
        }
    }
    return img;
}

std::array<int, 4> crop_box(int height, int width, int target_h, int target_w) {
    int h, w;
    if (static_cast<long>(width) * target_h > static_cast<long>(height) * target_w) {  // too wide
        h = height;
        w = std::max(1, static_cast<int>((static_cast<long>(height) * target_w) / target_h));
    } else {
        h = std::max(1, static_cast<int>((static_cast<long>(width) * target_h) / target_w));
        w = width;
    }
    return {(height - h) / 2, (width - w) / 2, h, w};
}

Image resize_bilinear(const Image& src, int height, int width) {
    const Taps ty = taps(src.height, height), tx = taps(src.width, width);
    Image out{height, width, std::vector<uint8_t>(static_cast<size_t>(width) * height * 3)};
    auto px = [&](int y, int x, int c) {
        return static_cast<double>(src.rgb[(static_cast<size_t>(y) * src.width + x) * 3 + c]);
    };
    for (int y = 0; y < height; ++y) {
        const double fy = ty.frac[y];
        for (int x = 0; x < width; ++x) {
            const double fx = tx.frac[x];
            for (int c = 0; c < 3; ++c) {
                // same operation order as numpy: (1-f)*a + f*b per axis, x first
                const double top = (1.0 - fx) * px(ty.lo[y], tx.lo[x], c) + fx * px(ty.lo[y], tx.hi[x], c);
                const double bottom = (1.0 - fx) * px(ty.hi[y], tx.lo[x], c) + fx * px(ty.hi[y], tx.hi[x], c);
                const double v = std::floor((1.0 - fy) * top + fy * bottom + 0.5);
                out.rgb[(static_cast<size_t>(y) * width + x) * 3 + c] =
                    static_cast<uint8_t>(std::min(255.0, std::max(0.0, v)));
            }
        }
    }
    return out;
}

Image fit_to(const Image& src, int height, int width) {
    const auto [top, left, h, w] = crop_box(src.height, src.width, height, width);
    Image cropped{h, w, std::vector<uint8_t>(static_cast<size_t>(w) * h * 3)};
    for (int y = 0; y < h; ++y) {
        const auto* row = &src.rgb[(static_cast<size_t>(top + y) * src.width + left) * 3];
        std::copy(row, row + static_cast<size_t>(w) * 3, &cropped.rgb[static_cast<size_t>(y) * w * 3]);
    }
    if (h == height && w == width) return cropped;
    return resize_bilinear(cropped, height, width);
}

std::vector<float> to_chw_normalised(const Image& img, const std::array<float, 3>& mean,
                                     const std::array<float, 3>& std) {
    const size_t plane = static_cast<size_t>(img.height) * img.width;
    std::vector<float> out(plane * 3);
    for (size_t p = 0; p < plane; ++p) {
        for (int c = 0; c < 3; ++c) {
            const float x = static_cast<float>(img.rgb[p * 3 + c]) / 255.0f;
            out[c * plane + p] = (x - mean[c]) / std[c];
        }
    }
    return out;
}

}  // namespace edgevit
