// CLIP's tokenizer as transformers' CLIPTokenizer (the tokenizers library) runs it: added tokens split out of the
// raw text; NFC, whitespace runs to one space, lowercase; CLIP's split (contractions, letter runs, single digits,
// runs of other non-space characters); byte-level pre-tokenization (GPT-2's split, bytes to printable characters);
// BPE with "</w>" ending each word, merging the lowest-ranked pair first.

#include <fstream>
#include <sstream>

#include "json.hpp"
#include "sdrt/sdrt.hpp"
#include "strings.hpp"
#include "unicode.hpp"

namespace fs = std::filesystem;

namespace sdrt {

namespace {

const char* const kEndOfWord = "</w>";

// GPT-2's reversible map from bytes to printable characters (the byte-level alphabet)
const std::vector<char32_t>& byte_chars() {
  static const std::vector<char32_t> table = [] {
    std::vector<char32_t> t(256, 0);
    std::vector<bool> printable(256, false);
    for (int b = '!'; b <= '~'; ++b) printable[b] = true;
    for (int b = 0xA1; b <= 0xAC; ++b) printable[b] = true;
    for (int b = 0xAE; b <= 0xFF; ++b) printable[b] = true;
    char32_t next = 256;
    for (int b = 0; b < 256; ++b) t[b] = printable[b] ? static_cast<char32_t>(b) : next++;
    return t;
  }();
  return table;
}

bool starts_with(const std::u32string& s, size_t at, const char* ascii) {
  for (size_t k = 0; ascii[k]; ++k) {
    if (at + k >= s.size() || s[at + k] != static_cast<char32_t>(ascii[k])) return false;
  }
  return true;
}

// The contraction at `at` ('s 't 're 've 'm 'll 'd), as a length, or 0.
size_t contraction(const std::u32string& s, size_t at) {
  static const char* const kForms[] = {"'s", "'t", "'re", "'ve", "'m", "'ll", "'d"};
  for (const char* form : kForms) {
    if (starts_with(s, at, form)) return std::char_traits<char>::length(form);
  }
  return 0;
}

bool other(char32_t c) { return !unicode::is_space(c) && !unicode::is_letter(c) && !unicode::is_number(c); }

// CLIP's split: <|startoftext|>|<|endoftext|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+, matches kept,
// the rest (whitespace) dropped. Alternatives are tried in order at each position, as the regex engine does.
std::vector<std::u32string> clip_split(const std::u32string& s) {
  std::vector<std::u32string> pieces;
  size_t i = 0;
  while (i < s.size()) {
    size_t n = 0;
    if (starts_with(s, i, "<|startoftext|>")) {
      n = 15;
    } else if (starts_with(s, i, "<|endoftext|>")) {
      n = 13;
    } else if ((n = contraction(s, i)) != 0) {
    } else if (unicode::is_letter(s[i])) {
      while (i + n < s.size() && unicode::is_letter(s[i + n])) ++n;
    } else if (unicode::is_number(s[i])) {
      n = 1;
    } else if (other(s[i])) {
      while (i + n < s.size() && other(s[i + n])) ++n;
    }
    if (n == 0) {  // whitespace: removed
      ++i;
      continue;
    }
    pieces.push_back(s.substr(i, n));
    i += n;
  }
  return pieces;
}

// GPT-2's split (the byte-level pre-tokenizer's regex) of a piece without whitespace:
// 's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+
std::vector<std::u32string> gpt2_split(const std::u32string& s) {
  std::vector<std::u32string> pieces;
  size_t i = 0;
  while (i < s.size()) {
    size_t n = contraction(s, i);
    if (n == 0) {
      bool (*same)(char32_t) = unicode::is_letter(s[i]) ? unicode::is_letter : unicode::is_number(s[i]) ? unicode::is_number : other;
      n = 1;
      while (i + n < s.size() && same(s[i + n])) ++n;
    }
    pieces.push_back(s.substr(i, n));
    i += n;
  }
  return pieces;
}

std::u32string normalize(const std::u32string& text) {
  std::u32string composed = unicode::nfc(text);
  std::u32string spaced;
  for (size_t i = 0; i < composed.size();) {
    if (unicode::is_space(composed[i])) {
      while (i < composed.size() && unicode::is_space(composed[i])) ++i;
      spaced += U' ';
    } else {
      spaced += composed[i++];
    }
  }
  return unicode::lowercase(spaced);
}

// `text` cut at the leftmost-longest occurrences of `tokens`: (text, -1) runs and (token, id) pieces.
std::vector<std::pair<std::u32string, int32_t>> split_added(const std::u32string& text,
                                                            const std::vector<std::pair<std::u32string, int32_t>>& tokens) {
  std::vector<std::pair<std::u32string, int32_t>> out;
  size_t start = 0, i = 0;
  while (i < text.size()) {
    size_t best = 0;
    int32_t id = -1;
    for (const auto& [token, token_id] : tokens) {
      if (token.size() > best && text.compare(i, token.size(), token) == 0) {
        best = token.size();
        id = token_id;
      }
    }
    if (best == 0) {
      ++i;
      continue;
    }
    if (i > start) out.emplace_back(text.substr(start, i - start), -1);
    out.emplace_back(text.substr(i, best), id);
    i += best;
    start = i;
  }
  if (start < text.size()) out.emplace_back(text.substr(start), -1);
  return out;
}

std::string read_text(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw Error("cannot read " + path.string());
  std::stringstream buffer;
  buffer << in.rdbuf();
  return buffer.str();
}

// A special token named in a tokenizer config: a string, or an object with "content".
std::optional<std::string> token_name(const json::Value& v) {
  if (v.is_string()) return v.as_string();
  if (v.is_object() && v["content"].is_string()) return v["content"].as_string();
  return std::nullopt;
}

}  // namespace

Tokenizer Tokenizer::load(const fs::path& directory) {
  if (!fs::is_directory(directory)) throw Error("tokenizer directory " + directory.string() + " is missing");
  Tokenizer t;
  std::vector<std::pair<std::string, std::string>> merges;
  struct Added {
    std::string content;
    int32_t id;
    bool normalized;
  };
  std::vector<Added> added;
  const fs::path tokenizer_json = directory / "tokenizer.json";
  if (fs::exists(tokenizer_json)) {
    const json::Value doc = json::parse_file(tokenizer_json.string());
    const json::Value& model = doc["model"];
    const std::string where = tokenizer_json.string();
    if (model["type"].as_string() != "BPE" || model["end_of_word_suffix"].as_string() != kEndOfWord ||
        !(model["continuing_subword_prefix"].is_null() || model["continuing_subword_prefix"].as_string().empty())) {
      throw Error(where + " is not a CLIP byte-level BPE tokenizer (model type BPE with end_of_word_suffix '</w>')");
    }
    if (model["byte_fallback"].as_bool() || !model["dropout"].is_null()) {
      throw Error(where + ": byte_fallback and dropout are not CLIP's; this tokenizer is not supported");
    }
    // the pipeline is CLIP's: the normalizer and pre-tokenizer types transformers' CLIPTokenizer sets
    std::vector<std::string> kinds;
    for (const auto& n : doc["normalizer"]["normalizers"].items()) kinds.push_back(n["type"].as_string());
    for (const auto& p : doc["pre_tokenizer"]["pretokenizers"].items()) kinds.push_back(p["type"].as_string());
    if (join(kinds, ",") != "NFC,Replace,Lowercase,Split,ByteLevel") {
      throw Error(where + " does not describe CLIP's tokenization (normalizers NFC, Replace, Lowercase; pre-tokenizers "
                  "Split, ByteLevel), but " + join(kinds, ", "));
    }
    for (const auto& [token, id] : model["vocab"].members()) t.vocab_[token] = static_cast<int32_t>(id.as_int());
    for (const auto& m : model["merges"].items()) {
      if (m.is_string()) {
        const std::string& s = m.as_string();
        const size_t space = s.find(' ');
        if (space == std::string::npos) throw Error(where + ": merge " + quote(s) + " is not 'a b'");
        merges.emplace_back(s.substr(0, space), s.substr(space + 1));
      } else {
        merges.emplace_back(m.items().at(0).as_string(), m.items().at(1).as_string());
      }
    }
    for (const auto& a : doc["added_tokens"].items()) {
      added.push_back({a["content"].as_string(), static_cast<int32_t>(a["id"].as_int()), a["normalized"].as_bool()});
    }
  } else {
    const fs::path vocab_file = directory / "vocab.json", merges_file = directory / "merges.txt";
    if (!fs::exists(vocab_file) || !fs::exists(merges_file)) {
      throw Error("tokenizer directory " + directory.string() + " has neither tokenizer.json nor vocab.json and merges.txt");
    }
    const json::Value vocab = json::parse_file(vocab_file.string());  // kept: the loop reads its members
    if (!vocab.is_object()) throw Error(vocab_file.string() + " is not a JSON object of token ids");
    for (const auto& [token, id] : vocab.members()) {
      t.vocab_[token] = static_cast<int32_t>(id.as_int());
    }
    std::istringstream lines(read_text(merges_file));
    std::string line;
    while (std::getline(lines, line)) {
      if (!line.empty() && line.back() == '\r') line.pop_back();
      if (line.empty() || line.rfind("#version", 0) == 0) continue;
      const size_t space = line.find(' ');
      if (space == std::string::npos) throw Error(merges_file.string() + ": line " + quote(line) + " is not 'a b'");
      merges.emplace_back(line.substr(0, space), line.substr(space + 1));
    }
  }
  // special tokens: tokenizer_config.json, then special_tokens_map.json, then CLIP's
  json::Value config, special;
  if (fs::exists(directory / "tokenizer_config.json")) config = json::parse_file((directory / "tokenizer_config.json").string());
  if (fs::exists(directory / "special_tokens_map.json")) special = json::parse_file((directory / "special_tokens_map.json").string());
  if (config["added_tokens_decoder"].is_object()) {
    for (const auto& [id, a] : config["added_tokens_decoder"].members()) {
      added.push_back({a["content"].as_string(), static_cast<int32_t>(std::stol(id)), a["normalized"].as_bool()});
    }
  }
  // transformers makes every special token an added token, matched in the raw text (SD 2.x's pad "!" included)
  auto special_id = [&](const char* key, const char* fallback) {
    std::string name = token_name(config[key]).value_or(token_name(special[key]).value_or(fallback));
    for (const auto& a : added) {
      if (a.content == name) return a.id;
    }
    auto it = t.vocab_.find(name);
    if (it == t.vocab_.end()) throw Error("tokenizer " + directory.string() + ": its " + key + " " + quote(name) + " is not in the vocabulary");
    added.push_back({name, it->second, false});
    return it->second;
  };
  t.bos_ = special_id("bos_token", "<|startoftext|>");
  t.eos_ = special_id("eos_token", "<|endoftext|>");
  t.pad_ = config["pad_token"].is_null() && special["pad_token"].is_null() ? t.eos_ : special_id("pad_token", "<|endoftext|>");
  t.unk_ = special_id("unk_token", "<|endoftext|>");
  for (const auto& a : added) {
    t.vocab_.emplace(a.content, a.id);
    (a.normalized ? t.added_normal_ : t.added_raw_).emplace_back(unicode::decode(a.content, "added token"), a.id);
  }
  int32_t rank = 0;
  for (const auto& [a, b] : merges) {
    auto ia = t.vocab_.find(a), ib = t.vocab_.find(b), im = t.vocab_.find(a + b);
    if (ia == t.vocab_.end() || ib == t.vocab_.end() || im == t.vocab_.end()) {
      throw Error("tokenizer " + directory.string() + ": merge " + quote(a + " " + b) + " names a token outside the vocabulary");
    }
    t.merges_.emplace(std::make_pair(ia->second, ib->second), std::make_pair(rank++, im->second));
  }
  return t;
}

std::vector<int32_t> Tokenizer::bpe(const std::u32string& word) const {
  std::vector<int32_t> symbols;
  for (size_t i = 0; i < word.size(); ++i) {
    std::string s = unicode::encode(word[i]);
    if (i + 1 == word.size()) s += kEndOfWord;
    auto it = vocab_.find(s);
    if (it != vocab_.end()) {
      symbols.push_back(it->second);
    } else if (unk_ >= 0) {
      symbols.push_back(unk_);
    }
  }
  while (symbols.size() > 1) {  // merge the lowest-ranked adjacent pair, the leftmost on a tie
    size_t best = symbols.size();
    std::pair<int32_t, int32_t> merged{0, 0};
    for (size_t i = 0; i + 1 < symbols.size(); ++i) {
      auto it = merges_.find({symbols[i], symbols[i + 1]});
      if (it != merges_.end() && (best == symbols.size() || it->second.first < merged.first)) {
        best = i;
        merged = it->second;
      }
    }
    if (best == symbols.size()) break;
    symbols[best] = merged.second;
    symbols.erase(symbols.begin() + static_cast<std::ptrdiff_t>(best) + 1);
  }
  return symbols;
}

std::vector<int32_t> Tokenizer::encode(const std::string& text) const {
  std::vector<int32_t> ids;
  const auto& bytes = byte_chars();
  for (const auto& [part, id] : split_added(unicode::decode(text, "prompt"), added_raw_)) {
    if (id >= 0) {
      ids.push_back(id);
      continue;
    }
    for (const auto& [piece, piece_id] : split_added(normalize(part), added_normal_)) {
      if (piece_id >= 0) {
        ids.push_back(piece_id);
        continue;
      }
      for (const auto& clip_piece : clip_split(piece)) {
        for (const auto& word : gpt2_split(clip_piece)) {
          std::u32string mapped;
          for (unsigned char b : unicode::encode(word)) mapped += bytes[b];
          for (int32_t token : bpe(mapped)) ids.push_back(token);
        }
      }
    }
  }
  return ids;
}

}  // namespace sdrt
