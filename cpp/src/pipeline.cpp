// The generation loop (sdrt/runtime/pipeline.py, for SD 1.x, SD 2.x and SDXL base, text-to-image and image-to-image):
// prompts -> text-encoder rows -> conditioning; each image's noise from its own torch generator; one batched-CFG
// UNet call per step ([unconditional rows of guided images; conditional rows of all images]); the sampler's step;
// the VAE decoder; 8-bit images rounded as diffusers rounds them; the web UI infotext.

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <random>
#include <regex>
#include <set>
#include <tuple>

#include "files.hpp"
#include "sdrt/sdrt.hpp"
#include "strings.hpp"
#include "unicode.hpp"

namespace fs = std::filesystem;

namespace sdrt {

namespace {

constexpr int kMaxSteps = 1000;
constexpr int kMaxImages = 64;          // images per request, as the Python pipeline's default
constexpr double kMaxEmphasis = 1000.0;  // larger emphasis weights overflow the text embeddings

using Clock = std::chrono::steady_clock;

double seconds_since(Clock::time_point start) {
  return std::chrono::duration<double>(Clock::now() - start).count();
}

// One text encoder: its tokenizer, token table and engine.
struct Encoder {
  std::string network;
  Tokenizer tokenizer;
  Tensor table;  // (vocab, D)
  const ComponentSpec* spec = nullptr;
  TokenizedPrompt empty;  // the empty prompt's one chunk (pads prompts to a common chunk count)
};

// A prompt's chunks padded with the empty prompt's chunk to `chunks`.
TokenizedPrompt padded(TokenizedPrompt p, const TokenizedPrompt& empty, size_t chunks) {
  while (p.ids.size() < chunks) {
    p.ids.push_back(empty.ids[0]);
    p.weights.push_back(empty.weights[0]);
  }
  return p;
}

// The web UI's "Original" emphasis: scale each token's embedding (T, D) by its weight, restore the mean.
void apply_emphasis(float* states, size_t tokens, size_t width, const std::vector<float>& weights) {
  bool plain = true;
  for (float w : weights) plain = plain && w == 1.0f;
  if (plain) return;
  const size_t n = tokens * width;
  double sum = 0;
  for (size_t i = 0; i < n; ++i) sum += states[i];
  const auto mean = static_cast<float>(sum / static_cast<double>(n));
  double weighted_sum = 0;
  for (size_t t = 0; t < tokens; ++t) {
    for (size_t d = 0; d < width; ++d) {
      float& v = states[t * width + d];
      v = v * weights[t];
      weighted_sum += v;
    }
  }
  const float factor = mean / static_cast<float>(weighted_sum / static_cast<double>(n));
  for (size_t i = 0; i < n; ++i) states[i] = states[i] * factor;
}

std::string infotext_value(const std::string& value) {
  if (value.find(',') == std::string::npos && value.find(':') == std::string::npos) return value;
  std::string out = "\"";
  for (char c : value) {
    if (c == '\\' || c == '"') out += '\\';
    out += c;
  }
  return out + "\"";
}

class ArtifactPipeline : public Pipeline {
 public:
  ArtifactPipeline(const fs::path& artifact, const std::string& backend, const EngineOptions& options)
      : artifact_(artifact), backend_(backend), options_(options) {
    manifest_ = read_manifest(artifact);
    check_supported(manifest_);
    name_ = fs::weakly_canonical(artifact).filename().string();
    if (name_.empty()) name_ = fs::weakly_canonical(artifact).parent_path().filename().string();
    scheduler_config_ = SchedulerConfig::load(artifact / "scheduler" / "scheduler_config.json");
    make_sampler("", scheduler_config_);  // a config the library cannot run fails here (unless --sampler is given)
    xl_ = manifest_.family == "sdxl";
    backend_names_check(backend);
    for (const auto& pair : manifest_.text_encoders) {
      Encoder e;
      e.network = pair.network;
      e.spec = &manifest_.component(pair.network);
      e.tokenizer = Tokenizer::load(artifact / pair.tokenizer);
      const int64_t vocab = e.spec->attribute("vocab_size"), width = e.spec->attribute("hidden_size");
      if (static_cast<int64_t>(e.tokenizer.vocab_size()) > vocab) {
        throw Error("the " + pair.tokenizer + " vocabulary has " + std::to_string(e.tokenizer.vocab_size()) +
                    " tokens, more than the " + pair.network + " token table's " + std::to_string(vocab));
      }
      e.table = read_token_table(artifact / e.spec->token_table, vocab, width);
      e.empty = tokenize_prompt(e.tokenizer, "", static_cast<int>(manifest_.ranges.text_length));
      encoders_.push_back(std::move(e));
    }
  }

  // the family's defaults (sdrt.families): 30 steps; guidance 7.5, image-to-image strength 0.8; SDXL 5.0 and 0.3
  int default_steps() const { return 30; }
  double default_guidance() const { return xl_ ? 5.0 : 7.5; }
  double default_strength() const { return xl_ ? 0.3 : 0.8; }

  const Manifest& manifest() const override { return manifest_; }

  Request check(const Request& request) const override { return plan(request).request; }

  // A checked request with its defaults filled in, its tokens (one per text encoder) and its sampler: made once per
  // generation, before any engine is built, and carried through it.
  struct Plan {
    Request request;
    std::vector<TokenizedPrompt> prompts, negatives;  // per text encoder
    std::unique_ptr<Sampler> sampler;
  };

  Plan plan(const Request& request) const {
    Plan plan;
    plan.request = request;
    Request& r = plan.request;
    for (const auto& [field, text] : {std::pair<const char*, const std::string*>{"prompt", &r.prompt},
                                      {"negative_prompt", &r.negative_prompt}}) {
      unicode::decode(*text, field);  // invalid UTF-8 is refused here, naming the field
      static const std::regex tag(R"(<(\w+):([^>]+)>)");
      if (std::regex_search(*text, tag)) {
        throw Error(std::string(field) + " holds a web UI extra-network tag (<lora:...>), which sdrt-cpp does not run; "
                    "fuse a LoRA at export instead (sdrt export MODEL --lora FILE:WEIGHT)");
      }
      if (has_prompt_schedule(*text)) {
        throw Error(std::string(field) + " uses prompt editing or alternation ([from:to:when], [a|b]), which sdrt-cpp "
                    "does not run; use 'sdrt generate' for it");
      }
    }
    const int64_t factor = manifest_.ranges.latent_factor;
    if (r.image) {
      if (!r.width) r.width = r.image->width - r.image->width % static_cast<int>(factor);
      if (!r.height) r.height = r.image->height - r.image->height % static_cast<int>(factor);
      if (!r.strength) r.strength = default_strength();
    }
    if (!r.width) r.width = static_cast<int>(manifest_.ranges.opt_size);
    if (!r.height) r.height = static_cast<int>(manifest_.ranges.opt_size);
    if (!r.steps) r.steps = default_steps();
    if (!r.guidance) r.guidance = default_guidance();
    if (!r.seed) r.seed = std::random_device{}();
    if (*r.steps < 1 || *r.steps > kMaxSteps) {
      throw Error("num_inference_steps " + std::to_string(*r.steps) + " is outside 1.." + std::to_string(kMaxSteps));
    }
    if (r.batch < 1 || r.batch > kMaxImages) {
      throw Error("batch " + std::to_string(r.batch) + " is outside 1.." + std::to_string(kMaxImages));
    }
    if (!std::isfinite(*r.guidance)) throw Error("guidance_scale " + format_g(*r.guidance) + " is not a finite number");
    if (!(r.eta >= 0.0 && r.eta <= 1.0)) throw Error("eta " + format_g(r.eta) + " is outside 0..1");
    if (*r.seed > UINT64_MAX - static_cast<uint64_t>(r.batch - 1)) {
      throw Error("seed " + std::to_string(*r.seed) + " is outside 0.." + std::to_string(UINT64_MAX - static_cast<uint64_t>(r.batch - 1)));
    }
    if (r.clip_skip < 0) throw Error("clip_skip " + std::to_string(r.clip_skip) + " must be at least 0");
    for (auto [name, value] : {std::pair<const char*, int>{"height", *r.height}, {"width", *r.width}}) {
      if (value % factor) throw Error(std::string(name) + " " + std::to_string(value) + " is not a multiple of " + std::to_string(factor));
      if (value < manifest_.ranges.min_size || value > manifest_.ranges.max_size) {
        throw Error(std::string(name) + " " + std::to_string(value) + " is outside the artifact's range " +
                    std::to_string(manifest_.ranges.min_size) + ".." + std::to_string(manifest_.ranges.max_size) +
                    "; re-export with --min-size/--max-size to cover it");
      }
    }
    if (r.strength) {
      if (!r.image) throw Error("strength " + format_g(*r.strength) + " needs an input image (image-to-image)");
      if (!(*r.strength >= 0.0 && *r.strength <= 1.0)) throw Error("strength " + format_g(*r.strength) + " is outside 0..1");
      if (*r.strength == 0) throw Error("strength 0 runs no step: give strength above 0 (the share of the steps to run)");
    }
    if (r.image && (r.image->width != *r.width || r.image->height != *r.height)) {
      throw Error("image is " + std::to_string(r.image->width) + "x" + std::to_string(r.image->height) +
                  ", but the generation is " + std::to_string(*r.width) + "x" + std::to_string(*r.height) +
                  "; sdrt-cpp takes an input image of exactly the generated size (resize it first)");
    }
    if (r.latents) {
      if (r.image) throw Error("latents are the start noise of text-to-image; leave out image");
      const int64_t c = latent_channels(), h = *r.height / factor, w = *r.width / factor;
      std::vector<int64_t> want{r.batch, c, h, w};
      if (r.latents->shape.size() == 3 && r.batch == 1) r.latents->shape.insert(r.latents->shape.begin(), 1);
      if (r.latents->shape != want) {
        throw Error("latents have shape " + r.latents->shape_text() + ", not " + Tensor::zeros(want).shape_text() +
                    " (batch, channels, height/" + std::to_string(factor) + ", width/" + std::to_string(factor) + ")");
      }
    }
    plan.sampler = make_sampler(r.sampler, scheduler_config_, r.eta);  // an unknown sampler is refused here
    // text: CLIP skip within the encoders' layers, chunks within the artifact's, emphasis that cannot overflow
    for (const auto& e : encoders_) {
      const int64_t max_skip = e.spec->attribute("clip_skip_max") - 1;
      if (r.clip_skip > max_skip) {
        throw Error("clip_skip " + std::to_string(r.clip_skip) + " is outside 0.." + std::to_string(max_skip) + " (the " +
                    e.network + " has " + std::to_string(e.spec->attribute("num_layers")) + " layers)");
      }
      plan.negatives.push_back(tokenize_prompt(e.tokenizer, r.negative_prompt, static_cast<int>(manifest_.ranges.text_length)));
      plan.prompts.push_back(tokenize_prompt(e.tokenizer, r.prompt, static_cast<int>(manifest_.ranges.text_length)));
      for (const auto& [field, text, p] : {std::tuple<const char*, const std::string&, const TokenizedPrompt&>{
                                               "negative_prompt", r.negative_prompt, plan.negatives.back()},
                                           {"prompt", r.prompt, plan.prompts.back()}}) {
        for (const auto& chunk : p.weights) {
          for (float w : chunk) {
            if (!(std::fabs(w) <= kMaxEmphasis)) {
              throw Error(std::string(field) + " " + quote(text, 60) + " has an emphasis weight of " + format_g(w) +
                          "; at most 1000 is allowed (each '(' multiplies by 1.1: 73 nested brackets reach it)");
            }
          }
        }
        if (static_cast<int64_t>(p.ids.size()) > manifest_.ranges.max_text_chunks) {
          const int64_t per = manifest_.ranges.text_length - 2;
          throw Error(std::string(field) + " " + quote(text, 60) + " is " + std::to_string(p.num_tokens) +
                      " tokens in " + std::to_string(p.ids.size()) + " chunks of " + std::to_string(per) +
                      "; this artifact takes at most " + std::to_string(manifest_.ranges.max_text_chunks) + " chunks (" +
                      std::to_string(manifest_.ranges.max_text_chunks * per) +
                      " tokens). Shorten it, or re-export with a larger --max-text-chunks");
        }
      }
    }
    return plan;
  }

  Result generate(const Request& request, const Progress& progress) override {
    const auto start = Clock::now();
    Plan plan = this->plan(request);
    const Request& r = plan.request;
    Timings timings;
    const int n = r.batch;
    const bool guided = *r.guidance > 1.0;  // one guidance scale for the request: every image guided, or none
    const int k = guided ? n : 0;
    std::vector<uint64_t> seeds;
    std::vector<TorchGenerator> gens;
    for (int i = 0; i < n; ++i) {
      seeds.push_back(*r.seed + static_cast<uint64_t>(i));
      gens.emplace_back(seeds.back());
    }

    // conditioning: every UNet input but sample and timestep, uncond rows (guided images) then cond rows
    auto clock = Clock::now();
    TensorMap conditioning = condition(plan, n, guided);
    timings.text_encoder = seconds_since(clock);

    // the sampler and the timesteps this request runs
    Sampler* sampler = plan.sampler.get();
    sampler->set_timesteps(*r.steps);
    int begin = 0;
    if (r.strength) {
      const int run = std::max(1, std::min(static_cast<int>(*r.steps * *r.strength), *r.steps));
      begin = *r.steps - run;  // every sampler here is first order
      sampler->set_begin_index(begin);
    }
    const std::vector<double>& timesteps = sampler->timesteps();
    const int64_t factor = manifest_.ranges.latent_factor;
    const int64_t c = latent_channels(), h = *r.height / factor, w = *r.width / factor;
    const size_t per_image = static_cast<size_t>(c * h * w);

    // start latents: seeded noise (or the given latents) times the initial sigma, or the noised encoded image
    std::vector<float> latents;
    if (!r.image) {
      std::vector<float> noise;
      if (r.latents) {
        noise = r.latents->data;
      } else {
        for (auto& g : gens) {
          const std::vector<float> row = g.randn(per_image);
          noise.insert(noise.end(), row.begin(), row.end());
        }
      }
      const auto sigma = static_cast<float>(sampler->init_noise_sigma());
      latents.resize(noise.size());
      for (size_t i = 0; i < noise.size(); ++i) latents[i] = noise[i] * sigma;
    } else {
      clock = Clock::now();
      const std::vector<float> image_latents = encode_image(*r.image, n, gens);
      timings.vae_encode = seconds_since(clock);
      std::vector<float> noise;
      for (auto& g : gens) {
        const std::vector<float> row = g.randn(per_image);
        noise.insert(noise.end(), row.begin(), row.end());
      }
      latents = sampler->add_noise(image_latents, noise, begin);
    }

    // the denoising loop
    const auto denoise_start = Clock::now();
    const ComponentSpec& unet_spec = manifest_.by_role("denoiser");
    Engine& unet = engine(unet_spec.name);
    const int total = static_cast<int>(timesteps.size()) - begin;
    const int64_t rows = guided ? 2 * n : n;  // the UNet's batch: [uncond rows; cond rows]
    TensorMap feeds = std::move(conditioning);
    Tensor& sample = feeds["sample"] = Tensor::zeros({rows, c, h, w});
    Tensor& timestep = feeds["timestep"] = Tensor::zeros({rows});
    // the residuals a ControlNet would add inside the UNet: zeros are exactly "no ControlNet", as the Python runtime
    // feeds them to a request without control (each at the latents' size over 2 per downsampling, rounded up)
    const std::map<std::string, int64_t> sizes{{unet_spec.batch_dim, rows}, {"latent_height", h}, {"latent_width", w}};
    for (const auto& name : unet_spec.names("residuals")) {
      feeds[name] = Tensor::zeros(concrete_shape(*unet_spec.input(name), sizes));
    }
    for (int index = begin; index < static_cast<int>(timesteps.size()); ++index) {
      const std::vector<float> scaled = sampler->scale_model_input(latents, index);
      std::copy(scaled.begin(), scaled.end(), sample.data.begin());
      if (guided) std::copy(scaled.begin(), scaled.end(), sample.data.begin() + static_cast<std::ptrdiff_t>(scaled.size()));
      std::fill(timestep.data.begin(), timestep.data.end(), static_cast<float>(timesteps[static_cast<size_t>(index)]));
      clock = Clock::now();
      const Tensor noise_pred = call_in_chunks(unet, unet_spec, feeds).at("noise_pred");
      timings.unet += seconds_since(clock);
      ++timings.unet_calls;
      std::vector<float> model_output(noise_pred.data.begin() + static_cast<std::ptrdiff_t>(k * per_image), noise_pred.data.end());
      if (guided) {  // uncond + g * (cond - uncond), per image
        const auto g = static_cast<float>(*r.guidance);
        for (size_t i = 0; i < model_output.size(); ++i) {
          const float uncond = noise_pred.data[i];
          model_output[i] = uncond + g * (model_output[i] - uncond);
        }
      }
      latents = sampler->step(model_output, index, latents, n, [&](int image) { return gens[static_cast<size_t>(image)].randn(per_image); });
      ++timings.steps;
      if (progress) progress(index - begin + 1, total);
    }
    timings.denoise = seconds_since(denoise_start);

    // decode
    clock = Clock::now();
    const ComponentSpec& decoder_spec = manifest_.by_role("vae_decoder");
    const auto scaling = static_cast<float>(manifest_.vae_scaling_factor.value());
    for (auto& v : latents) v = v / scaling;
    const Tensor decoded = call_in_chunks(engine(decoder_spec.name), decoder_spec,
                                          {{"latent", Tensor::from({n, c, h, w}, latents)}}).at("images");
    timings.vae_decode = seconds_since(clock);

    Result result;
    result.seeds = seeds;
    const size_t plane = static_cast<size_t>(*r.width) * static_cast<size_t>(*r.height);
    for (int i = 0; i < n; ++i) {
      Image image;
      image.width = *r.width;
      image.height = *r.height;
      image.rgb.resize(plane * 3);
      const float* src = decoded.data.data() + static_cast<size_t>(i) * 3 * plane;
      for (size_t p = 0; p < plane; ++p) {
        for (size_t ch = 0; ch < 3; ++ch) {
          const float v = std::clamp(src[ch * plane + p] / 2.0f + 0.5f, 0.0f, 1.0f);
          image.rgb[p * 3 + ch] = static_cast<uint8_t>(std::nearbyint(v * 255.0f));
        }
      }
      result.images.push_back(std::move(image));
      result.parameters.push_back(infotext(r, *sampler, seeds[static_cast<size_t>(i)]));
    }
    timings.total = seconds_since(start);
    result.timings = timings;
    return result;
  }

 private:
  static void backend_names_check(const std::string& backend) {
    const auto names = backend_names();
    if (std::find(names.begin(), names.end(), backend) == names.end()) {
      throw Error("unknown backend " + quote(backend) + "; known: " + join(names, ", "));
    }
  }

  // A component's engine, made at its first use: a request with a bad field is refused before any is built.
  Engine& engine(const std::string& name) {
    auto it = engines_.find(name);
    if (it == engines_.end()) {
      const EngineContext ctx{artifact_, &manifest_, &manifest_.component(name), options_};
      it = engines_.emplace(name, make_engine(backend_, ctx)).first;
    }
    return *it->second;
  }

  int64_t latent_channels() const {
    const TensorSpec& out = manifest_.by_role("denoiser").outputs.at(0);
    return std::stoll(out.shape.at(1));
  }

  // Run `engine` on feeds of any batch, split along axis 0 into calls its profile accepts; outputs concatenated.
  TensorMap call_in_chunks(Engine& engine, const ComponentSpec& spec, const TensorMap& feeds) const {
    const int64_t limit = manifest_.dims.at(spec.batch_dim).max;
    const int64_t count = feeds.begin()->second.shape.at(0);
    if (count <= limit) {  // one call: the feeds as they are
      resolve_shapes(spec, manifest_.dims, feeds);
      return engine.run(feeds);
    }
    std::vector<TensorMap> parts;
    for (int64_t at = 0; at < count; at += limit) {
      TensorMap chunk;
      for (const auto& [name, t] : feeds) chunk[name] = t.rows(at, std::min(count, at + limit));
      resolve_shapes(spec, manifest_.dims, chunk);
      parts.push_back(engine.run(chunk));
    }
    TensorMap out;
    for (const auto& [name, t] : parts[0]) {
      std::vector<Tensor> pieces;
      for (const auto& p : parts) pieces.push_back(p.at(name));
      out[name] = concat(pieces);
    }
    return out;
  }

  // States (rows, 77, D) and pooled embeddings (rows, P) of text-encoder rows of token ids.
  std::pair<Tensor, std::optional<Tensor>> encode_rows(Encoder& e, const std::vector<std::vector<int32_t>>& rows, int clip_skip) {
    const int64_t length = manifest_.ranges.text_length, width = e.table.shape[1];
    const auto count = static_cast<int64_t>(rows.size());
    std::vector<float> embeds;
    embeds.reserve(static_cast<size_t>(count * length * width));
    std::vector<int32_t> eos;
    for (const auto& ids : rows) {
      for (int32_t id : ids) {
        const float* row = e.table.data.data() + static_cast<size_t>(id) * static_cast<size_t>(width);
        embeds.insert(embeds.end(), row, row + width);
      }
      eos.push_back(static_cast<int32_t>(std::find(ids.begin(), ids.end(), e.tokenizer.eos()) - ids.begin()));
    }
    TensorMap feeds{{"inputs_embeds", Tensor::from({count, length, width}, std::move(embeds))},
                    {"clip_skip", Tensor::int32({count}, std::vector<int32_t>(rows.size(), clip_skip))}};
    if (e.spec->has_input("eos_position")) feeds["eos_position"] = Tensor::int32({count}, eos);
    TensorMap out = call_in_chunks(engine(e.network), *e.spec, feeds);
    std::optional<Tensor> pooled;
    if (out.count("pooled_embeddings")) pooled = out.at("pooled_embeddings");
    return {out.at("text_embeddings"), pooled};
  }

  // The UNet's conditioning inputs for n images of one prompt: uncond rows (when guided) then cond rows.
  TensorMap condition(const Plan& plan, int n, bool guided) {
    const Request& r = plan.request;
    const int length = static_cast<int>(manifest_.ranges.text_length);
    const std::vector<TokenizedPrompt>& prompts = plan.prompts;
    const std::vector<TokenizedPrompt>& negatives = plan.negatives;
    // the chunk count every row is padded to: the longest text encoded, all encoders
    size_t chunks = 1;
    for (size_t which = 0; which < encoders_.size(); ++which) {
      chunks = std::max(chunks, prompts[which].ids.size());
      if (guided) chunks = std::max(chunks, negatives[which].ids.size());
    }
    std::vector<Tensor> cond_states, uncond_states;
    std::optional<Tensor> cond_pooled, uncond_pooled;
    for (size_t which = 0; which < encoders_.size(); ++which) {
      Encoder& e = encoders_[which];
      const TokenizedPrompt prompt = padded(prompts[which], e.empty, chunks);
      const TokenizedPrompt negative = padded(negatives[which], e.empty, chunks);
      const bool zero_negative = xl_ && manifest_.force_zeros_for_empty_prompt && negatives[which].num_tokens == 0;
      // distinct rows, encoded once: the negative's chunks (when guided and not zeroed), then the prompt's
      std::vector<std::vector<int32_t>> rows;
      auto row_of = [&](const std::vector<int32_t>& ids) {
        auto it = std::find(rows.begin(), rows.end(), ids);
        if (it != rows.end()) return static_cast<size_t>(it - rows.begin());
        rows.push_back(ids);
        return rows.size() - 1;
      };
      std::vector<size_t> negative_rows, prompt_rows;
      if (guided && !zero_negative) {
        for (const auto& ids : negative.ids) negative_rows.push_back(row_of(ids));
      }
      for (const auto& ids : prompt.ids) prompt_rows.push_back(row_of(ids));
      auto [states, pooled] = encode_rows(e, rows, r.clip_skip);
      const int64_t width = states.shape[2];
      const size_t row_size = static_cast<size_t>(length * width);
      // a prompt's embeddings: its chunks, each with its emphasis, concatenated along the sequence
      auto embed = [&](const TokenizedPrompt& p, const std::vector<size_t>& at) {
        std::vector<float> out;
        for (size_t ch = 0; ch < at.size(); ++ch) {
          std::vector<float> chunk(states.data.begin() + static_cast<std::ptrdiff_t>(at[ch] * row_size),
                                   states.data.begin() + static_cast<std::ptrdiff_t>((at[ch] + 1) * row_size));
          apply_emphasis(chunk.data(), static_cast<size_t>(length), static_cast<size_t>(width), p.weights[ch]);
          out.insert(out.end(), chunk.begin(), chunk.end());
        }
        return Tensor::from({1, static_cast<int64_t>(chunks) * length, width}, std::move(out));
      };
      const Tensor cond = embed(prompt, prompt_rows);
      cond_states.push_back(cond.repeat_row(0, n));
      if (guided) {
        const Tensor uncond = zero_negative ? Tensor::zeros(cond.shape) : embed(negative, negative_rows);
        uncond_states.push_back(uncond.repeat_row(0, n));
      }
      if (pooled) {  // the last encoder with a pooled output gives it (diffusers' rule): the first chunk's
        const auto first = static_cast<int64_t>(prompt_rows[0]);
        cond_pooled = pooled->rows(first, first + 1).repeat_row(0, n);
        if (guided) {
          const Tensor neg = zero_negative ? Tensor::zeros({1, pooled->shape[1]})
                                           : pooled->rows(static_cast<int64_t>(negative_rows[0]), static_cast<int64_t>(negative_rows[0]) + 1);
          uncond_pooled = neg.repeat_row(0, n);
        }
      }
    }
    // several encoders' states are concatenated on the feature axis
    auto features = [](const std::vector<Tensor>& parts) {
        const int64_t rows = parts[0].shape[0] * parts[0].shape[1];
      int64_t width = 0;
      for (const auto& p : parts) width += p.shape[2];
      std::vector<float> out;
      out.reserve(static_cast<size_t>(rows * width));
      for (int64_t row = 0; row < rows; ++row) {
        for (const auto& p : parts) {
          const auto* src = p.data.data() + row * p.shape[2];
          out.insert(out.end(), src, src + p.shape[2]);
        }
      }
      return Tensor::from({parts[0].shape[0], parts[0].shape[1], width}, std::move(out));
    };
    TensorMap feeds;
    const Tensor cond = features(cond_states);
    feeds["encoder_hidden_states"] = guided ? concat({features(uncond_states), cond}) : cond;
    if (xl_) {
      if (!cond_pooled) throw Error("an SDXL artifact needs a text encoder with a pooled output");
      feeds["text_embeds"] = guided ? concat({*uncond_pooled, *cond_pooled}) : *cond_pooled;
      // time ids: (original height, width, crop top, left, target height, width), the same for both rows
      const auto hh = static_cast<float>(*r.height), ww = static_cast<float>(*r.width);
      const Tensor ids = Tensor::from({1, 6}, {hh, ww, 0.0f, 0.0f, hh, ww}).repeat_row(0, n);
      feeds["time_ids"] = guided ? concat({ids, ids}) : ids;
    }
    return feeds;
  }

  // The input image's scaled latents (n, C, h, w): encoded once, sampled per image from its generator.
  std::vector<float> encode_image(const Image& image, int n, std::vector<TorchGenerator>& gens) {
    const size_t plane = static_cast<size_t>(image.width) * static_cast<size_t>(image.height);
    std::vector<float> pixels(3 * plane);
    for (size_t p = 0; p < plane; ++p) {
      for (size_t ch = 0; ch < 3; ++ch) {
        const float v = static_cast<float>(image.rgb[p * 3 + ch]) / 255.0f;
        pixels[ch * plane + p] = 2.0f * v - 1.0f;
      }
    }
    const ComponentSpec& spec = manifest_.by_role("vae_encoder");
    const Tensor params = call_in_chunks(engine(spec.name), spec,
                                         {{"images", Tensor::from({1, 3, image.height, image.width}, pixels)}}).at("latent_parameters");
    const size_t half = static_cast<size_t>(params.numel() / 2);  // mean, then log-variance
    const auto scaling = static_cast<float>(manifest_.vae_scaling_factor.value());
    std::vector<float> out;
    for (int i = 0; i < n; ++i) {
      const std::vector<float> noise = gens[static_cast<size_t>(i)].randn(half);
      for (size_t j = 0; j < half; ++j) {
        const float logvar = std::clamp(params.data[half + j], -30.0f, 20.0f);
        const float std_dev = std::exp(0.5f * logvar);
        out.push_back(scaling * (params.data[j] + std_dev * noise[j]));
      }
    }
    return out;
  }

  // The web UI's infotext, as sdrt.runtime.images.Parameters writes it.
  std::string infotext(const Request& r, const Sampler& sampler, uint64_t seed) const {
    std::string text = r.prompt;
    if (!r.negative_prompt.empty()) text += "\nNegative prompt: " + r.negative_prompt;
    std::vector<std::pair<std::string, std::string>> pairs = {
        {"Steps", std::to_string(*r.steps)},
        {"Sampler", sampler.label()},
        {"CFG scale", format_g(*r.guidance)},
        {"Seed", std::to_string(seed)},
        {"Size", std::to_string(*r.width) + "x" + std::to_string(*r.height)},
        {"Model hash", manifest_.source_sha256.substr(0, 10)},
        {"Model", name_},
    };
    if (manifest_.vae) {
      pairs.emplace_back("VAE hash", manifest_.vae->second.substr(0, 10));
      pairs.emplace_back("VAE", manifest_.vae->first);
    }
    if (r.strength) pairs.emplace_back("Denoising strength", format_g(*r.strength));
    if (r.clip_skip) pairs.emplace_back("Clip skip", std::to_string(r.clip_skip + 1));
    pairs.emplace_back("Version", std::string("sdrt ") + version());
    std::vector<std::string> items;
    for (const auto& [key, value] : pairs) items.push_back(key + ": " + infotext_value(value));
    return text + "\n" + join(items, ", ");
  }

  fs::path artifact_;
  std::string backend_;
  EngineOptions options_;
  Manifest manifest_;
  std::string name_;
  SchedulerConfig scheduler_config_;
  bool xl_ = false;
  std::map<std::string, std::unique_ptr<Engine>> engines_;
  std::vector<Encoder> encoders_;
};

}  // namespace

std::string Timings::table() const {
  const int calls = unet_calls ? unet_calls : steps;
  const double scheduler = denoise - unet;
  const double other = std::max(0.0, total - (text_encoder + vae_encode + unet + scheduler + vae_decode));
  const std::vector<std::pair<std::string, double>> rows = {
      {"text encoder", text_encoder},
      {"vae encode", vae_encode},
      {"unet total", unet},
      {"unet per call", calls ? unet / calls : 0.0},
      {"scheduler + overhead", scheduler},
      {"vae decode", vae_decode},
      {"other (setup, image conversion)", other},
      {"total", total},
  };
  size_t width = 0;
  for (const auto& [name, seconds] : rows) width = std::max(width, name.size());
  char line[128];
  std::snprintf(line, sizeof line, "%-*s  %10s", static_cast<int>(width), "stage", "ms");
  std::string out = line;
  for (const auto& [name, seconds] : rows) {
    std::snprintf(line, sizeof line, "\n%-*s  %10.1f", static_cast<int>(width), name.c_str(), seconds * 1000);
    out += line;
  }
  return out;
}

std::unique_ptr<Pipeline> Pipeline::load(const fs::path& artifact, const std::string& backend,
                                         const EngineOptions& options) {
  return std::make_unique<ArtifactPipeline>(artifact, backend, options);
}

}  // namespace sdrt
