// The samplers of `sdrt generate`, as diffusers' schedulers compute them (diffusers 0.42): Euler
// (EulerDiscreteScheduler), Euler a (EulerAncestralDiscreteScheduler), DDIM (DDIMScheduler), DPM++ 2M and its Karras
// variant (DPMSolverMultistepScheduler, dpmsolver++, order 2) and PLMS (PNDMScheduler with skip_prk_steps).
//
// Schedules are computed where diffusers computes them: training betas and their cumulative product in float32
// (torch), timestep grids and sigma interpolation in float64 (numpy), then float32; every per-step update is float32,
// operation by operation in diffusers' order (this file is compiled without fused multiply-adds).

#include <algorithm>
#include <cmath>
#include <limits>

#include "json.hpp"
#include "sdrt/sdrt.hpp"
#include "strings.hpp"

namespace sdrt {

// ------------------------------------------------------------------------------------------------ config

SchedulerConfig SchedulerConfig::load(const std::filesystem::path& file) {
  const json::Value doc = json::parse_file(file.string());
  if (!doc.is_object()) throw Error(file.string() + " is not a JSON object");
  SchedulerConfig config;
  for (const auto& [key, v] : doc.members()) {
    ConfigValue value;
    if (v.is_bool()) {
      value.kind = ConfigValue::Kind::Bool;
      value.flag = v.as_bool();
    } else if (v.is_number()) {
      value.kind = ConfigValue::Kind::Number;
      value.number = v.as_number();
    } else if (v.is_string()) {
      value.kind = ConfigValue::Kind::String;
      value.text = v.as_string();
    } else if (v.is_array()) {
      value.kind = ConfigValue::Kind::List;
      for (const auto& item : v.items()) {
        if (!item.is_number()) throw Error(file.string() + ": " + key + " must be a list of numbers");
        value.list.push_back(item.as_number());
      }
    }
    config.values[key] = value;
  }
  return config;
}

std::string SchedulerConfig::class_name() const { return text("_class_name", ""); }

bool SchedulerConfig::has(const std::string& key) const {
  auto it = values.find(key);
  return it != values.end() && it->second.kind != ConfigValue::Kind::Null;
}

double SchedulerConfig::number(const std::string& key, double fallback) const {
  auto it = values.find(key);
  if (it == values.end() || it->second.kind == ConfigValue::Kind::Null) return fallback;
  if (it->second.kind != ConfigValue::Kind::Number) throw Error("scheduler config " + key + " is not a number");
  return it->second.number;
}

bool SchedulerConfig::flag(const std::string& key, bool fallback) const {
  auto it = values.find(key);
  if (it == values.end() || it->second.kind == ConfigValue::Kind::Null) return fallback;
  if (it->second.kind != ConfigValue::Kind::Bool) throw Error("scheduler config " + key + " is not true or false");
  return it->second.flag;
}

std::string SchedulerConfig::text(const std::string& key, const std::string& fallback) const {
  auto it = values.find(key);
  if (it == values.end() || it->second.kind == ConfigValue::Kind::Null) return fallback;
  if (it->second.kind != ConfigValue::Kind::String) throw Error("scheduler config " + key + " is not a string");
  return it->second.text;
}

namespace {

// ------------------------------------------------------------------------------------------------ schedules

// numpy's linspace(start, stop, num): start + i * step in float64, the last value exactly stop
std::vector<double> np_linspace(double start, double stop, int num) {
  std::vector<double> out(static_cast<size_t>(num));
  if (num == 1) {
    out[0] = start;
    return out;
  }
  const double step = (stop - start) / (num - 1);
  for (int i = 0; i < num; ++i) out[static_cast<size_t>(i)] = i * step + start;
  out.back() = stop;
  return out;
}

// numpy's arange(start, stop, step) with a float step: ceil((stop - start) / step) values start + i * step
std::vector<double> np_arange(double start, double stop, double step) {
  const auto n = static_cast<int64_t>(std::ceil((stop - start) / step));
  std::vector<double> out;
  for (int64_t i = 0; i < n; ++i) out.push_back(start + static_cast<double>(i) * step);
  return out;
}

// numpy's round: half to even
double np_round(double x) { return std::nearbyint(x); }

// numpy's interp(x, arange(len(fp)), fp)
double np_interp(double x, const std::vector<double>& fp) {
  if (x <= 0) return fp.front();
  const double last = static_cast<double>(fp.size() - 1);
  if (x >= last) return fp.back();
  const auto j = static_cast<size_t>(x);
  if (static_cast<double>(j) == x) return fp[j];
  const double slope = (fp[j + 1] - fp[j]) / 1.0;
  return slope * (x - static_cast<double>(j)) + fp[j];
}

// torch.linspace(start, end, steps, dtype=float32)
std::vector<float> torch_linspace(float start, float end, int steps) {
  std::vector<float> out(static_cast<size_t>(steps));
  const float step = (end - start) / static_cast<float>(steps - 1);
  const int halfway = steps / 2;
  for (int i = 0; i < steps; ++i) {
    out[static_cast<size_t>(i)] = i < halfway ? start + step * static_cast<float>(i)
                                              : end - step * static_cast<float>(steps - i - 1);
  }
  return out;
}

// The training noise schedule every sampler starts from.
struct Training {
  int steps = 1000;                  // num_train_timesteps
  std::vector<float> alphas_cumprod;  // float32, as torch.cumprod gives it (accumulated in double)
};

Training training_schedule(const SchedulerConfig& c) {
  Training t;
  t.steps = static_cast<int>(c.number("num_train_timesteps", 1000));
  if (t.steps < 2) throw Error("scheduler config num_train_timesteps " + std::to_string(t.steps) + " is below 2");
  if (c.flag("rescale_betas_zero_snr", false)) {
    throw Error("scheduler config rescale_betas_zero_snr (zero terminal SNR) is not supported by sdrt-cpp");
  }
  std::vector<float> betas;
  const std::string schedule = c.text("beta_schedule", "linear");
  auto trained = c.values.find("trained_betas");
  if (trained != c.values.end() && trained->second.kind == ConfigValue::Kind::List) {
    for (double b : trained->second.list) betas.push_back(static_cast<float>(b));
    if (static_cast<int>(betas.size()) != t.steps) throw Error("scheduler config trained_betas has the wrong length");
  } else if (schedule == "linear") {
    betas = torch_linspace(static_cast<float>(c.number("beta_start", 0.0001)),
                           static_cast<float>(c.number("beta_end", 0.02)), t.steps);
  } else if (schedule == "scaled_linear") {
    betas = torch_linspace(static_cast<float>(std::sqrt(c.number("beta_start", 0.0001))),
                           static_cast<float>(std::sqrt(c.number("beta_end", 0.02))), t.steps);
    for (auto& b : betas) b = b * b;
  } else if (schedule == "squaredcos_cap_v2") {  // betas_for_alpha_bar, cosine, in float64
    auto alpha_bar = [](double x) { return std::pow(std::cos((x + 0.008) / 1.008 * M_PI / 2), 2); };
    for (int i = 0; i < t.steps; ++i) {
      const double t1 = static_cast<double>(i) / t.steps, t2 = static_cast<double>(i + 1) / t.steps;
      betas.push_back(static_cast<float>(std::min(1 - alpha_bar(t2) / alpha_bar(t1), 0.999)));
    }
  } else {
    throw Error("scheduler config beta_schedule " + quote(schedule) +
                " is not supported; supported: linear, scaled_linear, squaredcos_cap_v2");
  }
  double product = 1.0;
  for (float b : betas) {
    product *= static_cast<double>(1.0f - b);
    t.alphas_cumprod.push_back(static_cast<float>(product));
  }
  return t;
}

// sqrt((1 - alphas_cumprod) / alphas_cumprod) in float32, index = training timestep
std::vector<float> training_sigmas(const Training& t) {
  std::vector<float> sigmas;
  for (float a : t.alphas_cumprod) sigmas.push_back(std::sqrt((1.0f - a) / a));
  return sigmas;
}

// diffusers' _sigma_to_t: the fractional training timestep of `sigma` (float64) on the log-sigma table (float32)
double sigma_to_t(double sigma, const std::vector<float>& log_sigmas) {
  const double log_sigma = std::log(std::max(sigma, 1e-10));
  size_t count = 0;  // cumsum(dists >= 0).argmax(): the last index whose log sigma is at most log_sigma
  size_t low = 0;
  for (size_t i = 0; i < log_sigmas.size(); ++i) {
    if (log_sigma - static_cast<double>(log_sigmas[i]) >= 0) {
      ++count;
      low = i;
    }
  }
  if (count == 0) low = 0;
  low = std::min(low, log_sigmas.size() - 2);
  const double lo = log_sigmas[low], hi = log_sigmas[low + 1];
  const double w = std::clamp((lo - log_sigma) / (lo - hi), 0.0, 1.0);
  return (1 - w) * static_cast<double>(low) + w * static_cast<double>(low + 1);
}

// Karras et al. (2022) sigmas between the schedule's smallest and largest, rho 7, in float64
std::vector<double> karras(double sigma_min, double sigma_max, int steps) {
  const double rho = 7.0;
  const double min_inv = std::pow(sigma_min, 1 / rho), max_inv = std::pow(sigma_max, 1 / rho);
  std::vector<double> out;
  for (double r : np_linspace(0, 1, steps)) out.push_back(std::pow(max_inv + r * (min_inv - max_inv), rho));
  return out;
}

// The timestep grid of `spacing` for samplers that use `steps` points up to `train_steps` (Euler, DDIM, PNDM).
std::vector<double> timestep_grid(const std::string& spacing, int steps, int train_steps, int steps_offset,
                                  bool linspace_rounds) {
  std::vector<double> out;
  if (spacing == "linspace") {
    for (double v : np_linspace(0, train_steps - 1, steps)) out.push_back(linspace_rounds ? np_round(v) : v);
    std::reverse(out.begin(), out.end());
  } else if (spacing == "leading") {
    const int ratio = train_steps / steps;
    for (int i = steps - 1; i >= 0; --i) out.push_back(static_cast<double>(i * ratio + steps_offset));
  } else if (spacing == "trailing") {
    for (double v : np_arange(train_steps, 0, -static_cast<double>(train_steps) / steps)) out.push_back(np_round(v) - 1);
  } else {
    throw Error("scheduler config timestep_spacing " + quote(spacing) + " is not one of linspace, leading, trailing");
  }
  return out;
}

float f32(double v) { return static_cast<float>(v); }

// ------------------------------------------------------------------------------------------------ Euler, Euler a

class EulerSampler : public Sampler {
 public:
  EulerSampler(const SchedulerConfig& config, bool ancestral, bool karras_sigmas)
      : config_(config), train_(training_schedule(config)), ancestral_(ancestral), karras_(karras_sigmas) {
    prediction_ = config.text("prediction_type", "epsilon");
    if (prediction_ != "epsilon" && prediction_ != "v_prediction" && prediction_ != "sample") {
      throw Error("prediction_type " + quote(prediction_) + " is not supported by Euler samplers");
    }
    if (!ancestral && config.text("interpolation_type", "linear") != "linear") {
      throw Error("scheduler config interpolation_type " + quote(config.text("interpolation_type", "")) +
                  " is not supported by sdrt-cpp (only linear)");
    }
    if (!ancestral && config.text("timestep_type", "discrete") != "discrete") {
      throw Error("scheduler config timestep_type continuous is not supported by sdrt-cpp");
    }
  }

  void set_timesteps(int steps) override {
    const int train = train_.steps;
    const std::string spacing = config_.text("timestep_spacing", "linspace");
    std::vector<double> grid =
        timestep_grid(spacing, steps, train, static_cast<int>(config_.number("steps_offset", 0)), false);
    for (auto& t : grid) t = static_cast<double>(f32(t));  // the grid is float32 (numpy)
    const std::vector<float> base = training_sigmas(train_);
    std::vector<double> base64(base.begin(), base.end());
    std::vector<double> sigmas;
    for (double t : grid) sigmas.push_back(np_interp(t, base64));
    if (karras_) {
      std::vector<float> log_sigmas;
      for (float s : base) log_sigmas.push_back(std::log(s));
      const double lo = config_.number("sigma_min", sigmas.back()), hi = config_.number("sigma_max", sigmas.front());
      sigmas = karras(lo, hi, steps);
      grid.clear();
      for (double s : sigmas) grid.push_back(static_cast<double>(f32(sigma_to_t(s, log_sigmas))));
    }
    const std::string final_type = ancestral_ ? "zero" : config_.text("final_sigmas_type", "zero");
    double last = 0;
    if (final_type == "sigma_min") {
      last = std::sqrt((1.0f - train_.alphas_cumprod[0]) / train_.alphas_cumprod[0]);
    } else if (final_type != "zero") {
      throw Error("scheduler config final_sigmas_type " + quote(final_type) + " is not one of zero, sigma_min");
    }
    sigmas.push_back(last);
    timesteps_ = grid;
    sigmas_.clear();
    for (double s : sigmas) sigmas_.push_back(static_cast<double>(f32(s)));
    float max_sigma = 0;
    for (double s : sigmas_) max_sigma = std::max(max_sigma, f32(s));
    init_sigma_ = (spacing == "linspace" || spacing == "trailing") ? max_sigma : std::sqrt(max_sigma * max_sigma + 1.0f);
  }

  double init_noise_sigma() const override { return init_sigma_; }

  std::vector<float> scale_model_input(const std::vector<float>& sample, int index) const override {
    const float sigma = sigma_at(index);
    const float divisor = std::sqrt(sigma * sigma + 1.0f);
    std::vector<float> out(sample.size());
    for (size_t i = 0; i < sample.size(); ++i) out[i] = sample[i] / divisor;
    return out;
  }

  std::vector<float> step(const std::vector<float>& model_output, int index, const std::vector<float>& sample,
                          int images, const std::function<std::vector<float>(int)>& noise) override {
    const float sigma = sigma_at(index), next = sigma_at(index + 1);
    std::vector<float> pred(sample.size());
    if (prediction_ == "epsilon") {
      for (size_t i = 0; i < sample.size(); ++i) pred[i] = sample[i] - sigma * model_output[i];
    } else if (prediction_ == "v_prediction") {
      const float c = sigma * sigma + 1.0f;
      const float c_out = -sigma / std::sqrt(c);
      for (size_t i = 0; i < sample.size(); ++i) pred[i] = model_output[i] * c_out + sample[i] / c;
    } else {
      pred = model_output;
    }
    std::vector<float> out(sample.size());
    if (!ancestral_) {
      const float dt = next - sigma;
      for (size_t i = 0; i < sample.size(); ++i) out[i] = sample[i] + ((sample[i] - pred[i]) / sigma) * dt;
      return out;
    }
    const float from2 = sigma * sigma, to2 = next * next;
    const float sigma_up = std::sqrt(to2 * (from2 - to2) / from2);
    const float sigma_down = std::sqrt(to2 - sigma_up * sigma_up);
    const float dt = sigma_down - sigma;
    for (size_t i = 0; i < sample.size(); ++i) out[i] = sample[i] + ((sample[i] - pred[i]) / sigma) * dt;
    const size_t per_image = sample.size() / static_cast<size_t>(images);
    for (int image = 0; image < images; ++image) {
      const std::vector<float> eps = noise(image);
      for (size_t i = 0; i < per_image; ++i) {
        float& v = out[static_cast<size_t>(image) * per_image + i];
        v = v + eps[i] * sigma_up;
      }
    }
    return out;
  }

  std::vector<float> add_noise(const std::vector<float>& original, const std::vector<float>& noise,
                               int index) const override {
    const float sigma = sigma_at(index);
    std::vector<float> out(original.size());
    for (size_t i = 0; i < original.size(); ++i) out[i] = original[i] + noise[i] * sigma;
    return out;
  }

 private:
  float sigma_at(int index) const { return f32(sigmas_.at(static_cast<size_t>(index))); }

  SchedulerConfig config_;
  Training train_;
  bool ancestral_, karras_;
  std::string prediction_;
  float init_sigma_ = 1.0f;
};

// ------------------------------------------------------------------------------------------------ alpha-based (DDIM, PLMS)

// What DDIM and PLMS share: timesteps on the training grid, alphas_cumprod indexed by timestep, and add_noise.
class AlphaSampler : public Sampler {
 public:
  explicit AlphaSampler(const SchedulerConfig& config, bool set_alpha_to_one_default)
      : config_(config), train_(training_schedule(config)) {
    prediction_ = config.text("prediction_type", "epsilon");
    final_alpha_ = config.flag("set_alpha_to_one", set_alpha_to_one_default) ? 1.0f : train_.alphas_cumprod[0];
  }

  double init_noise_sigma() const override { return 1.0; }

  std::vector<float> scale_model_input(const std::vector<float>& sample, int) const override { return sample; }

  std::vector<float> add_noise(const std::vector<float>& original, const std::vector<float>& noise,
                               int index) const override {
    const float a = alpha(static_cast<int>(timesteps_.at(static_cast<size_t>(index))));
    const float sa = std::sqrt(a), sb = std::sqrt(1.0f - a);
    std::vector<float> out(original.size());
    for (size_t i = 0; i < original.size(); ++i) out[i] = sa * original[i] + sb * noise[i];
    return out;
  }

 protected:
  float alpha(int timestep) const {
    return timestep >= 0 ? train_.alphas_cumprod.at(static_cast<size_t>(timestep)) : final_alpha_;
  }

  SchedulerConfig config_;
  Training train_;
  std::string prediction_;
  float final_alpha_ = 1.0f;
  int steps_ = 0;
};

class DdimSampler : public AlphaSampler {
 public:
  DdimSampler(const SchedulerConfig& config, double eta) : AlphaSampler(config, true), eta_(eta) {
    if (config.flag("thresholding", false)) throw Error("scheduler config thresholding is not supported by sdrt-cpp");
    if (prediction_ != "epsilon" && prediction_ != "v_prediction" && prediction_ != "sample") {
      throw Error("prediction_type " + quote(prediction_) + " is not supported by DDIM");
    }
  }

  void set_timesteps(int steps) override {
    if (steps > train_.steps) {
      throw Error("steps " + std::to_string(steps) + " is over the scheduler's " + std::to_string(train_.steps) +
                  " training timesteps");
    }
    steps_ = steps;
    timesteps_ = timestep_grid(config_.text("timestep_spacing", "leading"), steps, train_.steps,
                               static_cast<int>(config_.number("steps_offset", 0)), true);
  }

  std::vector<float> step(const std::vector<float>& model_output, int index, const std::vector<float>& sample,
                          int images, const std::function<std::vector<float>(int)>& noise) override {
    const int t = static_cast<int>(timesteps_.at(static_cast<size_t>(index)));
    const int prev = t - train_.steps / steps_;
    const float a = alpha(t), a_prev = alpha(prev), b = 1.0f - a;
    const float sa = std::sqrt(a), sb = std::sqrt(b);
    std::vector<float> x0(sample.size()), eps(sample.size());
    for (size_t i = 0; i < sample.size(); ++i) {
      if (prediction_ == "epsilon") {
        x0[i] = (sample[i] - sb * model_output[i]) / sa;
        eps[i] = model_output[i];
      } else if (prediction_ == "v_prediction") {
        x0[i] = sa * sample[i] - sb * model_output[i];
        eps[i] = sa * model_output[i] + sb * sample[i];
      } else {
        x0[i] = model_output[i];
        eps[i] = (sample[i] - sa * x0[i]) / sb;
      }
    }
    if (config_.flag("clip_sample", true)) {
      const float range = f32(config_.number("clip_sample_range", 1.0));
      for (auto& v : x0) v = std::clamp(v, -range, range);
    }
    const float b_prev = 1.0f - a_prev;
    const float variance = (b_prev / b) * (1.0f - a / a_prev);
    const float std_dev = f32(eta_) * std::sqrt(variance);
    const float direction = std::sqrt(1.0f - a_prev - std_dev * std_dev);
    const float sa_prev = std::sqrt(a_prev);
    std::vector<float> out(sample.size());
    for (size_t i = 0; i < sample.size(); ++i) out[i] = sa_prev * x0[i] + direction * eps[i];
    if (eta_ > 0) {
      const size_t per_image = sample.size() / static_cast<size_t>(images);
      for (int image = 0; image < images; ++image) {
        const std::vector<float> z = noise(image);
        for (size_t i = 0; i < per_image; ++i) {
          float& v = out[static_cast<size_t>(image) * per_image + i];
          v = v + std_dev * z[i];
        }
      }
    }
    return out;
  }

 private:
  double eta_;
};

class PlmsSampler : public AlphaSampler {
 public:
  explicit PlmsSampler(const SchedulerConfig& config) : AlphaSampler(config, false) {
    if (prediction_ != "epsilon" && prediction_ != "v_prediction") {
      throw Error("prediction_type " + quote(prediction_) + " is not supported by PLMS");
    }
  }

  void set_timesteps(int steps) override {
    steps_ = steps;
    std::vector<double> grid = timestep_grid(config_.text("timestep_spacing", "leading"), steps, train_.steps,
                                             static_cast<int>(config_.number("steps_offset", 0)), true);
    std::reverse(grid.begin(), grid.end());  // ascending, as PNDM keeps it
    // skip_prk_steps: the grid with its second-to-last timestep repeated, descending
    std::vector<double> plms(grid.begin(), grid.end() - 1);
    if (grid.size() >= 2) plms.push_back(grid[grid.size() - 2]);
    plms.push_back(grid.back());
    std::reverse(plms.begin(), plms.end());
    timesteps_ = plms;
    ets_.clear();
    counter_ = 0;
  }

  std::vector<float> step(const std::vector<float>& model_output, int index, const std::vector<float>& sample,
                          int, const std::function<std::vector<float>(int)>&) override {
    int timestep = static_cast<int>(timesteps_.at(static_cast<size_t>(index)));
    int prev = timestep - train_.steps / steps_;
    if (counter_ != 1) {
      if (ets_.size() > 3) ets_.erase(ets_.begin(), ets_.end() - 3);
      ets_.push_back(model_output);
    } else {
      prev = timestep;
      timestep = timestep + train_.steps / steps_;
    }
    std::vector<float> out_model(sample.size());
    std::vector<float> x = sample;
    const size_t n = sample.size();
    if (ets_.size() == 1 && counter_ == 0) {
      out_model = model_output;
      cur_sample_ = sample;
    } else if (ets_.size() == 1 && counter_ == 1) {
      for (size_t i = 0; i < n; ++i) out_model[i] = (model_output[i] + ets_.back()[i]) / 2.0f;
      x = cur_sample_;
      cur_sample_.clear();
    } else if (ets_.size() == 2) {
      const auto &e1 = ets_[1], &e2 = ets_[0];
      for (size_t i = 0; i < n; ++i) out_model[i] = (3.0f * e1[i] - e2[i]) / 2.0f;
    } else if (ets_.size() == 3) {
      const auto &e1 = ets_[2], &e2 = ets_[1], &e3 = ets_[0];
      for (size_t i = 0; i < n; ++i) out_model[i] = (23.0f * e1[i] - 16.0f * e2[i] + 5.0f * e3[i]) / 12.0f;
    } else {
      const auto &e1 = ets_[3], &e2 = ets_[2], &e3 = ets_[1], &e4 = ets_[0];
      const float k = f32(1.0 / 24);
      for (size_t i = 0; i < n; ++i) {
        out_model[i] = k * (55.0f * e1[i] - 59.0f * e2[i] + 37.0f * e3[i] - 9.0f * e4[i]);
      }
    }
    ++counter_;
    return previous(x, timestep, prev, out_model);
  }

 private:
  std::vector<float> previous(const std::vector<float>& sample, int timestep, int prev, std::vector<float> model) const {
    const float a = alpha(timestep), a_prev = alpha(prev);
    const float b = 1.0f - a, b_prev = 1.0f - a_prev;
    if (prediction_ == "v_prediction") {
      const float sa = std::sqrt(a), sb = std::sqrt(b);
      for (size_t i = 0; i < model.size(); ++i) model[i] = sa * model[i] + sb * sample[i];
    }
    const float sample_coeff = std::sqrt(a_prev / a);
    const float denom = a * std::sqrt(b_prev) + std::sqrt(a * b * a_prev);
    const float diff = a_prev - a;
    std::vector<float> out(sample.size());
    for (size_t i = 0; i < sample.size(); ++i) out[i] = sample_coeff * sample[i] - (diff * model[i]) / denom;
    return out;
  }

  std::vector<std::vector<float>> ets_;
  std::vector<float> cur_sample_;
  int counter_ = 0;
};

// ------------------------------------------------------------------------------------------------ DPM++ 2M

class DpmSolverSampler : public Sampler {
 public:
  DpmSolverSampler(const SchedulerConfig& config, bool karras_sigmas)
      : config_(config), train_(training_schedule(config)), karras_(karras_sigmas) {
    prediction_ = config.text("prediction_type", "epsilon");
    if (prediction_ != "epsilon" && prediction_ != "v_prediction" && prediction_ != "sample") {
      throw Error("prediction_type " + quote(prediction_) + " is not supported by DPM++");
    }
    if (config.flag("thresholding", false)) throw Error("scheduler config thresholding is not supported by sdrt-cpp");
    for (const char* key : {"use_lu_lambdas", "use_flow_sigmas", "use_dynamic_shifting"}) {
      if (config.flag(key, false)) throw Error(std::string("scheduler config ") + key + " is not supported by sdrt-cpp");
    }
    if (config.has("variance_type")) throw Error("scheduler config variance_type (learned variance) is not supported");
  }

  void set_timesteps(int steps) override {
    const int train = train_.steps;
    // lambda_min_clipped: the last timestep whose log-SNR is at least the clip (all of them by default)
    const double clip = config_.number("lambda_min_clipped", -std::numeric_limits<double>::infinity());
    int clipped = 0;
    for (int i = train - 1; i >= 0; --i) {
      const float a = train_.alphas_cumprod[static_cast<size_t>(i)];
      const float lambda = std::log(std::sqrt(a)) - std::log(std::sqrt(1.0f - a));
      if (static_cast<double>(lambda) < clip) ++clipped;
      else break;
    }
    const int last = train - clipped;
    const std::string spacing = config_.text("timestep_spacing", "linspace");
    const int offset = static_cast<int>(config_.number("steps_offset", 0));
    std::vector<double> grid;
    if (spacing == "linspace") {
      std::vector<double> v = np_linspace(0, last - 1, steps + 1);
      for (int i = steps; i >= 1; --i) grid.push_back(np_round(v[static_cast<size_t>(i)]));
    } else if (spacing == "leading") {
      const int ratio = last / (steps + 1);
      for (int i = steps; i >= 1; --i) grid.push_back(static_cast<double>(i * ratio + offset));
    } else if (spacing == "trailing") {
      for (double v : np_arange(last, 0, -static_cast<double>(train) / steps)) grid.push_back(np_round(v) - 1);
    } else {
      throw Error("scheduler config timestep_spacing " + quote(spacing) + " is not one of linspace, leading, trailing");
    }
    const std::vector<float> base = training_sigmas(train_);
    std::vector<double> sigmas;
    if (karras_) {
      std::vector<float> log_sigmas;
      for (float s : base) log_sigmas.push_back(std::log(s));
      sigmas = karras(static_cast<double>(base.front()), static_cast<double>(base.back()), steps);
      grid.clear();
      for (double s : sigmas) {
        const double t = sigma_to_t(s, log_sigmas);
        grid.push_back(config_.text("beta_schedule", "linear") != "squaredcos_cap_v2" ? np_round(t) : t);
      }
    } else {
      std::vector<double> base64(base.begin(), base.end());
      for (double t : grid) sigmas.push_back(np_interp(t, base64));
    }
    const std::string final_type = config_.text("final_sigmas_type", "zero");
    double final_sigma = 0;
    if (final_type == "sigma_min") {
      final_sigma = std::sqrt((1.0f - train_.alphas_cumprod[0]) / train_.alphas_cumprod[0]);
    } else if (final_type != "zero") {
      throw Error("scheduler config final_sigmas_type " + quote(final_type) + " is not one of zero, sigma_min");
    }
    sigmas.push_back(final_sigma);
    timesteps_.clear();
    for (double t : grid) timesteps_.push_back(static_cast<double>(static_cast<int64_t>(t)));  // int64 timesteps
    sigmas_.clear();
    for (double s : sigmas) sigmas_.push_back(static_cast<double>(f32(s)));
    outputs_.clear();
    lower_order_nums_ = 0;
    step_index_ = -1;
  }

  double init_noise_sigma() const override { return 1.0; }

  std::vector<float> scale_model_input(const std::vector<float>& sample, int) const override { return sample; }

  std::vector<float> step(const std::vector<float>& model_output, int index, const std::vector<float>& sample, int,
                          const std::function<std::vector<float>(int)>&) override {
    const int steps = static_cast<int>(timesteps_.size());
    const bool final_zero = config_.text("final_sigmas_type", "zero") == "zero";
    const bool lower_final_cfg = config_.flag("lower_order_final", true);
    const bool lower_order_final = index == steps - 1 && (config_.flag("euler_at_final", false) ||
                                                          (lower_final_cfg && steps < 15) || final_zero);
    const bool lower_order_second = index == steps - 2 && lower_final_cfg && steps < 15;
    const int order = static_cast<int>(config_.number("solver_order", 2));
    // the model output as a data prediction (dpmsolver++)
    const auto [alpha_s0, sigma_s0] = alpha_sigma(sigma_at(index));
    std::vector<float> x0(sample.size());
    for (size_t i = 0; i < sample.size(); ++i) {
      if (prediction_ == "epsilon") x0[i] = (sample[i] - sigma_s0 * model_output[i]) / alpha_s0;
      else if (prediction_ == "v_prediction") x0[i] = alpha_s0 * sample[i] - sigma_s0 * model_output[i];
      else x0[i] = model_output[i];
    }
    outputs_.push_back(x0);
    if (outputs_.size() > 2) outputs_.erase(outputs_.begin());
    const auto [alpha_t, sigma_t] = alpha_sigma(sigma_at(index + 1));
    const float lambda_t = std::log(alpha_t) - std::log(sigma_t);
    const float lambda_s0 = std::log(alpha_s0) - std::log(sigma_s0);
    const float h = lambda_t - lambda_s0;
    const float ratio = sigma_t / sigma_s0;
    const float coeff = alpha_t * (std::exp(-h) - 1.0f);
    std::vector<float> out(sample.size());
    if (order == 1 || lower_order_nums_ < 1 || lower_order_final) {
      for (size_t i = 0; i < sample.size(); ++i) out[i] = ratio * sample[i] - coeff * x0[i];
    } else {
      (void)lower_order_second;  // order 2: the second-order update is the highest there is
      const auto [alpha_s1, sigma_s1] = alpha_sigma(sigma_at(index - 1));
      const float lambda_s1 = std::log(alpha_s1) - std::log(sigma_s1);
      const float h0 = lambda_s0 - lambda_s1;
      const float r0 = h0 / h;
      const float inv_r0 = 1.0f / r0;
      const float half_coeff = 0.5f * coeff;
      const std::vector<float>& m0 = outputs_[1];
      const std::vector<float>& m1 = outputs_[0];
      for (size_t i = 0; i < sample.size(); ++i) {
        const float d1 = inv_r0 * (m0[i] - m1[i]);
        out[i] = ratio * sample[i] - coeff * m0[i] - half_coeff * d1;
      }
    }
    if (lower_order_nums_ < order) ++lower_order_nums_;
    return out;
  }

  std::vector<float> add_noise(const std::vector<float>& original, const std::vector<float>& noise,
                               int index) const override {
    const auto [alpha_t, sigma_t] = alpha_sigma(sigma_at(index));
    std::vector<float> out(original.size());
    for (size_t i = 0; i < original.size(); ++i) out[i] = alpha_t * original[i] + sigma_t * noise[i];
    return out;
  }

 private:
  float sigma_at(int index) const { return f32(sigmas_.at(static_cast<size_t>(index))); }

  static std::pair<float, float> alpha_sigma(float sigma) {
    const float alpha = 1.0f / std::sqrt(sigma * sigma + 1.0f);
    return {alpha, sigma * alpha};
  }

  SchedulerConfig config_;
  Training train_;
  bool karras_;
  std::string prediction_;
  std::vector<std::vector<float>> outputs_;
  int lower_order_nums_ = 0;
  int step_index_ = -1;
};

// ------------------------------------------------------------------------------------------------ names

struct SamplerName {
  const char* name;
  const char* label;  // the web UI's
  const char* scheduler_class;
};

// sdrt's sampler table (sdrt.runtime.schedulers.SAMPLERS), the entries this library implements, in its order
const SamplerName kSamplers[] = {
    {"ddim", "DDIM", "DDIMScheduler"},
    {"pndm", "PLMS", "PNDMScheduler"},
    {"euler", "Euler", "EulerDiscreteScheduler"},
    {"euler_a", "Euler a", "EulerAncestralDiscreteScheduler"},
    {"dpmpp_2m", "DPM++ 2M", "DPMSolverMultistepScheduler"},
    {"dpmpp_2m_karras", "DPM++ 2M Karras", "DPMSolverMultistepScheduler"},
};

// Every sigma spacing a named sampler switches off unless its name asks for one (sdrt's _stated_options).
SchedulerConfig with_stated(SchedulerConfig config, bool karras_sigmas) {
  for (const char* key : {"use_karras_sigmas", "use_exponential_sigmas", "use_beta_sigmas"}) {
    ConfigValue v;
    v.kind = ConfigValue::Kind::Bool;
    v.flag = std::string(key) == "use_karras_sigmas" && karras_sigmas;
    config.values[key] = v;
  }
  return config;
}

void set_text(SchedulerConfig& config, const char* key, const char* value) {
  ConfigValue v;
  v.kind = ConfigValue::Kind::String;
  v.text = value;
  config.values[key] = v;
}

void set_number(SchedulerConfig& config, const char* key, double value) {
  ConfigValue v;
  v.kind = ConfigValue::Kind::Number;
  v.number = value;
  config.values[key] = v;
}

std::unique_ptr<Sampler> build(const std::string& name, const SchedulerConfig& config, double eta) {
  if (config.flag("use_exponential_sigmas", false) || config.flag("use_beta_sigmas", false)) {
    throw Error("scheduler config use_exponential_sigmas / use_beta_sigmas are not supported by sdrt-cpp");
  }
  const bool karras_sigmas = config.flag("use_karras_sigmas", false);
  if (name == "ddim") return std::make_unique<DdimSampler>(config, eta);
  if (name == "pndm") {
    if (!config.flag("skip_prk_steps", false)) throw Error("PNDM with its PRK warm-up steps is not supported by sdrt-cpp");
    return std::make_unique<PlmsSampler>(config);
  }
  if (name == "euler" || name == "euler_a") return std::make_unique<EulerSampler>(config, name == "euler_a", karras_sigmas);
  if (name == "dpmpp_2m" || name == "dpmpp_2m_karras") {
    if (config.text("algorithm_type", "dpmsolver++") != "dpmsolver++" || config.number("solver_order", 2) != 2 ||
        config.text("solver_type", "midpoint") != "midpoint") {
      throw Error("DPMSolverMultistepScheduler with algorithm_type " + config.text("algorithm_type", "dpmsolver++") +
                  ", solver_order " + format_g(config.number("solver_order", 2)) + ", solver_type " +
                  config.text("solver_type", "midpoint") + " is not supported by sdrt-cpp (it runs DPM++ 2M midpoint)");
    }
    return std::make_unique<DpmSolverSampler>(config, karras_sigmas);
  }
  throw std::logic_error("no sampler " + name);
}

}  // namespace

std::vector<std::string> sampler_names() {
  std::vector<std::string> names;
  for (const auto& s : kSamplers) names.emplace_back(s.name);
  return names;
}

std::unique_ptr<Sampler> make_sampler(const std::string& requested, const SchedulerConfig& config, double eta) {
  std::unique_ptr<Sampler> sampler;
  std::string name, label;
  const std::string key = lower_ascii(requested);
  if (requested.empty()) {  // the model's own scheduler, with its own config
    const std::string cls = config.class_name();
    for (const auto& s : kSamplers) {
      if (cls != s.scheduler_class) continue;
      const bool karras_cfg = config.flag("use_karras_sigmas", false);
      const bool karras_name = std::string(s.name).find("karras") != std::string::npos;
      if (std::string(s.scheduler_class) == "DPMSolverMultistepScheduler" && karras_cfg != karras_name) continue;
      if (std::string(s.name) == "pndm" && !config.flag("skip_prk_steps", false)) continue;
      name = s.name;
      label = s.label;
      break;
    }
    if (name.empty()) {
      throw Error("the model's own scheduler " + quote(cls) + " (with its config) is not one sdrt-cpp runs; choose " +
                  "--sampler " + join(sampler_names(), ", "));
    }
    sampler = build(name, config, eta);
    // a model's own Euler with Karras sigmas is labelled as the web UI labels it
    if (name == "euler" && config.flag("use_karras_sigmas", false)) label = "Euler Karras";
  } else {
    for (const auto& s : kSamplers) {
      if (key == s.name || key == lower_ascii(s.label)) {
        name = s.name;
        label = s.label;
      }
    }
    if (name.empty()) {
      std::vector<std::string> labels;
      for (const auto& s : kSamplers) labels.push_back(quote(s.label));
      throw Error("unknown sampler " + quote(requested) + "; known: " + join(sampler_names(), ", ") +
                  "; or their web UI labels: " + join(labels, ", "));
    }
    SchedulerConfig stated = with_stated(config, name == "dpmpp_2m_karras");
    if (name == "pndm") {
      ConfigValue v;
      v.kind = ConfigValue::Kind::Bool;
      v.flag = true;
      stated.values["skip_prk_steps"] = v;
    }
    if (name == "dpmpp_2m" || name == "dpmpp_2m_karras") {
      set_text(stated, "algorithm_type", "dpmsolver++");
      set_number(stated, "solver_order", 2);
    }
    sampler = build(name, stated, eta);
  }
  sampler->name_ = name;
  sampler->label_ = label;
  return sampler;
}

}  // namespace sdrt
