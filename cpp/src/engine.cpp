// The engine interface's registry and the shape checks every engine call goes through.

#include <mutex>
#include <regex>

#include "sdrt/sdrt.hpp"
#include "strings.hpp"

namespace sdrt {

std::unique_ptr<Engine> make_openvino_engine(const EngineContext& ctx);  // openvino_engine.cpp

namespace {

std::map<std::string, EngineFactory>& registry() {
  static std::map<std::string, EngineFactory> backends{{"openvino", make_openvino_engine}};
  return backends;
}

std::mutex& registry_mutex() {
  static std::mutex m;
  return m;
}

}  // namespace

void register_backend(const std::string& name, EngineFactory factory) {
  std::lock_guard<std::mutex> lock(registry_mutex());
  registry()[name] = std::move(factory);
}

std::vector<std::string> backend_names() {
  std::lock_guard<std::mutex> lock(registry_mutex());
  std::vector<std::string> names;
  for (const auto& [name, factory] : registry()) names.push_back(name);
  return names;
}

std::unique_ptr<Engine> make_engine(const std::string& backend, const EngineContext& ctx) {
  EngineFactory factory;
  {
    std::lock_guard<std::mutex> lock(registry_mutex());
    auto it = registry().find(backend);
    if (it != registry().end()) factory = it->second;
  }
  if (!factory) throw Error("unknown backend " + quote(backend) + "; known: " + join(backend_names(), ", "));
  return factory(ctx);
}

Dim parse_dim(const std::string& dim) {
  static const std::regex integer(R"(^[0-9]+$)");
  static const std::regex expr(R"(^(?:([0-9]+)\*)?([a-z_][a-z0-9_]*)(?:/([0-9]+))?$)");
  auto number = [&](const std::string& digits, const char* what) {
    if (digits.size() > 9 || std::stoll(digits) < 1) {
      throw Error("dimension " + quote(dim) + " has " + what + " " + digits + "; it must be an integer 1..999999999");
    }
    return std::stoll(digits);
  };
  std::smatch m;
  if (std::regex_match(dim, m, integer)) return Dim{number(dim, "size"), "", 1};
  if (!std::regex_match(dim, m, expr)) {
    throw Error("dimension " + quote(dim) + " is not an integer, a symbol, 'N*symbol', 'symbol/N' or 'N*symbol/N'");
  }
  return Dim{m[1].matched ? number(m[1].str(), "factor") : 1, m[2].str(), m[3].matched ? number(m[3].str(), "divisor") : 1};
}

int64_t Dim::size(const std::map<std::string, int64_t>& values) const {
  if (symbol.empty()) return factor;
  auto it = values.find(symbol);
  if (it == values.end()) throw Error("no value for dimension " + symbol);
  return factor * ((it->second + divisor - 1) / divisor);
}

std::map<std::string, int64_t> resolve_shapes(const ComponentSpec& spec, const std::map<std::string, DimRange>& dims,
                                              const TensorMap& feeds) {
  for (const auto& [name, tensor] : feeds) {
    if (!spec.has_input(name)) throw Error(spec.name + " has no input " + quote(name));
  }
  std::map<std::string, int64_t> values;
  struct Divided {
    std::string where;
    Dim dim;
    int64_t size;
  };
  std::vector<Divided> divided;  // checked once the whole symbols are known
  for (const auto& input : spec.inputs) {
    auto it = feeds.find(input.name);
    if (it == feeds.end()) throw Error(spec.name + " input " + input.name + " is missing");
    const Tensor& t = it->second;
    if (t.dtype != input.dtype) {
      throw Error(spec.name + " input " + input.name + " must be " + dtype_name(input.dtype) + ", got " +
                  dtype_name(t.dtype));
    }
    if (t.shape.size() != input.shape.size()) {
      throw Error(spec.name + " input " + input.name + " must have rank " + std::to_string(input.shape.size()) +
                  ", got shape " + t.shape_text());
    }
    for (size_t axis = 0; axis < input.shape.size(); ++axis) {
      const Dim dim = parse_dim(input.shape[axis]);
      const int64_t size = t.shape[axis];
      const std::string where = spec.name + " input " + input.name + " axis " + std::to_string(axis);
      if (dim.symbol.empty()) {
        if (size != dim.factor) throw Error(where + " must be " + std::to_string(dim.factor) + ", got " + std::to_string(size));
        continue;
      }
      if (dim.divisor != 1) {
        divided.push_back({where, dim, size});
        continue;
      }
      const std::string& symbol = dim.symbol;
      if (size % dim.factor) throw Error(where + " is " + std::to_string(size) + ", not a multiple of " + std::to_string(dim.factor));
      const int64_t value = size / dim.factor;
      auto [at, inserted] = values.emplace(symbol, value);
      if (!inserted && at->second != value) {
        throw Error(where + " gives " + symbol + "=" + std::to_string(value) + ", but another input gives " +
                    std::to_string(at->second));
      }
      auto range = dims.find(symbol);
      if (range == dims.end()) throw Error("the manifest has no range for dimension " + symbol);
      if (value < range->second.min || value > range->second.max) {
        throw Error(spec.name + " input " + input.name + ": " + symbol + " " + std::to_string(value) +
                    " is outside the engine's profile " + std::to_string(range->second.min) + ".." +
                    std::to_string(range->second.max));
      }
    }
  }
  for (const auto& d : divided) {
    if (!values.count(d.dim.symbol)) {
      throw Error(d.where + " divides " + d.dim.symbol + ", which no input gives whole");
    }
    const int64_t expected = d.dim.size(values);
    if (d.size != expected) {
      throw Error(d.where + " must be " + std::to_string(expected) + " (" + std::to_string(d.dim.factor) + "*ceil(" +
                  d.dim.symbol + "/" + std::to_string(d.dim.divisor) + ")), got " + std::to_string(d.size));
    }
  }
  return values;
}

std::vector<int64_t> concrete_shape(const TensorSpec& spec, const std::map<std::string, int64_t>& values) {
  std::vector<int64_t> shape;
  for (const auto& dim : spec.shape) {
    const Dim d = parse_dim(dim);
    if (!d.symbol.empty() && !values.count(d.symbol)) throw Error(spec.name + ": no value for dimension " + d.symbol);
    shape.push_back(d.size(values));
  }
  return shape;
}

}  // namespace sdrt
