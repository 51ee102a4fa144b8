// sdrt C++ runtime: reads an sdrt artifact (manifest.json, ONNX graphs, token tables, tokenizer and scheduler
// files) and generates images as `sdrt generate` does, seed for seed.
//
// The one public header. Everything a C++ service needs to run an artifact is here: the manifest reader, the
// CLIP tokenizer, the web UI's emphasis syntax, torch's CPU random generator, the samplers, the engine interface
// (with its OpenVINO implementation) and the pipeline that ties them together.
#pragma once

#include <cstdint>
#include <filesystem>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <random>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

namespace sdrt {

// The library's version: the sdrt release whose artifact contract it reads (written into every infotext).
const char* version();

// A bad input, artifact or request. The message is one line naming the field, the value and what is allowed;
// `sdrt-cpp` prints it and exits with code 2.
class Error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// ------------------------------------------------------------------------------------------------ tensors

enum class DType { Float32, Int32 };

const char* dtype_name(DType dtype);

// A dense row-major host tensor: float32 elements in `data`, or int32 elements in `ints`.
struct Tensor {
  std::vector<int64_t> shape;
  DType dtype = DType::Float32;
  std::vector<float> data;     // float32 elements (dtype Float32)
  std::vector<int32_t> ints;   // int32 elements (dtype Int32)

  static Tensor zeros(std::vector<int64_t> shape);
  static Tensor from(std::vector<int64_t> shape, std::vector<float> values);
  static Tensor int32(std::vector<int64_t> shape, std::vector<int32_t> values);

  int64_t numel() const;
  // Rows [begin, end) of axis 0.
  Tensor rows(int64_t begin, int64_t end) const;
  // Row `index` of axis 0 repeated `count` times.
  Tensor repeat_row(int64_t index, int64_t count) const;
  std::string shape_text() const;  // "[2, 4, 8, 8]"
};

// `parts` joined along axis 0 (equal trailing shapes and dtypes).
Tensor concat(const std::vector<Tensor>& parts);

using TensorMap = std::map<std::string, Tensor>;

// ------------------------------------------------------------------------------------------------ manifest

// manifest.json format version this library reads (sdrt.manifest.FORMAT_VERSION).
constexpr int kFormatVersion = 5;

// One axis of a tensor spec (sdrt.spec.Dim): `factor`, or factor * ceil(symbol / divisor) for a symbolic one.
// "8*latent_height" is an image 8 times the latents' height; "latent_height/4" a feature map after two stride-2
// downsamplings of the latents, rounded up (65 -> 33 -> 17), as a UNet's ControlNet residual inputs are.
struct Dim {
  int64_t factor = 1;   // the whole size of a fixed axis, or what the symbol's (divided) value is multiplied by
  std::string symbol;   // e.g. "latent_height"; empty for a fixed axis
  int64_t divisor = 1;  // the symbol's value is divided by this, rounding up

  // The axis' size for the symbols' values; throws Error when the symbol has no value.
  int64_t size(const std::map<std::string, int64_t>& values) const;
};

// A manifest's dimension: an integer, "symbol", "N*symbol", "symbol/N" or "N*symbol/N" (N >= 1). Throws Error naming
// the dimension and the allowed forms otherwise.
Dim parse_dim(const std::string& dim);

struct TensorSpec {
  std::string name;
  std::string type;  // the manifest's dtype: float32, float16, int32 or int64
  DType dtype = DType::Float32;
  std::vector<std::string> shape;  // each as the manifest writes it: "3", "batch", "8*latent_height", "latent_height/2"
};

struct DimRange {
  int64_t min = 1, opt = 1, max = 1;
};

// One network of the artifact: its IO spec, its role and its files.
struct ComponentSpec {
  std::string name;
  std::string role;       // text_encoder, image_encoder, denoiser, controlnet, vae_decoder, vae_encoder
  std::string batch_dim;  // symbol of axis 0 of every input and output
  std::vector<TensorSpec> inputs;
  std::vector<TensorSpec> outputs;
  std::map<std::string, int64_t> attributes;  // the integer and boolean attributes (hidden_size, clip_skip_max, ...)
  // the attributes that list tensor names: "residuals" (a UNet's ControlNet residual inputs, down blocks' then the
  // mid block's; zeros are "no ControlNet"), "added_cond", "fp32_inputs"
  std::map<std::string, std::vector<std::string>> name_lists;
  std::string onnx;                           // graph path relative to the artifact
  std::string token_table;                    // text encoders: the token table (safetensors) relative to the artifact

  const TensorSpec* input(const std::string& name) const;
  bool has_input(const std::string& name) const { return input(name) != nullptr; }
  int64_t attribute(const std::string& key) const;  // throws Error naming the component when absent
  // A name-list attribute; empty when absent (a format-4-era UNet has no "residuals").
  const std::vector<std::string>& names(const std::string& key) const;
};

struct ShapeRanges {
  int64_t max_batch = 4, min_size = 256, max_size = 1024, opt_size = 512, opt_batch = 1;
  int64_t text_length = 77, max_text_chunks = 4, latent_factor = 8;
};

struct TextEncoderPair {
  std::string tokenizer;  // tokenizer directory, e.g. "tokenizer_2"
  std::string network;    // text-encoder component, e.g. "text_encoder_2"
};

struct Manifest {
  int format_version = kFormatVersion;
  std::string family;  // sd1, sd2, sdxl, sdxl_refiner, unclip, controlnet (this library runs sd1, sd2 and sdxl)
  bool inpainting = false;
  std::string prediction_type;  // epsilon, v_prediction, sample
  std::optional<double> vae_scaling_factor;  // every family but controlnet (which has no VAE)
  std::string source_sha256;
  std::optional<std::pair<std::string, std::string>> vae;  // the swapped-in VAE: (name, sha256)
  ShapeRanges ranges;
  std::map<std::string, DimRange> dims;
  std::vector<std::string> support;
  std::vector<TextEncoderPair> text_encoders;
  bool force_zeros_for_empty_prompt = false;  // SDXL: an empty negative prompt is zero embeddings
  bool requires_aesthetics_score = false;     // SDXL refiner
  // a ControlNet (family controlnet): the base families whose UNets it fits, its text width, whether its residuals
  // are pooled (shuffle-type ControlNets)
  std::vector<std::string> controlnet_fits;
  int64_t cross_attention_dim = 0;
  bool global_pool_conditions = false;
  std::map<std::string, ComponentSpec> components;

  const ComponentSpec& component(const std::string& name) const;
  // The component with `role` (the first by name when several have it); throws Error when none does.
  const ComponentSpec& by_role(const std::string& role) const;
};

// Read and validate ARTIFACT/manifest.json: format version, family, components and their IO specs, ranges,
// files present and inside the artifact. Throws Error naming the field and what is allowed.
Manifest read_manifest(const std::filesystem::path& artifact);
// The same checks on a manifest's JSON text (`what` names it in messages); files are not checked.
Manifest parse_manifest(const std::string& json_text, const std::string& what);
// Refuse (Error) a manifest this library cannot generate with: another family (a ControlNet, a refiner, unCLIP), an
// inpainting UNet, ...
void check_supported(const Manifest& manifest);

// ------------------------------------------------------------------------------------------------ tokenizer

// CLIP's byte-level BPE tokenizer, read from a tokenizer directory (tokenizer.json, or vocab.json + merges.txt,
// with tokenizer_config.json / special_tokens_map.json). Gives the ids transformers' CLIPTokenizer gives.
class Tokenizer {
 public:
  static Tokenizer load(const std::filesystem::path& directory);

  // Ids of `text` without begin and end tokens (add_special_tokens=False). Throws Error on invalid UTF-8.
  std::vector<int32_t> encode(const std::string& text) const;

  int32_t bos() const { return bos_; }
  int32_t eos() const { return eos_; }
  int32_t pad() const { return pad_; }
  size_t vocab_size() const { return vocab_.size(); }

 private:
  std::vector<int32_t> bpe(const std::u32string& word) const;

  std::map<std::string, int32_t> vocab_;
  std::map<std::pair<int32_t, int32_t>, std::pair<int32_t, int32_t>> merges_;  // (a, b) -> (rank, merged id)
  std::vector<std::pair<std::u32string, int32_t>> added_raw_;     // added tokens matched in the raw text
  std::vector<std::pair<std::u32string, int32_t>> added_normal_;  // added tokens matched after normalization
  int32_t bos_ = 0, eos_ = 0, pad_ = 0, unk_ = -1;
};

// ------------------------------------------------------------------------------------------------ prompts

// A run of prompt text with one emphasis weight (the AUTOMATIC1111 web UI's syntax: (word:1.2), (word), [word],
// escapes, BREAK), as sdrt.runtime.prompt_syntax.parse_prompt reads it.
struct Fragment {
  std::string text;
  double weight = 1.0;
  bool chunk_break = false;  // BREAK: the next tokens start a new 75-token chunk
};

std::vector<Fragment> parse_emphasis(const std::string& prompt);

// True when `prompt` uses prompt editing or alternation ([from:to:when], [a|b]), which this library refuses.
bool has_prompt_schedule(const std::string& prompt);

// A prompt as text-encoder rows: `length` ids per chunk (begin, 75 tokens, end, padding) and each id's weight.
struct TokenizedPrompt {
  std::vector<std::vector<int32_t>> ids;
  std::vector<std::vector<float>> weights;
  int num_tokens = 0;  // prompt tokens, not counting begin, end and padding
};

TokenizedPrompt tokenize_prompt(const Tokenizer& tokenizer, const std::string& prompt, int length = 77);

// ------------------------------------------------------------------------------------------------ randomness

// torch.Generator("cpu").manual_seed(seed), drawing exactly as torch draws: mt19937 seeded with the seed's low 32
// bits, and torch.randn's two normal paths (a 16-wide Box-Muller fill for 16 or more elements, the last 16 drawn
// again when the count is not a multiple of 16; a scalar double Box-Muller with a cached second value below 16).
class TorchGenerator {
 public:
  // Which of torch's normal kernels to reproduce: its AVX2 kernel (Cephes polynomials, fused multiply-adds) or its
  // portable one (libm). torch picks by CPU; native_kernel() picks the same.
  enum class Kernel { Avx2, Default };
  static Kernel native_kernel();

  explicit TorchGenerator(uint64_t seed, Kernel kernel = native_kernel());

  uint32_t random();
  uint64_t random64();
  float uniform_float();    // [0, 1), 24 bits
  double uniform_double();  // [0, 1), 53 bits
  double normal_double();   // at::normal_distribution<double>

  // torch.randn(count, generator=self, dtype=torch.float32)
  std::vector<float> randn(size_t count);

 private:
  std::mt19937 engine_;
  Kernel kernel_;
  std::optional<double> next_normal_;
};

// ------------------------------------------------------------------------------------------------ samplers

// One value of a scheduler config (scheduler/scheduler_config.json).
struct ConfigValue {
  enum class Kind { Null, Bool, Number, String, List } kind = Kind::Null;
  bool flag = false;
  double number = 0;
  std::string text;
  std::vector<double> list;  // trained_betas
};

// A scheduler config as diffusers' from_config reads it: keys absent from the file take the scheduler class's
// default (each sampler knows its class's).
struct SchedulerConfig {
  std::map<std::string, ConfigValue> values;

  static SchedulerConfig load(const std::filesystem::path& file);
  std::string class_name() const;
  bool has(const std::string& key) const;  // present and not null
  double number(const std::string& key, double fallback) const;
  bool flag(const std::string& key, bool fallback) const;
  std::string text(const std::string& key, const std::string& fallback) const;
};

// A denoising sampler: the schedule and the update rule of one of diffusers' schedulers.
class Sampler {
 public:
  virtual ~Sampler() = default;
  virtual void set_timesteps(int steps) = 0;
  const std::vector<double>& timesteps() const { return timesteps_; }
  const std::vector<double>& sigmas() const { return sigmas_; }  // empty for DDIM
  virtual double init_noise_sigma() const = 0;
  // Start at the `begin`-th timestep (image-to-image), as diffusers' set_begin_index.
  virtual void set_begin_index(int begin) { begin_index_ = begin; }
  // The UNet's input at timestep index `index` of timesteps().
  virtual std::vector<float> scale_model_input(const std::vector<float>& sample, int index) const = 0;
  // One step: the model output (noise, v or sample prediction) at timesteps()[index] -> the next sample.
  // `noise` is called (with the element count of one image) by ancestral samplers for each image's fresh noise.
  virtual std::vector<float> step(const std::vector<float>& model_output, int index, const std::vector<float>& sample,
                                  int images, const std::function<std::vector<float>(int image)>& noise) = 0;
  // `original` noised to the level of timesteps()[index] with `noise` (img2img's start).
  virtual std::vector<float> add_noise(const std::vector<float>& original, const std::vector<float>& noise,
                                       int index) const = 0;
  const std::string& name() const { return name_; }    // sdrt's sampler name, e.g. "dpmpp_2m_karras"
  const std::string& label() const { return label_; }  // the web UI's, e.g. "DPM++ 2M Karras" (for the infotext)

 protected:
  friend std::unique_ptr<Sampler> make_sampler(const std::string&, const SchedulerConfig&, double);
  std::string name_, label_;
  std::vector<double> timesteps_, sigmas_;
  int begin_index_ = 0;
};

// The sampler names of `sdrt generate --scheduler` this library implements, in order.
std::vector<std::string> sampler_names();
// `name` (a name or its web UI label, any case; "" = the model's own scheduler class) on `config`; `eta` is DDIM's.
// Throws Error listing the known names for an unknown one, or naming what the config asks that is not supported.
std::unique_ptr<Sampler> make_sampler(const std::string& name, const SchedulerConfig& config, double eta = 0.0);

// ------------------------------------------------------------------------------------------------ engines

// Backend options by name, e.g. OpenVINO's {"cache_dir": DIR, "threads": N}; a backend refuses names it does not know.
using EngineOptions = std::map<std::string, std::string>;

// What an engine is built from: the artifact, its manifest, the component it runs and the backend's options.
struct EngineContext {
  std::filesystem::path artifact;
  const Manifest* manifest = nullptr;
  const ComponentSpec* spec = nullptr;
  EngineOptions options;
};

// A runnable network. Feeds reach run() already checked against the component's spec and ranges (names, dtypes,
// ranks, symbol values, batch within the range); outputs are returned by name. A backend is one class deriving from
// Engine plus one register_backend() call (cpp/README.md shows how).
class Engine {
 public:
  virtual ~Engine() = default;
  virtual TensorMap run(const TensorMap& feeds) = 0;
};

using EngineFactory = std::function<std::unique_ptr<Engine>(const EngineContext&)>;

void register_backend(const std::string& name, EngineFactory factory);
std::vector<std::string> backend_names();
// An engine of `backend` for ctx.spec; throws Error listing the known backends for an unknown one.
std::unique_ptr<Engine> make_engine(const std::string& backend, const EngineContext& ctx);

// Check `feeds` against `spec` and `dims`; return the value of every symbol. Throws Error naming the tensor, the
// axis, the value and what is allowed.
std::map<std::string, int64_t> resolve_shapes(const ComponentSpec& spec, const std::map<std::string, DimRange>& dims,
                                              const TensorMap& feeds);
// The shape of an input or output of `spec` for resolved symbol values (a "symbol/N" axis rounds up).
std::vector<int64_t> concrete_shape(const TensorSpec& spec, const std::map<std::string, int64_t>& values);

// ------------------------------------------------------------------------------------------------ images

// An 8-bit RGB image, row-major, 3 bytes per pixel.
struct Image {
  int width = 0, height = 0;
  std::vector<uint8_t> rgb;
};

// Read a PNG (8-bit grey, grey+alpha, RGB, RGBA or palette; alpha dropped as PIL's convert("RGB") drops it).
Image read_png(const std::filesystem::path& path);
// Write `image` as a PNG with a `parameters` text chunk (tEXt when Latin-1, else iTXt, as PIL writes it), to a
// temporary name renamed into place.
void write_png(const std::filesystem::path& path, const Image& image, const std::string& parameters);

// A float32 .npy file (C order, little endian); throws Error naming the file otherwise.
Tensor read_npy(const std::filesystem::path& path);
void write_npy(const std::filesystem::path& path, const Tensor& tensor);

// ------------------------------------------------------------------------------------------------ generation

// One generation, with `sdrt generate`'s defaults (unset fields take the family's or the artifact's).
struct Request {
  std::string prompt;
  std::string negative_prompt;
  std::optional<int> steps;         // default: the family's (30)
  std::optional<double> guidance;   // default: the family's (7.5; SDXL 5.0); <= 1 skips the unconditional rows
  std::string sampler;              // a name of sampler_names() or its web UI label; "" = the model's own
  std::optional<uint64_t> seed;     // image i uses seed + i; default: a random seed, reported in the result
  std::optional<int> width, height; // pixels; default: the artifact's tuned size, or the input image's
  int clip_skip = 0;                // diffusers' numbering: 1 is the web UI's "CLIP skip 2"
  double eta = 0.0;                 // DDIM's eta (noise added per step), 0..1
  int batch = 1;                    // images
  std::optional<Image> image;       // image-to-image input (exactly width x height)
  std::optional<double> strength;   // with image: share of the schedule run (default 0.8; SDXL 0.3)
  std::optional<Tensor> latents;    // text-to-image start noise (batch, C, h, w) instead of the seeds' draws
};

// Seconds per stage.
struct Timings {
  double text_encoder = 0, vae_encode = 0, unet = 0, denoise = 0, vae_decode = 0, total = 0;
  int steps = 0, unet_calls = 0;
  std::string table() const;  // the stage table `sdrt generate` prints
};

struct Result {
  std::vector<Image> images;
  std::vector<uint64_t> seeds;
  std::vector<std::string> parameters;  // the web UI infotext of each image
  Timings timings;
};

// Called after every denoising step with (steps done, steps in all).
using Progress = std::function<void(int, int)>;

// An artifact's engines, tokenizers, token tables and scheduler config, loaded once; generate() runs requests.
class Pipeline {
 public:
  static std::unique_ptr<Pipeline> load(const std::filesystem::path& artifact, const std::string& backend = "openvino",
                                        const EngineOptions& options = {});
  virtual ~Pipeline() = default;

  // Check a request and fill in its defaults (throws Error naming the field before any engine runs).
  virtual Request check(const Request& request) const = 0;
  virtual Result generate(const Request& request, const Progress& progress = {}) = 0;
  virtual const Manifest& manifest() const = 0;
};

}  // namespace sdrt
