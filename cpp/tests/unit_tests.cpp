// The C++ library's unit tests: what needs no Python reference (file formats, UTF-8, Unicode normalization, JSON,
// tensors, the engine registry, and, given an SD 1.x artifact, the engine calls a generation makes through a backend
// registered here). `sdrt-cpp-tests SCRATCH_DIR [ARTIFACT]` exits non-zero on a failure.

#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <functional>
#include <iostream>
#include <string>

#include "json.hpp"
#include "sdrt/sdrt.hpp"
#include "unicode.hpp"

namespace fs = std::filesystem;

namespace {

int failures = 0, checks = 0;

void check(bool ok, const std::string& what) {
  ++checks;
  if (!ok) {
    ++failures;
    std::cerr << "FAILED: " << what << "\n";
  }
}

// `f` throws sdrt::Error whose message holds `needle`
void check_error(const std::function<void()>& f, const std::string& needle, const std::string& what) {
  try {
    f();
    check(false, what + ": no error");
  } catch (const sdrt::Error& e) {
    check(std::string(e.what()).find(needle) != std::string::npos, what + ": message '" + e.what() + "' lacks '" + needle + "'");
  }
}

void json_tests() {
  using sdrt::json::parse;
  const auto v = parse(R"({"a": [1, 2.5, -3e2, true, null, "x\u00e9\ud83d\ude00\n"], "b": {}})", "test");
  check(v["a"].items().size() == 6, "json array length");
  check(v["a"].items()[0].is_integer() && v["a"].items()[0].as_int() == 1, "json integer");
  check(!v["a"].items()[1].is_integer() && v["a"].items()[1].as_number() == 2.5, "json float");
  check(v["a"].items()[2].as_number() == -300.0, "json exponent");
  check(v["a"].items()[5].as_string() == "x\xc3\xa9\xf0\x9f\x98\x80\n", "json escapes and surrogate pairs");
  check(v["b"].is_object() && v["missing"].is_null(), "json object and missing member");
  check_error([] { parse("{\"a\": 1,}", "x.json"); }, "x.json is not valid JSON", "json trailing comma");
  check_error([] { parse("[1] 2", "x.json"); }, "unexpected text", "json trailing text");
  check_error([] { parse("\"\\ud800\"", "x.json"); }, "unpaired surrogate", "json lone surrogate");
  check_error([] { parse(std::string(300, '[') + std::string(300, ']'), "x.json"); }, "nesting deeper", "json depth");
}

void unicode_tests() {
  using namespace sdrt::unicode;
  check(decode("a\xc3\xa9\xe4\xb8\xad\xf0\x9f\x98\x80", "t") == U"a\u00e9\u4e2d\U0001F600", "utf-8 decode");
  check_error([] { decode("ok\xff", "prompt"); }, "prompt is not valid UTF-8 (byte 2", "utf-8 invalid byte");
  check_error([] { decode("\xc0\xaf", "prompt"); }, "not valid UTF-8", "utf-8 overlong");
  check_error([] { decode("\xed\xa0\x80", "prompt"); }, "not valid UTF-8", "utf-8 surrogate");
  check_error([] { decode("\xe4\xb8", "prompt"); }, "not valid UTF-8", "utf-8 truncated");
  check(encode(decode("\xf0\x9f\x98\x80", "t")) == "\xf0\x9f\x98\x80", "utf-8 round trip");
  // NFC: composition, reordering of combining marks, Hangul, a composition exclusion, a blocked mark
  check(nfc(U"e\u0301") == U"\u00e9", "nfc composes e + acute");
  check(nfc(U"a\u0323\u0302") == U"\u1ead" && nfc(U"a\u0302\u0323") == U"\u1ead", "nfc orders marks, then composes");
  check(nfc(U"\u1100\u1161\u11a8") == U"\uac01", "nfc composes Hangul jamo");
  check(nfc(U"\u0958") == U"\u0915\u093c", "nfc keeps a composition exclusion decomposed");
  check(nfc(U"\u212b") == U"\u00c5", "nfc maps the angstrom sign to A-ring");
  check(lowercase(U"\u0130Ab\u03a3") == U"i\u0307ab\u03c3", "lowercase is per character, full mapping");
  check(is_letter(U'\u4e2d') && is_number(U'\u0663') && !is_letter(U'!') && is_space(U'\u3000'), "categories");
}

void tensor_tests() {
  const sdrt::Tensor a = sdrt::Tensor::from({2, 2}, {1, 2, 3, 4});
  const sdrt::Tensor b = sdrt::concat({a, a.rows(1, 2)});
  check(b.shape == std::vector<int64_t>{3, 2} && b.data == std::vector<float>{1, 2, 3, 4, 3, 4}, "concat rows");
  check(a.repeat_row(0, 3).data == std::vector<float>{1, 2, 1, 2, 1, 2}, "repeat a row");
  sdrt::ComponentSpec spec;
  spec.name = "unet";
  spec.inputs = {{"sample", "float32", sdrt::DType::Float32, {"cfg_batch", "4", "latent_height", "latent_width"}},
                 {"images", "float32", sdrt::DType::Float32, {"cfg_batch", "3", "8*latent_height", "8*latent_width"}}};
  const std::map<std::string, sdrt::DimRange> dims = {{"cfg_batch", {1, 2, 4}}, {"latent_height", {8, 16, 32}}, {"latent_width", {8, 16, 32}}};
  const auto values = sdrt::resolve_shapes(spec, dims, {{"sample", sdrt::Tensor::zeros({2, 4, 8, 10})}, {"images", sdrt::Tensor::zeros({2, 3, 64, 80})}});
  check(values.at("latent_width") == 10 && values.at("cfg_batch") == 2, "resolve_shapes symbol values");
  check_error([&] { sdrt::resolve_shapes(spec, dims, {{"sample", sdrt::Tensor::zeros({5, 4, 8, 8})}, {"images", sdrt::Tensor::zeros({5, 3, 64, 64})}}); },
              "cfg_batch 5 is outside the engine's profile 1..4", "resolve_shapes batch range");
  check_error([&] { sdrt::resolve_shapes(spec, dims, {{"sample", sdrt::Tensor::zeros({1, 4, 8, 8})}, {"images", sdrt::Tensor::zeros({1, 3, 64, 72})}}); },
              "gives latent_width=9, but another input gives 8", "resolve_shapes symbol agreement");
  check_error([&] { sdrt::resolve_shapes(spec, dims, {{"sample", sdrt::Tensor::zeros({1, 3, 8, 8})}, {"images", sdrt::Tensor::zeros({1, 3, 64, 64})}}); },
              "axis 1 must be 4, got 3", "resolve_shapes fixed axis");
  // "symbol/N": the latents' size over N, rounded up (a UNet's ControlNet residual inputs, format 5)
  const sdrt::Dim half = sdrt::parse_dim("latent_height/2"), scaled = sdrt::parse_dim("8*latent_width/4");
  check(half.factor == 1 && half.symbol == "latent_height" && half.divisor == 2, "parse_dim symbol/N");
  check(scaled.factor == 8 && scaled.symbol == "latent_width" && scaled.divisor == 4, "parse_dim N*symbol/N");
  check(sdrt::parse_dim("3").symbol.empty() && sdrt::parse_dim("3").factor == 3, "parse_dim a fixed size");
  const std::map<std::string, int64_t> odd = {{"latent_height", 9}, {"latent_width", 13}};
  check(half.size(odd) == 5 && scaled.size(odd) == 32 && sdrt::parse_dim("latent_height/8").size(odd) == 2,
        "symbol/N rounds up: 9/2 -> 5, 8*ceil(13/4) -> 32, 9/8 -> 2");
  check_error([] { sdrt::parse_dim("latent_height/0"); }, "dimension 'latent_height/0' has divisor 0", "parse_dim divisor 0");
  check_error([] { sdrt::parse_dim("latent_height/"); }, "is not an integer, a symbol, 'N*symbol', 'symbol/N'", "parse_dim no divisor");
  check_error([] { sdrt::parse_dim("latent_height/-2"); }, "'latent_height/-2' is not an integer", "parse_dim negative divisor");
  check_error([] { sdrt::parse_dim("0*latent_height"); }, "has factor 0", "parse_dim factor 0");
  sdrt::ComponentSpec residual = spec;
  residual.inputs.push_back({"down_block_residual_2", "float32", sdrt::DType::Float32, {"cfg_batch", "32", "latent_height/2", "latent_width/2"}});
  auto residual_feeds = [](int64_t h, int64_t w) {
    return sdrt::TensorMap{{"sample", sdrt::Tensor::zeros({2, 4, 9, 13})}, {"images", sdrt::Tensor::zeros({2, 3, 72, 104})},
                           {"down_block_residual_2", sdrt::Tensor::zeros({2, 32, h, w})}};
  };
  check(sdrt::resolve_shapes(residual, dims, residual_feeds(5, 7)).at("latent_height") == 9, "resolve_shapes checks a symbol/N axis");
  check_error([&] { sdrt::resolve_shapes(residual, dims, residual_feeds(4, 7)); },
              "down_block_residual_2 axis 2 must be 5 (1*ceil(latent_height/2)), got 4", "resolve_shapes a wrong symbol/N axis");
  check(sdrt::concrete_shape(residual.inputs.back(), {{"cfg_batch", 2}, {"latent_height", 9}, {"latent_width", 13}}) ==
            std::vector<int64_t>{2, 32, 5, 7},
        "concrete_shape of a symbol/N axis");
  check_error([] { sdrt::make_engine("tensorrt", {}); }, "unknown backend 'tensorrt'; known: openvino", "backend registry");
}

void file_tests(const fs::path& dir) {
  sdrt::Image image;
  image.width = 5;
  image.height = 3;
  for (int i = 0; i < 5 * 3 * 3; ++i) image.rgb.push_back(static_cast<uint8_t>(i * 17));
  const fs::path png = dir / "t.png";
  sdrt::write_png(png, image, "a prompt\nSteps: 2");
  const sdrt::Image back = sdrt::read_png(png);
  check(back.width == 5 && back.height == 3 && back.rgb == image.rgb, "png round trip");
  bool leftovers = false;
  for (const auto& entry : fs::directory_iterator(dir)) leftovers |= entry.path().filename().string().find(".partial-") != std::string::npos;
  check(!leftovers, "png written to a temporary and renamed into place");
  {
    std::ofstream bad(dir / "bad.png", std::ios::binary);
    bad << "not a png";
  }
  check_error([&] { sdrt::read_png(dir / "bad.png"); }, "is not a PNG file", "png signature");
  check_error([&] { sdrt::read_png(dir / "missing.png"); }, "does not exist", "png missing");
  const sdrt::Tensor t = sdrt::Tensor::from({1, 2, 3}, {0.5f, -1, 2, 3, 4, 1e-8f});
  sdrt::write_npy(dir / "t.npy", t);
  const sdrt::Tensor u = sdrt::read_npy(dir / "t.npy");
  check(u.shape == t.shape && u.data == t.data, "npy round trip");
}

int nonzero_residuals = 0, residual_feeds = 0;  // what the recording backend saw in the UNet's residual inputs

// A backend is one class and one registration: this one records each call and answers zeros of the right shapes.
class RecordingEngine : public sdrt::Engine {
 public:
  RecordingEngine(const sdrt::EngineContext& ctx, std::vector<std::string>* calls)
      : spec_(*ctx.spec), dims_(ctx.manifest->dims), calls_(calls) {}

  sdrt::TensorMap run(const sdrt::TensorMap& feeds) override {
    const auto values = sdrt::resolve_shapes(spec_, dims_, feeds);  // what the pipeline sends fits the spec
    for (const auto& name : spec_.names("residuals")) {  // no ControlNet: every residual the UNet adds is zero
      for (float v : feeds.at(name).data) nonzero_residuals += v != 0.0f;
      ++residual_feeds;
    }
    calls_->push_back(spec_.name + " " + feeds.at(spec_.inputs.at(0).name).shape_text());
    sdrt::TensorMap out;
    for (const auto& output : spec_.outputs) out[output.name] = sdrt::Tensor::zeros(sdrt::concrete_shape(output, values));
    return out;
  }

 private:
  sdrt::ComponentSpec spec_;
  std::map<std::string, sdrt::DimRange> dims_;
  std::vector<std::string>* calls_;
};

// The pipeline on an SD 1.x artifact through a backend registered here: which engine calls it makes, in which order.
void backend_tests(const fs::path& artifact) {
  static std::vector<std::string> calls;
  sdrt::register_backend("recording", [](const sdrt::EngineContext& ctx) { return std::make_unique<RecordingEngine>(ctx, &calls); });
  auto pipe = sdrt::Pipeline::load(artifact, "recording");
  sdrt::Request request;
  request.prompt = "a cat";
  request.negative_prompt = "blurry";
  request.steps = 3;
  request.seed = 1;
  request.sampler = "euler";
  request.width = 64;
  request.height = 72;
  request.batch = 3;
  calls.clear();
  const sdrt::Result result = pipe->generate(request);
  // one text-encoder call for the two distinct rows (negative, prompt); per step one batched-CFG UNet call of 6 rows,
  // split into the engine's profile (cfg_batch up to 4 on this artifact); the decoder in chunks of its batch (2)
  const std::vector<std::string> expected = {
      "text_encoder [2, 77, 32]",
      "unet [4, 4, 9, 8]", "unet [2, 4, 9, 8]",
      "unet [4, 4, 9, 8]", "unet [2, 4, 9, 8]",
      "unet [4, 4, 9, 8]", "unet [2, 4, 9, 8]",
      "vae_decoder [2, 4, 9, 8]", "vae_decoder [1, 4, 9, 8]",
  };
  check(calls == expected, "engine calls: got " + [&] {
    std::string s;
    for (const auto& c : calls) s += c + "; ";
    return s;
  }());
  bool grey = result.images.size() == 3;
  for (const auto& image : result.images) {
    grey = grey && image.width == 64 && image.height == 72;
    for (uint8_t v : image.rgb) grey = grey && v == 128;  // zeros decode to 0.5: round(127.5) is 128, half to even
  }
  check(grey, "zero decoder output gives grey images of the requested size");
  const size_t residuals = pipe->manifest().component("unet").names("residuals").size();
  check(residuals > 0 && residual_feeds == static_cast<int>(6 * residuals) && nonzero_residuals == 0,
        "every UNet call is fed its ControlNet residual inputs, all zeros");
  check(result.seeds == std::vector<uint64_t>{1, 2, 3}, "seeds of a batch");
  check_error([&] { sdrt::Pipeline::load(artifact, "nonesuch"); }, "unknown backend 'nonesuch'; known: openvino, recording",
              "an unknown backend is named with the known ones");
}

}  // namespace

int main(int argc, char** argv) {
  const fs::path dir = argc > 1 ? fs::path(argv[1]) : fs::temp_directory_path() / "sdrt-cpp-tests";
  fs::create_directories(dir);
  json_tests();
  unicode_tests();
  tensor_tests();
  file_tests(dir);
  if (argc > 2) backend_tests(argv[2]);  // an SD 1.x artifact (the Python tests pass the demo's)
  std::cout << checks - failures << "/" << checks << " checks passed\n";
  return failures ? 1 : 0;
}
