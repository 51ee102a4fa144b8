// UTF-8 and the Unicode properties the CLIP tokenizer needs (tables generated from unicodedata).
#pragma once

#include <string>

namespace sdrt::unicode {

// Decode UTF-8; throws sdrt::Error naming `field` and the byte offset of invalid UTF-8 (overlong forms,
// surrogates, code points past U+10FFFF and truncated sequences are invalid, as Python's decoder says).
std::u32string decode(const std::string& text, const std::string& field);
std::string encode(const std::u32string& text);
std::string encode(char32_t cp);

bool is_letter(char32_t cp);  // general category L*
bool is_number(char32_t cp);  // general category N*
bool is_space(char32_t cp);   // Oniguruma's \s: U+0009..U+000D, U+0085, Zs, Zl, Zp
int combining_class(char32_t cp);

std::u32string nfc(const std::u32string& text);       // canonical composition (Unicode normalization form C)
std::u32string lowercase(const std::u32string& text);  // full lowercase mapping, character by character

}  // namespace sdrt::unicode
