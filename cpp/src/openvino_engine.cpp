// The OpenVINO backend: the artifact's own ONNX graph on OpenVINO's CPU plugin, compiled as sdrt's Python OpenVINO
// backend compiles it (sdrt/engines/openvino_backend.py): f32 inference precision (never bf16), the latency hint, the
// networks that run at a few shapes per generation (denoiser, VAE halves) reshaped and compiled for each call's
// static shapes (at most two kept, least recently used dropped), a text encoder compiled once with dynamic shapes.

#include <list>
#include <openvino/frontend/manager.hpp>
#include <openvino/openvino.hpp>

#include "sdrt/sdrt.hpp"
#include "strings.hpp"

namespace sdrt {

namespace {

constexpr size_t kMaxCompiled = 2;  // static models kept per network: each holds its own copy of the weights

ov::Core& core() {
  static ov::Core instance = [] {
    ov::Core c;
    c.set_property("CPU", ov::hint::inference_precision(ov::element::f32));
    return c;
  }();
  return instance;
}

ov::element::Type element_type(DType dtype) { return dtype == DType::Float32 ? ov::element::f32 : ov::element::i32; }

class OpenVinoEngine : public Engine {
 public:
  explicit OpenVinoEngine(const EngineContext& ctx) : spec_(*ctx.spec) {
    for (const auto& [key, value] : ctx.options) {
      if (key == "cache_dir") {
        config_.emplace(ov::cache_dir(value));
      } else if (key == "threads") {
        int threads = 0;
        try {
          threads = std::stoi(value);
        } catch (const std::exception&) {
          threads = -1;
        }
        if (threads < 1) throw Error("openvino option threads " + quote(value) + " is not a positive integer");
        config_.emplace(ov::inference_num_threads(threads));
      } else {
        throw Error("unknown openvino option " + quote(key) + "; known: cache_dir, threads");
      }
    }
    const std::filesystem::path file = ctx.artifact / spec_.onnx;
    try {  // the ONNX frontend itself: OpenVINO's format guessing would try every other frontend on a damaged file
      static ov::frontend::FrontEndManager frontends;
      const ov::frontend::FrontEnd::Ptr onnx = frontends.load_by_framework("onnx");
      model_ = onnx->convert(onnx->load(file.string()));
    } catch (const std::exception& exc) {
      throw Error("cannot read " + spec_.name + "'s ONNX graph " + file.string() + ": it is not a valid ONNX model (" +
                  last_line(exc.what()) + "); re-export the model");
    }
    for (const auto& input : spec_.inputs) check_port(model_->inputs(), input.name, "input");
    for (const auto& output : spec_.outputs) check_port(model_->outputs(), output.name, "output");
    static_ = spec_.role == "denoiser" || spec_.role == "vae_decoder" || spec_.role == "vae_encoder";
    if (!static_) compiled({});  // one dynamic model: compile it now, not inside the first request
  }

  TensorMap run(const TensorMap& feeds) override {
    std::map<std::string, ov::Shape> shapes;
    if (static_) {
      for (const auto& input : spec_.inputs) {
        const auto& shape = feeds.at(input.name).shape;
        shapes[input.name] = ov::Shape(shape.begin(), shape.end());
      }
    }
    Compiled& c = compiled(shapes);
    for (const auto& input : spec_.inputs) {
      const Tensor& t = feeds.at(input.name);
      const ov::Shape shape(t.shape.begin(), t.shape.end());
      void* data = t.dtype == DType::Float32 ? const_cast<float*>(t.data.data()) : static_cast<void*>(const_cast<int32_t*>(t.ints.data()));
      c.request.set_tensor(input.name, ov::Tensor(element_type(t.dtype), shape, data));
    }
    try {
      c.request.infer();
    } catch (const std::exception& exc) {
      throw Error(spec_.name + " failed on OpenVINO: " + last_line(exc.what()));
    }
    TensorMap out;
    for (const auto& output : spec_.outputs) {
      const ov::Tensor result = c.request.get_tensor(output.name);
      Tensor t;
      t.dtype = output.dtype;
      for (size_t d : result.get_shape()) t.shape.push_back(static_cast<int64_t>(d));
      if (output.dtype == DType::Float32) {
        const float* p = result.data<const float>();
        t.data.assign(p, p + result.get_size());
      } else {
        const int32_t* p = result.data<const int32_t>();
        t.ints.assign(p, p + result.get_size());
      }
      out[output.name] = std::move(t);
    }
    return out;
  }

 private:
  struct Compiled {
    std::map<std::string, ov::Shape> shapes;
    ov::CompiledModel model;
    ov::InferRequest request;
  };

  // OpenVINO's messages start with where they were raised; the last line says what went wrong
  static std::string last_line(const std::string& text) {
    size_t end = text.find_last_not_of(" \n");
    if (end == std::string::npos) return text;
    const size_t begin = text.find_last_of('\n', end);
    return text.substr(begin == std::string::npos ? 0 : begin + 1, end + 1 - (begin == std::string::npos ? 0 : begin + 1));
  }

  void check_port(const std::vector<ov::Output<ov::Node>>& ports, const std::string& name, const char* what) const {
    for (const auto& port : ports) {
      if (port.get_names().count(name)) return;
    }
    throw Error(spec_.name + "'s ONNX graph has no " + what + " " + quote(name) + ", which its manifest names");
  }

  Compiled& compiled(const std::map<std::string, ov::Shape>& shapes) {
    for (auto it = cache_.begin(); it != cache_.end(); ++it) {
      if (it->shapes == shapes) {
        cache_.splice(cache_.begin(), cache_, it);  // most recently used first
        return cache_.front();
      }
    }
    std::shared_ptr<ov::Model> model = model_;
    if (!shapes.empty()) {
      model = model_->clone();
      std::map<std::string, ov::PartialShape> partial;
      for (const auto& [name, shape] : shapes) partial[name] = ov::PartialShape(shape);
      model->reshape(partial);
    }
    ov::CompiledModel compiled;
    try {
      compiled = core().compile_model(model, "CPU", config_);
    } catch (const std::exception& exc) {
      throw Error("OpenVINO cannot compile " + spec_.name + ": " + last_line(exc.what()));
    }
    cache_.push_front({shapes, compiled, compiled.create_infer_request()});
    while (cache_.size() > kMaxCompiled) cache_.pop_back();
    return cache_.front();
  }

  const ComponentSpec spec_;
  // the Python backend's settings: the latency hint (f32 precision is the core's), plus the caller's options
  ov::AnyMap config_{ov::hint::performance_mode(ov::hint::PerformanceMode::LATENCY)};
  std::shared_ptr<ov::Model> model_;
  bool static_ = false;
  std::list<Compiled> cache_;
};

}  // namespace

std::unique_ptr<Engine> make_openvino_engine(const EngineContext& ctx) { return std::make_unique<OpenVinoEngine>(ctx); }

}  // namespace sdrt
