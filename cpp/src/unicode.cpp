#include "unicode.hpp"

#include <algorithm>
#include <cstdint>
#include <iterator>

#include "sdrt/sdrt.hpp"

namespace sdrt::unicode {

namespace {

struct CodeRange {
  uint32_t first, last;
};
struct Lowercase {
  uint32_t cp, lower[2];
};
struct Decomposition {
  uint32_t cp, offset, length;
};
struct CombiningClass {
  uint32_t first, last, ccc;
};
struct Composition {
  uint32_t first, second, composed;
};

#include "unicode_tables.inc"

template <size_t N>
bool in_ranges(const CodeRange (&table)[N], char32_t cp) {
  auto it = std::upper_bound(std::begin(table), std::end(table), static_cast<uint32_t>(cp),
                             [](uint32_t v, const CodeRange& r) { return v < r.first; });
  return it != std::begin(table) && cp <= std::prev(it)->last;
}

// Hangul syllables, decomposed and composed by arithmetic (Unicode 3.12)
constexpr char32_t kSBase = 0xAC00, kLBase = 0x1100, kVBase = 0x1161, kTBase = 0x11A7;
constexpr int kLCount = 19, kVCount = 21, kTCount = 28, kNCount = kVCount * kTCount, kSCount = kLCount * kNCount;

void decompose(char32_t cp, std::u32string& out) {
  if (cp >= kSBase && cp < kSBase + kSCount) {
    const int s = static_cast<int>(cp - kSBase);
    out += static_cast<char32_t>(kLBase + s / kNCount);
    out += static_cast<char32_t>(kVBase + (s % kNCount) / kTCount);
    if (s % kTCount) out += static_cast<char32_t>(kTBase + s % kTCount);
    return;
  }
  auto it = std::lower_bound(std::begin(kDecompositions), std::end(kDecompositions), static_cast<uint32_t>(cp),
                             [](const Decomposition& d, uint32_t v) { return d.cp < v; });
  if (it != std::end(kDecompositions) && it->cp == cp) {
    for (uint32_t i = 0; i < it->length; ++i) out += static_cast<char32_t>(kDecompositionPool[it->offset + i]);
  } else {
    out += cp;
  }
}

char32_t compose(char32_t a, char32_t b) {
  if (a >= kLBase && a < kLBase + kLCount && b >= kVBase && b < kVBase + kVCount) {
    return kSBase + static_cast<char32_t>(((a - kLBase) * kVCount + (b - kVBase)) * kTCount);
  }
  if (a >= kSBase && a < kSBase + kSCount && (a - kSBase) % kTCount == 0 && b > kTBase && b < kTBase + kTCount) {
    return a + (b - kTBase);
  }
  auto it = std::lower_bound(std::begin(kCompositions), std::end(kCompositions), std::make_pair(a, b),
                             [](const Composition& c, const std::pair<char32_t, char32_t>& v) {
                               return std::make_pair(static_cast<char32_t>(c.first), static_cast<char32_t>(c.second)) < v;
                             });
  if (it != std::end(kCompositions) && it->first == a && it->second == b) return it->composed;
  return 0;
}

}  // namespace

std::u32string decode(const std::string& text, const std::string& field) {
  std::u32string out;
  out.reserve(text.size());
  size_t i = 0;
  auto invalid = [&](size_t at) -> Error {
    return Error(field + " is not valid UTF-8 (byte " + std::to_string(at) + " of " + std::to_string(text.size()) +
                 "); give the text in UTF-8");
  };
  while (i < text.size()) {
    const auto b0 = static_cast<unsigned char>(text[i]);
    int length;
    char32_t cp;
    if (b0 < 0x80) {
      out += b0;
      ++i;
      continue;
    } else if (b0 >= 0xC2 && b0 <= 0xDF) {
      length = 2;
      cp = b0 & 0x1F;
    } else if (b0 >= 0xE0 && b0 <= 0xEF) {
      length = 3;
      cp = b0 & 0x0F;
    } else if (b0 >= 0xF0 && b0 <= 0xF4) {
      length = 4;
      cp = b0 & 0x07;
    } else {
      throw invalid(i);
    }
    if (i + length > text.size()) throw invalid(i);
    for (int k = 1; k < length; ++k) {
      const auto b = static_cast<unsigned char>(text[i + k]);
      if ((b & 0xC0) != 0x80) throw invalid(i);
      cp = (cp << 6) | (b & 0x3F);
    }
    const bool overlong = (length == 3 && cp < 0x800) || (length == 4 && cp < 0x10000);
    if (overlong || (cp >= 0xD800 && cp < 0xE000) || cp > 0x10FFFF) throw invalid(i);
    out += cp;
    i += length;
  }
  return out;
}

std::string encode(char32_t cp) {
  std::string out;
  if (cp < 0x80) {
    out += static_cast<char>(cp);
  } else if (cp < 0x800) {
    out += static_cast<char>(0xC0 | (cp >> 6));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  } else if (cp < 0x10000) {
    out += static_cast<char>(0xE0 | (cp >> 12));
    out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  } else {
    out += static_cast<char>(0xF0 | (cp >> 18));
    out += static_cast<char>(0x80 | ((cp >> 12) & 0x3F));
    out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  }
  return out;
}

std::string encode(const std::u32string& text) {
  std::string out;
  for (char32_t cp : text) out += encode(cp);
  return out;
}

bool is_letter(char32_t cp) { return in_ranges(kLetters, cp); }
bool is_number(char32_t cp) { return in_ranges(kNumbers, cp); }
bool is_space(char32_t cp) { return in_ranges(kSpaces, cp); }

int combining_class(char32_t cp) {
  auto it = std::upper_bound(std::begin(kCombiningClasses), std::end(kCombiningClasses), static_cast<uint32_t>(cp),
                             [](uint32_t v, const CombiningClass& r) { return v < r.first; });
  if (it == std::begin(kCombiningClasses) || cp > std::prev(it)->last) return 0;
  return static_cast<int>(std::prev(it)->ccc);
}

std::u32string nfc(const std::u32string& text) {
  // canonical decomposition
  std::u32string d;
  for (char32_t cp : text) decompose(cp, d);
  // canonical ordering: each run of non-starters sorted by combining class, stably
  for (size_t i = 0; i < d.size();) {
    if (combining_class(d[i]) == 0) {
      ++i;
      continue;
    }
    size_t j = i;
    while (j < d.size() && combining_class(d[j]) != 0) ++j;
    std::stable_sort(d.begin() + static_cast<std::ptrdiff_t>(i), d.begin() + static_cast<std::ptrdiff_t>(j),
                     [](char32_t a, char32_t b) { return combining_class(a) < combining_class(b); });
    i = j;
  }
  // canonical composition: a character joins the last starter unless something between them blocks it (a
  // character of class 0, or of a class at least its own; the run is ordered, so the last one decides)
  std::u32string out;
  size_t starter = std::u32string::npos;  // index in `out` of the last starter
  int last_class = 0;                     // class of the last character of `out`
  for (char32_t cp : d) {
    const int ccc = combining_class(cp);
    if (starter != std::u32string::npos) {
      const bool adjacent = out.size() == starter + 1;
      const bool blocked = !adjacent && (last_class == 0 || last_class >= ccc);
      if (!blocked) {
        const char32_t composed = compose(out[starter], cp);
        if (composed) {
          out[starter] = composed;
          continue;
        }
      }
    }
    if (ccc == 0) starter = out.size();
    last_class = ccc;
    out += cp;
  }
  return out;
}

std::u32string lowercase(const std::u32string& text) {
  std::u32string out;
  out.reserve(text.size());
  for (char32_t cp : text) {
    if (cp < 0x80) {
      out += (cp >= 'A' && cp <= 'Z') ? cp + 32 : cp;
      continue;
    }
    auto it = std::lower_bound(std::begin(kLowercase), std::end(kLowercase), static_cast<uint32_t>(cp),
                               [](const Lowercase& l, uint32_t v) { return l.cp < v; });
    if (it != std::end(kLowercase) && it->cp == cp) {
      out += static_cast<char32_t>(it->lower[0]);
      if (it->lower[1]) out += static_cast<char32_t>(it->lower[1]);
    } else {
      out += cp;
    }
  }
  return out;
}

}  // namespace sdrt::unicode
