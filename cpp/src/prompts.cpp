// Prompts as the web UI reads them (sdrt.runtime.prompt_syntax and sdrt.runtime.prompts): emphasis fragments with
// weights, BREAK, and 75-token chunks between begin and end tokens.

#include <cmath>
#include <cstdlib>

#include "sdrt/sdrt.hpp"
#include "strings.hpp"
#include "unicode.hpp"

namespace sdrt {

namespace {

constexpr double kRoundMultiplier = 1.1;
constexpr double kSquareMultiplier = 1 / 1.1;

// Python's str.isspace (re's \s): Oniguruma's \s plus the separators U+001C..U+001F
bool py_space(char32_t c) { return unicode::is_space(c) || (c >= 0x1C && c <= 0x1F); }
// re's \w: letters, numbers and the underscore
bool py_word(char32_t c) { return c == U'_' || unicode::is_letter(c) || unicode::is_number(c); }
bool ascii_digit(char32_t c) { return c >= U'0' && c <= U'9'; }

// The weight closer at `i` (`:\s*[+-]?(\d+\.?\d*|\.\d+)\s*\)`): its length and weight, or 0.
size_t weight_closer(const std::u32string& s, size_t i, double* weight) {
  size_t j = i + 1;
  while (j < s.size() && py_space(s[j])) ++j;
  const size_t number = j;
  if (j < s.size() && (s[j] == U'+' || s[j] == U'-')) ++j;
  if (j < s.size() && ascii_digit(s[j])) {
    while (j < s.size() && ascii_digit(s[j])) ++j;
    if (j < s.size() && s[j] == U'.') ++j;
    while (j < s.size() && ascii_digit(s[j])) ++j;
  } else if (j + 1 < s.size() && s[j] == U'.' && ascii_digit(s[j + 1])) {
    ++j;
    while (j < s.size() && ascii_digit(s[j])) ++j;
  } else {
    return 0;
  }
  const std::string text = unicode::encode(s.substr(number, j - number));
  while (j < s.size() && py_space(s[j])) ++j;
  if (j >= s.size() || s[j] != U')') return 0;
  *weight = std::strtod(text.c_str(), nullptr);
  return j + 1 - i;
}

// `text` split at BREAK (`\s*\bBREAK\b\s*`); an empty u32string between breaks marks each break.
std::vector<std::pair<std::u32string, bool>> split_breaks(const std::u32string& text) {
  std::vector<std::pair<std::u32string, bool>> out;  // (part, a break precedes it)
  size_t start = 0;
  bool after_break = false;
  size_t i = 0;
  while (i + 5 <= text.size()) {
    const bool word = text.compare(i, 5, U"BREAK") == 0 && (i == 0 || !py_word(text[i - 1])) &&
                      (i + 5 == text.size() || !py_word(text[i + 5]));
    if (!word) {
      ++i;
      continue;
    }
    size_t left = i;
    while (left > start && py_space(text[left - 1])) --left;
    size_t right = i + 5;
    while (right < text.size() && py_space(text[right])) ++right;
    out.emplace_back(text.substr(start, left - start), after_break);
    after_break = true;
    start = i = right;
  }
  out.emplace_back(text.substr(start), after_break);
  return out;
}

// --- prompt editing and alternation: the web UI's schedule grammar, read only to tell whether it applies

struct Unreadable {};

class ScheduleParser {
 public:
  explicit ScheduleParser(const std::u32string& text) : s_(text) {}

  // True when the grammar reads the prompt and finds an edit or an alternation in it.
  bool scheduled() {
    try {
      top();
    } catch (const Unreadable&) {
      return false;  // the web UI reads an unreadable prompt as one text throughout
    }
    return found_;
  }

 private:
  void top() {
    while (pos_ < s_.size()) {
      const char32_t c = s_[pos_];
      if (c == U'(' || c == U'[') {
        const size_t start = pos_;
        const bool before = found_;
        try {
          bracket(0);
          continue;
        } catch (const Unreadable&) {
          pos_ = start;  // an unmatched bracket at the top level is text
          found_ = before;
        }
      }
      if (c == U'[' || c == U']' || c == U'(' || c == U')' || c == U':') {
        ++pos_;
      } else if (c == U'|') {
        throw Unreadable{};
      } else {
        plain();
      }
    }
  }

  void plain() {
    const size_t start = pos_;
    while (pos_ < s_.size()) {
      const char32_t c = s_[pos_];
      if (c == U'\\') {
        if (pos_ + 1 >= s_.size()) break;
        pos_ += 2;
      } else if (c == U'[' || c == U']' || c == U'(' || c == U')' || c == U':' || c == U'|') {
        break;
      } else {
        ++pos_;
      }
    }
    if (pos_ == start) throw Unreadable{};  // a lone backslash at the very end
  }

  // Nodes up to one of `stops` (consumed, returned); the text in between when `text` is given.
  char32_t sequence(int depth, const std::u32string& stops, std::u32string* text = nullptr) {
    bool only_text = true;
    while (pos_ < s_.size()) {
      const char32_t c = s_[pos_];
      if (stops.find(c) != std::u32string::npos) {
        ++pos_;
        if (text != nullptr && !only_text) text->clear();
        return c;
      }
      if (c == U'(' || c == U'[') {
        only_text = false;
        bracket(depth + 1);
      } else if (c == U']' || c == U')' || c == U':' || c == U'|') {
        throw Unreadable{};
      } else {
        const size_t start = pos_;
        plain();
        if (text != nullptr) *text += s_.substr(start, pos_ - start);
      }
    }
    throw Unreadable{};
  }

  void bracket(int depth) {
    if (depth > 100) throw Unreadable{};
    const char32_t opener = s_[pos_++];
    if (opener == U'(') {
      if (sequence(depth, U"):") == U':') sequence(depth, U")");
      return;
    }
    char32_t stop = sequence(depth, U"]:|");
    if (stop == U']') return;
    if (stop == U'|') {
      while (stop == U'|') stop = sequence(depth, U"|]");
      found_ = true;
      return;
    }
    std::u32string when;
    stop = sequence(depth, U":]", &when);
    if (stop == U':') {
      when.clear();
      sequence(depth, U"]", &when);
    }
    if (!is_number(when)) throw Unreadable{};
    found_ = true;
  }

  static bool is_number(const std::u32string& t) {  // \s*[+-]?(\d+\.\d*|\.\d+|\d+)([eE][+-]?\d+)?$
    size_t i = 0;
    while (i < t.size() && py_space(t[i])) ++i;
    if (i < t.size() && (t[i] == U'+' || t[i] == U'-')) ++i;
    size_t digits = 0;
    while (i < t.size() && ascii_digit(t[i])) ++i, ++digits;
    if (i < t.size() && t[i] == U'.') {
      ++i;
      while (i < t.size() && ascii_digit(t[i])) ++i, ++digits;
    }
    if (digits == 0) return false;
    if (i < t.size() && (t[i] == U'e' || t[i] == U'E')) {
      ++i;
      if (i < t.size() && (t[i] == U'+' || t[i] == U'-')) ++i;
      size_t exp = 0;
      while (i < t.size() && ascii_digit(t[i])) ++i, ++exp;
      if (exp == 0) return false;
    }
    return i == t.size();
  }

  const std::u32string& s_;
  size_t pos_ = 0;
  bool found_ = false;
};

}  // namespace

std::vector<Fragment> parse_emphasis(const std::string& prompt) {
  const std::u32string s = unicode::decode(prompt, "prompt");
  std::vector<std::optional<std::u32string>> pieces;  // nullopt marks a BREAK
  std::vector<double> weights;
  std::vector<size_t> rounds, squares;  // index of the first piece inside each open ( and [
  auto scale = [&](size_t start, double factor) {
    for (size_t i = start; i < weights.size(); ++i) weights[i] *= factor;
  };
  auto add_text = [&](const std::u32string& text) {
    for (const auto& [part, after_break] : split_breaks(text)) {
      if (after_break) {
        pieces.emplace_back(std::nullopt);
        weights.push_back(1.0);
      }
      if (!part.empty()) {
        pieces.emplace_back(part);
        weights.push_back(1.0);
      }
    }
  };
  size_t i = 0;
  while (i < s.size()) {
    const char32_t c = s[i];
    double weight = 0;
    size_t n;
    if (c == U'\\' && i + 1 < s.size() && std::u32string(U"()[]\\").find(s[i + 1]) != std::u32string::npos) {
      pieces.emplace_back(std::u32string(1, s[i + 1]));
      weights.push_back(1.0);
      i += 2;
    } else if (c == U'(' || c == U'[') {
      (c == U'(' ? rounds : squares).push_back(pieces.size());
      ++i;
    } else if (c == U':' && (n = weight_closer(s, i, &weight)) != 0 && !rounds.empty()) {
      scale(rounds.back(), weight);
      rounds.pop_back();
      i += n;
    } else if (c == U':' && n != 0) {  // a weight closer with nothing open: the regex took it as one token of text
      add_text(s.substr(i, n));
      i += n;
    } else if (c == U')' && !rounds.empty()) {
      scale(rounds.back(), kRoundMultiplier);
      rounds.pop_back();
      ++i;
    } else if (c == U']' && !squares.empty()) {
      scale(squares.back(), kSquareMultiplier);
      squares.pop_back();
      ++i;
    } else if (c == U'\\') {  // a lone backslash is dropped
      ++i;
    } else if (c == U')' || c == U']' || c == U':') {  // a closer with nothing open, or a colon: text
      add_text(s.substr(i, 1));
      ++i;
    } else {  // a run of text up to the next special character
      size_t j = i;
      while (j < s.size() && std::u32string(U"\\()[]:").find(s[j]) == std::u32string::npos) ++j;
      add_text(s.substr(i, j - i));
      i = j;
    }
  }
  // unclosed brackets reach to the end, outermost first (the web UI's order)
  for (size_t start : rounds) scale(start, kRoundMultiplier);
  for (size_t start : squares) scale(start, kSquareMultiplier);

  std::vector<Fragment> fragments;
  for (size_t k = 0; k < pieces.size(); ++k) {
    if (!pieces[k]) {
      fragments.push_back({"", 1.0, true});
    } else if (!fragments.empty() && !fragments.back().chunk_break && fragments.back().weight == weights[k]) {
      fragments.back().text += unicode::encode(*pieces[k]);
    } else {
      fragments.push_back({unicode::encode(*pieces[k]), weights[k], false});
    }
  }
  if (fragments.empty()) fragments.push_back({"", 1.0, false});
  return fragments;
}

bool has_prompt_schedule(const std::string& prompt) {
  if (prompt.find('[') == std::string::npos) return false;
  const std::u32string s = unicode::decode(prompt, "prompt");
  return ScheduleParser(s).scheduled();
}

TokenizedPrompt tokenize_prompt(const Tokenizer& tokenizer, const std::string& prompt, int length) {
  const size_t per_chunk = static_cast<size_t>(length - 2);
  TokenizedPrompt out;
  std::vector<int32_t> tokens;
  std::vector<float> token_weights;
  auto close_chunk = [&]() {
    std::vector<int32_t> ids{tokenizer.bos()};
    std::vector<float> weights{1.0f};
    ids.insert(ids.end(), tokens.begin(), tokens.end());
    weights.insert(weights.end(), token_weights.begin(), token_weights.end());
    ids.push_back(tokenizer.eos());
    weights.push_back(1.0f);
    ids.resize(static_cast<size_t>(length), tokenizer.pad());
    weights.resize(static_cast<size_t>(length), 1.0f);
    out.ids.push_back(std::move(ids));
    out.weights.push_back(std::move(weights));
    tokens.clear();
    token_weights.clear();
  };
  for (const Fragment& fragment : parse_emphasis(prompt)) {
    if (fragment.chunk_break) {
      close_chunk();
      continue;
    }
    if (fragment.text.empty()) continue;
    for (int32_t id : tokenizer.encode(fragment.text)) {
      if (tokens.size() + 1 > per_chunk) close_chunk();
      tokens.push_back(id);
      token_weights.push_back(static_cast<float>(fragment.weight));
      ++out.num_tokens;
    }
  }
  if (!tokens.empty() || out.ids.empty()) close_chunk();
  return out;
}

}  // namespace sdrt
