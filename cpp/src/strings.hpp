// Small string helpers for messages.
#pragma once

#include <string>
#include <vector>

namespace sdrt {

// `value` in double quotes, shortened to `limit` bytes (with "...") so a long input cannot flood a message.
std::string quote(const std::string& value, size_t limit = 80);
std::string join(const std::vector<std::string>& items, const std::string& separator);
// `value` formatted as Python's f"{value:g}" formats it (6 significant digits).
std::string format_g(double value);
std::string lower_ascii(std::string s);

}  // namespace sdrt
