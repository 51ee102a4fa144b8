// sdrt-cpp-inspect: the library's building blocks on the command line, JSON in and out, for the tests that compare
// them with their Python references (torch's generator, transformers' CLIPTokenizer, sdrt's prompt parser,
// diffusers' schedules, the manifest's JSON Schema). Not installed; built with the tests.

#include <cstdio>
#include <fstream>
#include <iostream>
#include <sstream>

#include "json.hpp"
#include "sdrt/sdrt.hpp"

namespace {

std::string read_stdin() {
  std::stringstream buffer;
  buffer << std::cin.rdbuf();
  return buffer.str();
}

std::string json_string(const std::string& s) { return sdrt::json::Value::string(s).dump(); }

std::string json_float(double v) {
  char buf[40];
  std::snprintf(buf, sizeof buf, "%.17g", v);
  return buf;
}

template <typename T, typename F>
std::string json_list(const std::vector<T>& items, F format) {
  std::string out = "[";
  for (size_t i = 0; i < items.size(); ++i) out += (i ? ", " : "") + format(items[i]);
  return out + "]";
}

std::vector<std::string> texts_from_stdin() {
  std::vector<std::string> texts;
  const sdrt::json::Value doc = sdrt::json::parse(read_stdin(), "stdin");
  for (const auto& v : doc.items()) texts.push_back(v.as_string());
  return texts;
}

// randn KERNEL SEED COUNT...: successive torch.randn(COUNT) draws of one generator
int randn(const std::vector<std::string>& args) {
  const auto kernel = args.at(0) == "avx2"      ? sdrt::TorchGenerator::Kernel::Avx2
                      : args.at(0) == "default" ? sdrt::TorchGenerator::Kernel::Default
                                                : sdrt::TorchGenerator::native_kernel();
  sdrt::TorchGenerator g(std::stoull(args.at(1)), kernel);
  std::vector<std::string> draws;
  for (size_t i = 2; i < args.size(); ++i) {
    draws.push_back(json_list(g.randn(std::stoull(args[i])), [](float v) { return json_float(v); }));
  }
  std::cout << "[" << [&] {
    std::string s;
    for (size_t i = 0; i < draws.size(); ++i) s += (i ? ", " : "") + draws[i];
    return s;
  }() << "]\n";
  return 0;
}

// tokenize DIR < ["text", ...]: ids of each text (no begin or end token)
int tokenize(const std::vector<std::string>& args) {
  const sdrt::Tokenizer tokenizer = sdrt::Tokenizer::load(args.at(0));
  std::vector<std::string> rows;
  for (const auto& text : texts_from_stdin()) {
    rows.push_back(json_list(tokenizer.encode(text), [](int32_t id) { return std::to_string(id); }));
  }
  std::cout << json_list(rows, [](const std::string& s) { return s; }) << "\n";
  return 0;
}

// prompts DIR < ["prompt", ...]: each prompt's text-encoder rows (ids, weights) and whether it is scheduled
int prompts(const std::vector<std::string>& args) {
  const sdrt::Tokenizer tokenizer = sdrt::Tokenizer::load(args.at(0));
  std::vector<std::string> rows;
  for (const auto& text : texts_from_stdin()) {
    const sdrt::TokenizedPrompt p = sdrt::tokenize_prompt(tokenizer, text);
    const auto fragments = sdrt::parse_emphasis(text);
    rows.push_back(
        "{\"ids\": " + json_list(p.ids, [](const std::vector<int32_t>& ids) { return json_list(ids, [](int32_t id) { return std::to_string(id); }); }) +
        ", \"weights\": " + json_list(p.weights, [](const std::vector<float>& w) { return json_list(w, [](float v) { return json_float(v); }); }) +
        ", \"num_tokens\": " + std::to_string(p.num_tokens) +
        ", \"fragments\": " + json_list(fragments, [](const sdrt::Fragment& f) {
          return "[" + json_string(f.text) + ", " + json_float(f.weight) + ", " + (f.chunk_break ? "true" : "false") + "]";
        }) +
        ", \"scheduled\": " + (sdrt::has_prompt_schedule(text) ? "true" : "false") + "}");
  }
  std::cout << json_list(rows, [](const std::string& s) { return s; }) << "\n";
  return 0;
}

// schedule < [[CONFIG, SAMPLER, STEPS], ...]: each sampler's timesteps, sigmas, initial sigma and label ("" = the
// model's own), or {"error": MESSAGE} where the library refuses the config
int schedule(const std::vector<std::string>&) {
  const sdrt::json::Value cases = sdrt::json::parse(read_stdin(), "stdin");
  std::vector<std::string> out;
  for (const auto& c : cases.items()) {
    try {
      const sdrt::SchedulerConfig config = sdrt::SchedulerConfig::load(c.items().at(0).as_string());
      auto sampler = sdrt::make_sampler(c.items().at(1).as_string(), config);
      sampler->set_timesteps(static_cast<int>(c.items().at(2).as_int()));
      out.push_back("{\"name\": " + json_string(sampler->name()) + ", \"label\": " + json_string(sampler->label()) +
                    ", \"timesteps\": " + json_list(sampler->timesteps(), json_float) +
                    ", \"sigmas\": " + json_list(sampler->sigmas(), json_float) +
                    ", \"init_noise_sigma\": " + json_float(sampler->init_noise_sigma()) + "}");
    } catch (const sdrt::Error& e) {
      out.push_back("{\"error\": " + json_string(e.what()) + "}");
    }
  }
  std::cout << json_list(out, [](const std::string& s) { return s; }) << "\n";
  return 0;
}

// manifest FILE_OR_ARTIFACT [SYMBOL=VALUE...]: validate a manifest.json (a directory: with its files); prints the
// family, the component count, each component's residual names and, given symbol values, the shape of every tensor
// whose symbols all have one
int manifest(const std::vector<std::string>& args) {
  const std::filesystem::path path = args.at(0);
  sdrt::Manifest m;
  if (std::filesystem::is_directory(path)) {
    m = sdrt::read_manifest(path);
  } else {
    std::ifstream in(path, std::ios::binary);
    std::stringstream text;
    text << in.rdbuf();
    m = sdrt::parse_manifest(text.str(), path.string());
  }
  std::map<std::string, int64_t> values;
  for (size_t i = 1; i < args.size(); ++i) {
    const size_t eq = args[i].find('=');
    values[args[i].substr(0, eq)] = std::stoll(args[i].substr(eq + 1));
  }
  std::vector<std::string> residuals, shapes;
  for (const auto& [name, c] : m.components) {
    residuals.push_back(json_string(name) + ": " + json_list(c.names("residuals"), json_string));
    std::vector<std::string> tensors;
    for (const auto* list : {&c.inputs, &c.outputs}) {
      for (const auto& t : *list) {
        bool known = true;
        for (const auto& dim : t.shape) {
          const sdrt::Dim d = sdrt::parse_dim(dim);
          known = known && (d.symbol.empty() || values.count(d.symbol));
        }
        if (!known) continue;
        tensors.push_back(json_string(t.name) + ": " +
                          json_list(sdrt::concrete_shape(t, values), [](int64_t v) { return std::to_string(v); }));
      }
    }
    shapes.push_back(json_string(name) + ": {" + [&] {
      std::string s;
      for (size_t i = 0; i < tensors.size(); ++i) s += (i ? ", " : "") + tensors[i];
      return s;
    }() + "}");
  }
  auto object = [](const std::vector<std::string>& members) {
    std::string s = "{";
    for (size_t i = 0; i < members.size(); ++i) s += (i ? ", " : "") + members[i];
    return s + "}";
  };
  std::cout << "{\"family\": " << json_string(m.family) << ", \"components\": " << m.components.size()
            << ", \"fits\": " << json_list(m.controlnet_fits, json_string) << ", \"residuals\": " << object(residuals)
            << ", \"shapes\": " << object(shapes) << "}\n";
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  const std::vector<std::string> args(argv + 1, argv + argc);
  if (args.empty()) {
    std::cerr << "usage: sdrt-cpp-inspect randn|tokenize|prompts|schedule|manifest ARGS...\n";
    return 2;
  }
  const std::vector<std::string> rest(args.begin() + 1, args.end());
  try {
    if (args[0] == "randn") return randn(rest);
    if (args[0] == "tokenize") return tokenize(rest);
    if (args[0] == "prompts") return prompts(rest);
    if (args[0] == "schedule") return schedule(rest);
    if (args[0] == "manifest") return manifest(rest);
    std::cerr << "unknown command " << args[0] << "\n";
    return 2;
  } catch (const sdrt::Error& e) {
    std::cerr << "error: " << e.what() << "\n";
    return 2;
  } catch (const std::exception& e) {
    std::cerr << "failed: " << e.what() << "\n";
    return 1;
  }
}
