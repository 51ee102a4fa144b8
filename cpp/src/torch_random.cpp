// torch's CPU generator, reproduced: mt19937 seeded as torch seeds it, uniforms as torch makes them, and
// torch.randn's two normal paths (the 16-wide Box-Muller fill, and the scalar one for tensors under 16 elements).
//
// This file is compiled with -ffp-contract=off: every fused multiply-add below is written out as std::fma,
// exactly where torch's compiled AVX2 kernel fuses (read from its disassembly), and nothing else is fused.

#include <cmath>
#include <cstdlib>
#include <cstring>
#include <string>

#include "sdrt/sdrt.hpp"

namespace sdrt {

namespace {

uint32_t bits_of(float f) {
  uint32_t u;
  std::memcpy(&u, &f, sizeof u);
  return u;
}

float float_of(uint32_t u) {
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
}

// Cephes' logf as torch's avx_mathfun.h evaluates it (log256_ps), one lane at a time. x > 0.
float cephes_log(float x) {
  const bool invalid = !(x > 0.0f);
  x = std::max(x, float_of(0x00800000u));  // no denormals
  const int32_t exponent = static_cast<int32_t>(bits_of(x) >> 23) - 0x7f;
  x = float_of((bits_of(x) & ~0x7f800000u) | bits_of(0.5f));  // the mantissa, in [0.5, 1)
  float e = static_cast<float>(exponent) + 1.0f;
  const bool below = x < 0.707106781186547524f;
  const float tmp = below ? x : 0.0f;
  x = x - 1.0f;
  e = e - (below ? 1.0f : 0.0f);
  x = x + tmp;
  const float z = x * x;
  static const float kP[] = {-1.1514610310E-1f, 1.1676998740E-1f,  -1.2420140846E-1f,
                             1.4249322787E-1f,  -1.6668057665E-1f, 2.0000714765E-1f,
                             -2.4999993993E-1f, 3.3333331174E-1f};
  float y = 7.0376836292E-2f;
  for (float p : kP) y = std::fma(y, x, p);
  const float eq1 = e * -2.12194440e-4f;
  y = std::fma(y * x, z, eq1);
  y = std::fma(-z, 0.5f, y);
  x = x + y;
  x = std::fma(e, 0.693359375f, x);
  return invalid ? std::nanf("") : x;
}

// Cephes' sinf and cosf together, as torch's sincos256_ps evaluates them, one lane at a time.
void cephes_sincos(float x, float* sine, float* cosine) {
  uint32_t sign_sin = bits_of(x) & 0x80000000u;
  x = float_of(bits_of(x) & 0x7fffffffu);
  int32_t j = static_cast<int32_t>(x * 1.27323954473516f);  // truncation, as cvttps2dq
  j = (j + 1) & ~1;
  const float y = static_cast<float>(j);
  sign_sin ^= static_cast<uint32_t>(j & 4) << 29;
  const uint32_t sign_cos = static_cast<uint32_t>(~(j - 2) & 4) << 29;
  const bool sine_poly = (j & 2) == 0;
  x = std::fma(y, -0.78515625f, x);  // extended-precision reduction by pi/4
  x = std::fma(y, -2.4187564849853515625e-4f, x);
  x = std::fma(y, -3.77489497744594108e-8f, x);
  const float z = x * x;
  float c = 2.443315711809948E-005f;
  c = std::fma(c, z, -1.388731625493765E-003f);
  c = std::fma(c, z, 4.166664568298827E-002f);
  c = std::fma(z, z * c, -(z * 0.5f));
  c = c + 1.0f;
  float s = -1.9515295891E-4f;
  s = std::fma(s, z, 8.3321608736E-3f);
  s = std::fma(s, z, -1.6666654611E-1f);
  s = std::fma(x, z * s, x);
  *sine = float_of(bits_of(sine_poly ? s : c) ^ sign_sin);
  *cosine = float_of(bits_of(sine_poly ? c : s) ^ sign_cos);
}

// Box-Muller over the pairs (j, j + 8) of 16 uniforms in [0, 1), in place (mean 0, std 1).
void box_muller_16(float* data, TorchGenerator::Kernel kernel) {
  const float two_pi = static_cast<float>(2.0f * 3.14159265358979323846);
  for (int j = 0; j < 8; ++j) {
    const float u1 = 1.0f - data[j];  // (0, 1] for the log
    const float u2 = data[j + 8];
    if (kernel == TorchGenerator::Kernel::Avx2) {
      const float radius = std::sqrt(-2.0f * cephes_log(u1));
      float s, c;
      cephes_sincos(two_pi * u2, &s, &c);
      data[j] = radius * c;
      data[j + 8] = radius * s;
    } else {
      const float radius = std::sqrt(-2.0f * std::log(u1));
      const float theta = static_cast<float>(2.0f * 3.14159265358979323846 * static_cast<double>(u2));
      data[j] = radius * std::cos(theta);
      data[j + 8] = radius * std::sin(theta);
    }
  }
}

}  // namespace

TorchGenerator::Kernel TorchGenerator::native_kernel() {
  // torch dispatches its AVX2 kernels on CPUs with AVX2 and FMA (and on AVX-512 ones: normal has no AVX-512
  // kernel); ATEN_CPU_CAPABILITY=default forces the portable kernels, as it does for torch.
  const char* forced = std::getenv("ATEN_CPU_CAPABILITY");
  if (forced != nullptr && std::string(forced) == "default") return Kernel::Default;
#if defined(__x86_64__) || defined(__i386__)
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return Kernel::Avx2;
#endif
  return Kernel::Default;
}

TorchGenerator::TorchGenerator(uint64_t seed, Kernel kernel)
    // torch's mt19937 takes the seed's low 32 bits and initializes its state as std::mt19937 does
    : engine_(static_cast<uint32_t>(seed & 0xffffffffu)), kernel_(kernel) {}

uint32_t TorchGenerator::random() { return static_cast<uint32_t>(engine_()); }

uint64_t TorchGenerator::random64() {
  const uint64_t hi = random();
  const uint64_t lo = random();
  return (hi << 32) | lo;
}

float TorchGenerator::uniform_float() {
  // 24 random bits scaled to [0, 1): uniform_real_distribution<float>
  return static_cast<float>(random() & ((1u << 24) - 1)) * (1.0f / static_cast<float>(1u << 24));
}

double TorchGenerator::uniform_double() {
  return static_cast<double>(random64() & ((uint64_t{1} << 53) - 1)) * (1.0 / static_cast<double>(uint64_t{1} << 53));
}

double TorchGenerator::normal_double() {
  // at::normal_distribution<double>: Box-Muller, the second value cached in the generator
  if (next_normal_) {
    const double cached = *next_normal_;
    next_normal_.reset();
    return cached;
  }
  const double u1 = uniform_double();
  const double u2 = uniform_double();
  const double r = std::sqrt(-2.0 * std::log1p(-u2));
  const double theta = 2.0 * 3.14159265358979323846 * u1;
  next_normal_ = r * std::sin(theta);
  return r * std::cos(theta);
}

std::vector<float> TorchGenerator::randn(size_t count) {
  std::vector<float> data(count);
  if (count < 16) {  // torch's scalar path: one double normal per element
    for (auto& v : data) v = static_cast<float>(normal_double());
    return data;
  }
  for (auto& v : data) v = uniform_float();
  for (size_t i = 0; i + 16 <= count; i += 16) box_muller_16(&data[i], kernel_);
  if (count % 16 != 0) {  // the last 16 values are drawn again and recomputed
    float* tail = data.data() + count - 16;
    for (int i = 0; i < 16; ++i) tail[i] = uniform_float();
    box_muller_16(tail, kernel_);
  }
  return data;
}

}  // namespace sdrt
