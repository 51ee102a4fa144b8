// manifest.json read and validated: the artifact contract (sdrt.manifest, format version 5). Every check names the
// field by its path in the file ("components.unet.inputs[0].dtype") and what is allowed.

#include <algorithm>
#include <fstream>
#include <regex>
#include <set>
#include <sstream>

#include "json.hpp"
#include "sdrt/sdrt.hpp"
#include "strings.hpp"

namespace fs = std::filesystem;

namespace sdrt {

namespace {

// The kind of a manifest extra (sdrt.families.base.Family.extras_defaults gives each one's type).
enum class Extra { Bool, PositiveInt, BaseFamilies };

// What each family's artifact holds (sdrt.families): its networks, support directories and manifest extras.
struct FamilyShape {
  const char* name;
  std::vector<std::string> networks;
  std::vector<std::string> support;
  std::vector<std::pair<std::string, Extra>> extras;
};

const std::vector<std::string> kBaseFamilies = {"sd1", "sd2", "sdxl"};  // what a ControlNet may fit

const std::vector<FamilyShape>& families() {
  static const std::vector<FamilyShape> table = {
      {"sd1", {"text_encoder", "unet", "vae_decoder", "vae_encoder"}, {"tokenizer", "scheduler"}, {}},
      {"sd2", {"text_encoder", "unet", "vae_decoder", "vae_encoder"}, {"tokenizer", "scheduler"}, {}},
      {"sdxl",
       {"text_encoder", "text_encoder_2", "unet", "vae_decoder", "vae_encoder"},
       {"tokenizer", "tokenizer_2", "scheduler"},
       {{"force_zeros_for_empty_prompt", Extra::Bool}, {"requires_aesthetics_score", Extra::Bool}}},
      {"sdxl_refiner",
       {"text_encoder_2", "unet", "vae_decoder", "vae_encoder"},
       {"tokenizer_2", "scheduler"},
       {{"force_zeros_for_empty_prompt", Extra::Bool}, {"requires_aesthetics_score", Extra::Bool}}},
      {"unclip",
       {"text_encoder", "image_encoder", "unet", "vae_decoder"},
       {"tokenizer", "feature_extractor", "image_normalizer", "image_noising_scheduler", "scheduler"},
       {}},
      // a ControlNet: one network, no tokenizer, scheduler or VAE of its own (it steers a base model's UNet)
      {"controlnet",
       {"controlnet"},
       {},
       {{"fits", Extra::BaseFamilies}, {"cross_attention_dim", Extra::PositiveInt}, {"global_pool_conditions", Extra::Bool}}},
  };
  return table;
}

const std::set<std::string> kRoles = {"text_encoder", "image_encoder", "denoiser", "controlnet", "vae_decoder", "vae_encoder"};
const std::vector<std::string> kDtypes = {"float32", "float16", "int32", "int64"};
const std::vector<std::string> kPredictionTypes = {"epsilon", "v_prediction", "sample"};
const std::vector<std::string> kRangeFields = {"max_batch", "min_size",        "max_size",     "opt_size",
                                               "opt_batch", "text_length", "max_text_chunks", "latent_factor"};

std::vector<std::string> sorted(std::vector<std::string> v) {
  std::sort(v.begin(), v.end());
  return v;
}

std::string list_text(const std::vector<std::string>& items) { return "[" + join(items, ", ") + "]"; }

class Reader {
 public:
  explicit Reader(std::string what) : what_(std::move(what)) {}

  [[noreturn]] void fail(const std::string& path, const std::string& message) const {
    throw Error(what_ + ": " + path + " " + message);
  }

  const json::Value& member(const json::Value& object, const std::string& path, const std::string& key) const {
    if (!object.has(key)) fail(path.empty() ? key : path + "." + key, "is missing");
    return object[key];
  }

  void expect(const json::Value& v, json::Value::Kind kind, const std::string& path) const {
    if (v.kind() != kind) fail(path, std::string("must be ") + json::kind_name(kind) + ", not " + v.dump());
  }

  const std::map<std::string, json::Value>& object(const json::Value& v, const std::string& path) const {
    expect(v, json::Value::Kind::Object, path);
    return v.members();
  }

  const std::vector<json::Value>& array(const json::Value& v, const std::string& path) const {
    expect(v, json::Value::Kind::Array, path);
    return v.items();
  }

  const std::string& string(const json::Value& v, const std::string& path) const {
    expect(v, json::Value::Kind::String, path);
    return v.as_string();
  }

  bool boolean(const json::Value& v, const std::string& path) const {
    expect(v, json::Value::Kind::Bool, path);
    return v.as_bool();
  }

  int64_t integer(const json::Value& v, const std::string& path) const {
    if (!v.is_integer()) fail(path, "must be an integer, not " + v.dump());
    return v.as_int();
  }

  std::string one_of(const json::Value& v, const std::string& path, const std::vector<std::string>& allowed) const {
    const std::string& s = string(v, path);
    if (std::find(allowed.begin(), allowed.end(), s) == allowed.end()) {
      fail(path, quote(s) + " is not one of " + join(allowed, ", "));
    }
    return s;
  }

 private:
  std::string what_;
};

TensorSpec read_tensor(const Reader& r, const json::Value& v, const std::string& path,
                       const std::map<std::string, DimRange>& dims) {
  r.object(v, path);
  TensorSpec t;
  t.name = r.string(r.member(v, path, "name"), path + ".name");
  const std::string dtype = r.one_of(r.member(v, path, "dtype"), path + ".dtype", kDtypes);
  t.type = dtype;
  t.dtype = dtype == "int32" ? DType::Int32 : DType::Float32;  // float16 and int64 IO: check_supported refuses them
  const auto& shape = r.array(r.member(v, path, "shape"), path + ".shape");
  for (size_t i = 0; i < shape.size(); ++i) {
    const std::string at = path + ".shape[" + std::to_string(i) + "]";
    if (shape[i].is_integer()) {
      if (shape[i].as_int() < 1) r.fail(at, "must be a positive integer, not " + shape[i].dump());
      t.shape.push_back(std::to_string(shape[i].as_int()));
      continue;
    }
    const std::string& dim = r.string(shape[i], at);
    Dim parsed;
    try {
      parsed = parse_dim(dim);
    } catch (const Error& e) {
      r.fail(at, e.what());
    }
    if (parsed.symbol.empty()) r.fail(at, quote(dim) + " is a size written as a string; write it as the integer " + dim);
    if (!dims.count(parsed.symbol)) r.fail(at, "names dimension " + quote(parsed.symbol) + ", which dims does not define");
    t.shape.push_back(dim);
  }
  return t;
}

}  // namespace

const TensorSpec* ComponentSpec::input(const std::string& input_name) const {
  for (const auto& t : inputs) {
    if (t.name == input_name) return &t;
  }
  return nullptr;
}

const std::vector<std::string>& ComponentSpec::names(const std::string& key) const {
  static const std::vector<std::string> none;
  auto it = name_lists.find(key);
  return it == name_lists.end() ? none : it->second;
}

int64_t ComponentSpec::attribute(const std::string& key) const {
  auto it = attributes.find(key);
  if (it == attributes.end()) throw Error("component " + name + " has no attribute " + key + " in its manifest");
  return it->second;
}

const ComponentSpec& Manifest::component(const std::string& component_name) const {
  auto it = components.find(component_name);
  if (it == components.end()) throw Error("the artifact has no component " + quote(component_name));
  return it->second;
}

const ComponentSpec& Manifest::by_role(const std::string& role) const {
  for (const auto& [name, spec] : components) {
    if (spec.role == role) return spec;
  }
  throw Error("the artifact has no " + role + " component");
}

Manifest parse_manifest(const std::string& json_text, const std::string& what) {
  const json::Value doc = json::parse(json_text, what);
  const Reader r(what);
  r.object(doc, "the manifest");
  Manifest m;

  const json::Value& version = r.member(doc, "", "format_version");
  if (!version.is_integer() || version.as_int() != kFormatVersion) {
    throw Error(what + ": artifact format version " + version.dump() + " is not supported by sdrt-cpp " + sdrt::version() +
                " (it reads version " + std::to_string(kFormatVersion) + "); re-export the model with sdrt " +
                sdrt::version());
  }
  std::vector<std::string> family_names;
  for (const auto& f : families()) family_names.emplace_back(f.name);
  m.family = r.one_of(r.member(doc, "", "family"), "family", family_names);
  const FamilyShape& family = *std::find_if(families().begin(), families().end(),
                                            [&](const FamilyShape& f) { return m.family == f.name; });

  // ranges and dims
  const json::Value& ranges = r.member(doc, "", "ranges");
  for (const auto& [key, value] : r.object(ranges, "ranges")) {
    if (std::find(kRangeFields.begin(), kRangeFields.end(), key) == kRangeFields.end()) {
      r.fail("ranges." + key, "is not a known field; known: " + join(kRangeFields, ", "));
    }
  }
  auto range = [&](const char* key) {
    const int64_t v = r.integer(r.member(ranges, "ranges", key), std::string("ranges.") + key);
    if (v < 1) r.fail(std::string("ranges.") + key, "must be at least 1, not " + std::to_string(v));
    return v;
  };
  ShapeRanges& g = m.ranges;
  g.max_batch = range("max_batch");
  g.min_size = range("min_size");
  g.max_size = range("max_size");
  g.opt_size = range("opt_size");
  g.opt_batch = range("opt_batch");
  g.text_length = range("text_length");
  g.max_text_chunks = range("max_text_chunks");
  g.latent_factor = range("latent_factor");
  for (auto [key, value] : {std::pair<const char*, int64_t>{"min_size", g.min_size}, {"max_size", g.max_size},
                            {"opt_size", g.opt_size}}) {
    if (value % g.latent_factor) {
      r.fail(std::string("ranges.") + key, std::to_string(value) + " is not a multiple of latent_factor " +
                                                std::to_string(g.latent_factor));
    }
  }
  if (!(g.min_size <= g.opt_size && g.opt_size <= g.max_size)) r.fail("ranges", "need min_size <= opt_size <= max_size");
  if (g.opt_batch > g.max_batch) r.fail("ranges.opt_batch", "is over max_batch");
  if (g.text_length < 3) r.fail("ranges.text_length", "must be at least 3 (begin token, one token, end token)");
  for (const auto& [symbol, value] : r.object(r.member(doc, "", "dims"), "dims")) {
    const std::string path = "dims." + symbol;
    r.object(value, path);
    DimRange d{r.integer(r.member(value, path, "min"), path + ".min"), r.integer(r.member(value, path, "opt"), path + ".opt"),
               r.integer(r.member(value, path, "max"), path + ".max")};
    if (!(1 <= d.min && d.min <= d.opt && d.opt <= d.max)) r.fail(path, "needs 1 <= min <= opt <= max");
    m.dims[symbol] = d;
  }

  const json::Value& scaling = r.member(doc, "", "vae_scaling_factor");
  const bool has_vae = std::find(family.networks.begin(), family.networks.end(), "vae_decoder") != family.networks.end();
  if (has_vae) {
    if (!scaling.is_number() || !(scaling.as_number() > 0)) r.fail("vae_scaling_factor", "must be a positive number");
    m.vae_scaling_factor = scaling.as_number();
  } else if (!scaling.is_null()) {
    r.fail("vae_scaling_factor", "must be null: a " + m.family + " artifact has no VAE, not " + scaling.dump());
  }
  m.source_sha256 = r.string(r.member(doc, "", "source_sha256"), "source_sha256");
  m.inpainting = r.boolean(r.member(doc, "", "inpainting"), "inpainting");
  m.prediction_type = r.one_of(r.member(doc, "", "prediction_type"), "prediction_type", kPredictionTypes);

  if (!has_vae && m.inpainting) r.fail("inpainting", "must be false: a " + m.family + " artifact has no UNet to inpaint with");
  const json::Value& vae = doc["vae"];
  if (!has_vae && !vae.is_null()) r.fail("vae", "must be null: a " + m.family + " artifact has no VAE, not " + vae.dump());
  if (!vae.is_null()) {
    r.object(vae, "vae");
    m.vae = std::make_pair(r.string(r.member(vae, "vae", "name"), "vae.name"),
                           r.string(r.member(vae, "vae", "sha256"), "vae.sha256"));
  }

  // support directories, text encoders, extras: as the family says
  const auto& support = r.array(r.member(doc, "", "support"), "support");
  for (size_t i = 0; i < support.size(); ++i) m.support.push_back(r.string(support[i], "support[" + std::to_string(i) + "]"));
  if (sorted(m.support) != sorted(family.support)) {
    r.fail("support", list_text(m.support) + " is not a " + m.family + " artifact's " + list_text(family.support));
  }
  const auto& extras = r.object(r.member(doc, "", "extras"), "extras");
  std::vector<std::string> extra_keys, family_keys;
  for (const auto& [key, value] : extras) extra_keys.push_back(key);
  for (const auto& [key, kind] : family.extras) family_keys.push_back(key);
  if (extra_keys != sorted(family_keys)) {
    r.fail("extras", "names " + list_text(extra_keys) + "; a " + m.family + " artifact has " + list_text(family_keys));
  }
  for (const auto& [key, kind] : family.extras) {
    const std::string path = "extras." + key;
    const json::Value& value = extras.at(key);
    if (kind == Extra::Bool) {
      r.boolean(value, path);
    } else if (kind == Extra::PositiveInt) {
      if (r.integer(value, path) < 1) r.fail(path, "must be a positive integer, not " + value.dump());
    } else {
      const auto& items = r.array(value, path);
      if (items.empty()) r.fail(path, "is empty; it names the base families a ControlNet fits: " + join(kBaseFamilies, ", "));
      for (size_t i = 0; i < items.size(); ++i) {
        m.controlnet_fits.push_back(r.one_of(items[i], path + "[" + std::to_string(i) + "]", kBaseFamilies));
      }
    }
  }
  if (m.family == "controlnet") {
    m.cross_attention_dim = extras.at("cross_attention_dim").as_int();
    m.global_pool_conditions = extras.at("global_pool_conditions").as_bool();
  }
  if (m.family == "sdxl" || m.family == "sdxl_refiner") {
    m.force_zeros_for_empty_prompt = extras.at("force_zeros_for_empty_prompt").as_bool();
    m.requires_aesthetics_score = extras.at("requires_aesthetics_score").as_bool();
    if (m.requires_aesthetics_score != (m.family == "sdxl_refiner")) {
      r.fail("extras.requires_aesthetics_score", "does not fit family " + m.family);
    }
  }

  // components
  const auto& components = r.object(r.member(doc, "", "components"), "components");
  std::vector<std::string> names;
  for (const auto& [name, value] : components) names.push_back(name);
  if (names != sorted(family.networks)) {
    r.fail("components", "names " + list_text(names) + "; a " + m.family + " artifact holds " + list_text(sorted(family.networks)));
  }
  for (const auto& [name, value] : components) {
    const std::string path = "components." + name;
    r.object(value, path);
    ComponentSpec c;
    c.name = r.string(r.member(value, path, "name"), path + ".name");
    if (c.name != name) r.fail(path + ".name", quote(c.name) + " differs from its key " + quote(name));
    c.role = r.string(r.member(value, path, "role"), path + ".role");
    if (!kRoles.count(c.role)) {
      r.fail(path + ".role", quote(c.role) + " is not one of " + join({kRoles.begin(), kRoles.end()}, ", "));
    }
    c.batch_dim = r.string(r.member(value, path, "batch_dim"), path + ".batch_dim");
    if (!m.dims.count(c.batch_dim)) r.fail(path + ".batch_dim", quote(c.batch_dim) + " is not a dimension of dims");
    std::set<std::string> tensor_names;
    for (const char* side : {"inputs", "outputs"}) {
      const auto& list = r.array(r.member(value, path, side), path + "." + side);
      if (list.empty()) r.fail(path + "." + side, "is empty");
      for (size_t i = 0; i < list.size(); ++i) {
        const std::string at = path + "." + side + "[" + std::to_string(i) + "]";
        TensorSpec t = read_tensor(r, list[i], at, m.dims);
        if (!tensor_names.insert(t.name).second) r.fail(at + ".name", quote(t.name) + " names a tensor twice");
        (std::string(side) == "inputs" ? c.inputs : c.outputs).push_back(t);
      }
    }
    for (const auto& [key, attr] : r.object(r.member(value, path, "attributes"), path + ".attributes")) {
      if (attr.is_integer()) {
        c.attributes[key] = attr.as_int();
      } else if (attr.is_bool()) {
        c.attributes[key] = attr.as_bool() ? 1 : 0;
      } else if (attr.kind() == json::Value::Kind::Array) {
        std::vector<std::string> names;
        for (size_t i = 0; i < attr.items().size(); ++i) {
          names.push_back(r.string(attr.items()[i], path + ".attributes." + key + "[" + std::to_string(i) + "]"));
        }
        c.name_lists[key] = names;
      }
    }
    // the ControlNet residuals: a UNet takes them as inputs, a ControlNet returns them, float32 with 4 axes
    for (size_t i = 0; i < c.names("residuals").size(); ++i) {
      const std::string& residual = c.names("residuals")[i];
      const bool out = c.role == "controlnet";
      const auto& list = out ? c.outputs : c.inputs;
      auto it = std::find_if(list.begin(), list.end(), [&](const TensorSpec& t) { return t.name == residual; });
      const std::string at = path + ".attributes.residuals[" + std::to_string(i) + "]";
      if (it == list.end()) r.fail(at, quote(residual) + " is not an " + (out ? "output" : "input") + " of " + name);
      if (it->type != "float32" || it->shape.size() != 4) {
        r.fail(at, quote(residual) + " must be a float32 tensor of 4 axes (batch, channels, height, width)");
      }
    }
    const json::Value& onnx = r.member(value, path, "onnx");
    if (onnx.is_null()) r.fail(path + ".onnx", "is null: the manifest describes a model directory, not an exported artifact");
    r.object(onnx, path + ".onnx");
    c.onnx = r.string(r.member(onnx, path + ".onnx", "path"), path + ".onnx.path");
    r.string(r.member(onnx, path + ".onnx", "sha256"), path + ".onnx.sha256");
    if (!onnx["external_data"].is_null()) r.string(onnx["external_data"], path + ".onnx.external_data");
    if (c.role == "text_encoder") {
      const json::Value& table = r.member(value, path, "token_embeddings");
      r.object(table, path + ".token_embeddings");
      c.token_table = r.string(r.member(table, path + ".token_embeddings", "path"), path + ".token_embeddings.path");
      r.string(r.member(table, path + ".token_embeddings", "sha256"), path + ".token_embeddings.sha256");
    }
    m.components[name] = c;
  }
  const auto& encoders = r.array(r.member(doc, "", "text_encoders"), "text_encoders");
  for (size_t i = 0; i < encoders.size(); ++i) {
    const std::string at = "text_encoders[" + std::to_string(i) + "]";
    r.object(encoders[i], at);
    TextEncoderPair p{r.string(r.member(encoders[i], at, "tokenizer"), at + ".tokenizer"),
                      r.string(r.member(encoders[i], at, "network"), at + ".network")};
    if (std::find(m.support.begin(), m.support.end(), p.tokenizer) == m.support.end()) {
      r.fail(at + ".tokenizer", quote(p.tokenizer) + " is not a support directory");
    }
    auto it = m.components.find(p.network);
    if (it == m.components.end() || it->second.role != "text_encoder") {
      r.fail(at + ".network", quote(p.network) + " is not a text-encoder component");
    }
    m.text_encoders.push_back(p);
  }
  std::vector<std::string> paired, encoder_components;
  for (const auto& p : m.text_encoders) paired.push_back(p.network);
  for (const auto& [name, c] : m.components) {
    if (c.role == "text_encoder") encoder_components.push_back(name);
  }
  if (sorted(paired) != encoder_components) {
    r.fail("text_encoders", "pair tokenizers with " + list_text(paired) + "; the text-encoder components are " +
                                list_text(encoder_components));
  }
  return m;
}

Manifest read_manifest(const fs::path& artifact) {
  if (!fs::is_directory(artifact)) throw Error("artifact directory " + artifact.string() + " does not exist or is not a directory");
  const fs::path file = artifact / "manifest.json";
  if (!fs::is_regular_file(file)) {
    throw Error(artifact.string() + " is not an sdrt artifact: it has no manifest.json (create one with 'sdrt export')");
  }
  std::ifstream in(file, std::ios::binary);
  std::stringstream text;
  text << in.rdbuf();
  Manifest m = parse_manifest(text.str(), file.string());
  const fs::path root = fs::weakly_canonical(artifact);
  auto inside = [&](const std::string& name, const std::string& rel) {
    const fs::path p = fs::weakly_canonical(artifact / rel);
    const auto [end, _] = std::mismatch(root.begin(), root.end(), p.begin(), p.end());
    if (end != root.end()) throw Error("manifest of " + artifact.string() + " points " + name + " at " + rel + ", outside the artifact");
    if (!fs::is_regular_file(p)) throw Error("artifact " + artifact.string() + " is incomplete: " + name + " file " + rel + " is missing");
  };
  for (const auto& [name, c] : m.components) {
    inside(name, c.onnx);
    if (!c.token_table.empty()) inside(name, c.token_table);
  }
  for (const auto& dir : m.support) {
    if (!fs::is_directory(artifact / dir)) throw Error("artifact " + artifact.string() + " is incomplete: " + dir + "/ is missing");
  }
  return m;
}

void check_supported(const Manifest& m) {
  if (m.family == "controlnet") {
    throw Error("this artifact is a ControlNet (made for " + join(m.controlnet_fits, ", ") + " models), which steers a " +
                "base model's UNet; sdrt-cpp runs no ControlNets (it feeds the UNet's residual inputs zeros: no " +
                "control). Run it with 'sdrt generate BASE --controlnet-dir DIR --control ...'");
  }
  if (m.family != "sd1" && m.family != "sd2" && m.family != "sdxl") {
    throw Error("family " + quote(m.family) + " is not supported by sdrt-cpp; it runs sd1, sd2 and sdxl artifacts " +
                "(run this one with 'sdrt generate')");
  }
  if (m.inpainting) {
    throw Error("this artifact's UNet is an inpainting UNet, which sdrt-cpp does not run (run it with 'sdrt generate')");
  }
  // the UNet's inputs: those the generation loop feeds, and the ControlNet residuals (fed zeros)
  const ComponentSpec& unet = m.by_role("denoiser");
  const std::set<std::string> fed = {"sample", "timestep", "encoder_hidden_states", "text_embeds", "time_ids"};
  const auto& residuals = unet.names("residuals");
  for (const auto& t : unet.inputs) {
    if (!fed.count(t.name) && std::find(residuals.begin(), residuals.end(), t.name) == residuals.end()) {
      throw Error("the " + unet.name + " takes input " + t.name + ", which sdrt-cpp does not feed; it feeds " +
                  join({fed.begin(), fed.end()}, ", ") + " and the ControlNet residuals its attributes list");
    }
  }
  for (const auto& [name, c] : m.components) {
    for (const auto* list : {&c.inputs, &c.outputs}) {
      for (const auto& t : *list) {
        if (t.type != "float32" && t.type != "int32") {
          throw Error("component " + name + " tensor " + t.name + " is " + t.type +
                      "; sdrt-cpp feeds and reads float32 and int32 tensors only");
        }
      }
    }
  }
}

}  // namespace sdrt
