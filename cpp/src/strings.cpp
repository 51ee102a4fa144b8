#include "strings.hpp"

#include <cstdio>

namespace sdrt {

std::string quote(const std::string& value, size_t limit) {
  std::string shown = value;
  if (shown.size() > limit) {
    size_t cut = limit;
    while (cut > 0 && (static_cast<unsigned char>(shown[cut]) & 0xC0) == 0x80) --cut;  // not inside a UTF-8 sequence
    shown = shown.substr(0, cut) + "...";
  }
  std::string out = "'";
  for (char c : shown) {
    if (c == '\n') out += "\\n";
    else if (c == '\'') out += "\\'";
    else out += c;
  }
  return out + "'";
}

std::string join(const std::vector<std::string>& items, const std::string& separator) {
  std::string out;
  for (size_t i = 0; i < items.size(); ++i) out += (i ? separator : "") + items[i];
  return out;
}

std::string format_g(double value) {
  char buf[64];
  std::snprintf(buf, sizeof buf, "%g", value);
  return buf;
}

std::string lower_ascii(std::string s) {
  for (auto& c : s) {
    if (c >= 'A' && c <= 'Z') c = static_cast<char>(c - 'A' + 'a');
  }
  return s;
}

}  // namespace sdrt
