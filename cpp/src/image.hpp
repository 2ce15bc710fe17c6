// Image input for edgevit models: the same steps as edgevit/images.py, so that C++ and Python feed a
// model bit-identical pixels (centre crop to the target aspect ratio, bilinear resize with half-pixel
// centres in double precision, rounding half up, then (x / 255 - mean) / std in float).
#pragma once

#include <array>
#include <cstdint>
#include <string>
#include <vector>

namespace edgevit {

struct Image {
    int height = 0;
    int width = 0;
    std::vector<uint8_t> rgb;  // height * width * 3, row-major, interleaved RGB
};

// Binary PPM (P6) or PGM (P5, expanded to RGB), maxval <= 255. Throws std::runtime_error.
Image read_pnm(const std::string& path);

// The largest centred box with the aspect ratio of (target_h, target_w): {top, left, h, w}.
std::array<int, 4> crop_box(int height, int width, int target_h, int target_w);

// Bilinear resize (half-pixel centres, as OpenCV INTER_LINEAR without antialiasing).
Image resize_bilinear(const Image& src, int height, int width);

// Centre crop to the target aspect ratio, then resize to (height, width).
Image fit_to(const Image& src, int height, int width);

// HWC uint8 -> CHW float32 (x / 255 - mean) / std.
std::vector<float> to_chw_normalised(const Image& img, const std::array<float, 3>& mean,
                                     const std::array<float, 3>& std);

}  // namespace edgevit
