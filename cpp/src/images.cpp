// Files the runtime reads and writes: PNG (8-bit, with the web UI's `parameters` text chunk), float32 .npy, and the
// safetensors token tables of the artifact. Written files go to a temporary name renamed into place, named as sdrt's
// Python writers name theirs (.NAME.partial-HOST~PID~START-XXXXXX), so either side cleans the other's leftovers.

#include <sys/stat.h>
#include <unistd.h>
#include <zlib.h>

#include <array>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <regex>
#include <sstream>

#include "files.hpp"
#include "json.hpp"
#include "sdrt/sdrt.hpp"
#include "strings.hpp"

namespace fs = std::filesystem;

namespace sdrt {

namespace {

constexpr int64_t kMaxInputPixels = 4096LL * 4096LL;  // the Python runtime's decompression-bomb guard
const uint8_t kPngSignature[8] = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1A, '\n'};

uint32_t be32(const uint8_t* p) {
  return (uint32_t{p[0]} << 24) | (uint32_t{p[1]} << 16) | (uint32_t{p[2]} << 8) | uint32_t{p[3]};
}

void put32(std::string& out, uint32_t v) {
  out += static_cast<char>(v >> 24);
  out += static_cast<char>(v >> 16);
  out += static_cast<char>(v >> 8);
  out += static_cast<char>(v);
}

void put_chunk(std::string& out, const char* type, const std::string& data) {
  put32(out, static_cast<uint32_t>(data.size()));
  std::string body = std::string(type, 4) + data;
  out += body;
  put32(out, static_cast<uint32_t>(crc32(0L, reinterpret_cast<const Bytef*>(body.data()), static_cast<uInt>(body.size()))));
}

std::string read_all(const fs::path& path, const std::string& field) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw Error(field + " " + path.string() + " does not exist or cannot be read");
  std::stringstream buffer;
  buffer << in.rdbuf();
  return buffer.str();
}

std::string host_name() {
  char buf[256] = {0};
  if (gethostname(buf, sizeof buf - 1) != 0 || buf[0] == 0) return "localhost";
  std::string host(buf);
  for (auto& c : host) {
    if (!(isalnum(static_cast<unsigned char>(c)) || c == '.' || c == '_' || c == '-')) c = '_';
  }
  return host;
}

// this process's start time in clock ticks since boot (proc(5) field 22), 0 where /proc cannot tell
std::string start_time() {
  std::ifstream in("/proc/self/stat");
  std::string stat((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  const size_t paren = stat.rfind(')');
  if (paren == std::string::npos) return "0";
  std::istringstream fields(stat.substr(paren + 2));
  std::string field;
  for (int i = 0; i < 20 && fields >> field; ++i) {
  }
  return field.empty() ? "0" : field;
}

uint8_t paeth(int a, int b, int c) {
  const int p = a + b - c, pa = std::abs(p - a), pb = std::abs(p - b), pc = std::abs(p - c);
  if (pa <= pb && pa <= pc) return static_cast<uint8_t>(a);
  return static_cast<uint8_t>(pb <= pc ? b : c);
}

}  // namespace

void write_file_atomic(const fs::path& path, const std::string& bytes) {
  const fs::path dir = path.has_parent_path() ? path.parent_path() : fs::path(".");
  std::error_code ec;
  fs::create_directories(dir, ec);
  std::string pattern = (dir / ("." + path.filename().string() + ".partial-" + host_name() + "~" +
                                std::to_string(getpid()) + "~" + start_time() + "-XXXXXX")).string();
  std::vector<char> name(pattern.begin(), pattern.end());
  name.push_back('\0');
  const int fd = mkstemp(name.data());
  if (fd < 0) throw Error("cannot write " + path.string() + ": " + std::strerror(errno));
  const std::string tmp(name.data());
  size_t written = 0;
  while (written < bytes.size()) {
    const ssize_t n = ::write(fd, bytes.data() + written, bytes.size() - written);
    if (n <= 0) {
      ::close(fd);
      std::remove(tmp.c_str());
      throw Error("cannot write " + path.string() + ": " + std::strerror(errno));
    }
    written += static_cast<size_t>(n);
  }
  ::fchmod(fd, 0644);
  ::close(fd);
  fs::rename(tmp, path, ec);
  if (ec) {
    std::remove(tmp.c_str());
    throw Error("cannot write " + path.string() + ": " + ec.message());
  }
}

Image read_png(const fs::path& path) {
  const std::string field = "image";
  const std::string file = read_all(path, field);
  const auto* p = reinterpret_cast<const uint8_t*>(file.data());
  const std::string where = field + " " + path.string();
  if (file.size() < 8 || std::memcmp(p, kPngSignature, 8) != 0) throw Error(where + " is not a PNG file (sdrt-cpp reads PNG)");
  size_t at = 8;
  uint32_t width = 0, height = 0;
  int depth = 0, color = -1, interlace = 0;
  std::vector<uint8_t> palette;
  std::string idat;
  bool ended = false;
  while (at + 12 <= file.size() && !ended) {
    const uint32_t length = be32(p + at);
    if (length > file.size() - at - 12) throw Error(where + " is truncated");
    const std::string type(file.data() + at + 4, 4);
    const uint8_t* data = p + at + 8;
    const uint32_t crc = be32(p + at + 8 + length);
    if (crc32(0L, p + at + 4, length + 4) != crc) throw Error(where + " is damaged (a " + type + " chunk fails its CRC)");
    if (type == "IHDR" && length == 13) {
      width = be32(data);
      height = be32(data + 4);
      depth = data[8];
      color = data[9];
      interlace = data[12];
    } else if (type == "PLTE") {
      palette.assign(data, data + length);
    } else if (type == "IDAT") {
      idat.append(reinterpret_cast<const char*>(data), length);
    } else if (type == "IEND") {
      ended = true;
    }
    at += 12 + length;
  }
  if (color < 0 || idat.empty()) throw Error(where + " is not a complete PNG (no IHDR or image data)");
  if (width < 1 || height < 1) throw Error(where + " is empty (" + std::to_string(width) + "x" + std::to_string(height) + ")");
  if (int64_t{width} * height > kMaxInputPixels) {
    throw Error(where + " is " + std::to_string(width) + "x" + std::to_string(height) + ", over the " +
                std::to_string(kMaxInputPixels) + " pixels allowed");
  }
  int channels;
  switch (color) {
    case 0: channels = 1; break;
    case 2: channels = 3; break;
    case 3: channels = 1; break;
    case 4: channels = 2; break;
    case 6: channels = 4; break;
    default: throw Error(where + " has PNG colour type " + std::to_string(color) + ", which is not valid");
  }
  if (depth != 8) {
    throw Error(where + " has " + std::to_string(depth) + "-bit samples; sdrt-cpp reads 8-bit PNGs (convert it to 8-bit RGB)");
  }
  if (interlace != 0) throw Error(where + " is interlaced (Adam7); sdrt-cpp reads non-interlaced PNGs");
  if (color == 3 && palette.empty()) throw Error(where + " is a palette image without a palette");
  const size_t stride = size_t{width} * channels;
  std::vector<uint8_t> raw((stride + 1) * height);
  uLongf raw_size = static_cast<uLongf>(raw.size());
  const int status = uncompress(raw.data(), &raw_size, reinterpret_cast<const Bytef*>(idat.data()), static_cast<uLong>(idat.size()));
  if (status != Z_OK || raw_size != raw.size()) throw Error(where + " is damaged (its image data does not inflate to its size)");
  std::vector<uint8_t> pixels(stride * height);
  for (uint32_t y = 0; y < height; ++y) {
    const uint8_t filter = raw[y * (stride + 1)];
    const uint8_t* in = &raw[y * (stride + 1) + 1];
    uint8_t* out = &pixels[y * stride];
    const uint8_t* up = y ? &pixels[(y - 1) * stride] : nullptr;
    for (size_t x = 0; x < stride; ++x) {
      const int a = x >= static_cast<size_t>(channels) ? out[x - channels] : 0;
      const int b = up ? up[x] : 0;
      const int c = (up && x >= static_cast<size_t>(channels)) ? up[x - channels] : 0;
      int v = in[x];
      switch (filter) {
        case 0: break;
        case 1: v += a; break;
        case 2: v += b; break;
        case 3: v += (a + b) / 2; break;
        case 4: v += paeth(a, b, c); break;
        default: throw Error(where + " is damaged (row filter " + std::to_string(filter) + ")");
      }
      out[x] = static_cast<uint8_t>(v);
    }
  }
  Image image;
  image.width = static_cast<int>(width);
  image.height = static_cast<int>(height);
  image.rgb.resize(size_t{width} * height * 3);
  for (size_t i = 0; i < size_t{width} * height; ++i) {
    uint8_t* rgb = &image.rgb[i * 3];
    const uint8_t* px = &pixels[i * channels];
    if (color == 3) {  // palette
      if (size_t{px[0]} * 3 + 2 >= palette.size()) throw Error(where + " uses a colour outside its palette");
      std::memcpy(rgb, &palette[size_t{px[0]} * 3], 3);
    } else if (channels <= 2) {  // grey (+ alpha, dropped)
      rgb[0] = rgb[1] = rgb[2] = px[0];
    } else {  // RGB (+ alpha, dropped as PIL's convert("RGB") drops it)
      std::memcpy(rgb, px, 3);
    }
  }
  return image;
}

void write_png(const fs::path& path, const Image& image, const std::string& parameters) {
  if (image.width < 1 || image.height < 1 || image.rgb.size() != size_t(image.width) * image.height * 3) {
    throw std::logic_error("write_png: the image's pixels do not fit its size");
  }
  std::string out(reinterpret_cast<const char*>(kPngSignature), 8);
  std::string ihdr;
  put32(ihdr, static_cast<uint32_t>(image.width));
  put32(ihdr, static_cast<uint32_t>(image.height));
  ihdr += std::string("\x08\x02\x00\x00\x00", 5);  // 8-bit RGB, deflate, adaptive filtering, not interlaced
  put_chunk(out, "IHDR", ihdr);
  // the web UI's parameters: tEXt (Latin-1) when the text is Latin-1, else iTXt (UTF-8), as PIL chooses
  std::string latin1;
  bool is_latin1 = true;
  for (size_t i = 0; i < parameters.size();) {
    const auto c = static_cast<unsigned char>(parameters[i]);
    if (c < 0x80) {
      latin1 += static_cast<char>(c);
      ++i;
    } else if ((c == 0xC2 || c == 0xC3) && i + 1 < parameters.size()) {
      latin1 += static_cast<char>(((c & 0x03) << 6) | (static_cast<unsigned char>(parameters[i + 1]) & 0x3F));
      i += 2;
    } else {
      is_latin1 = false;
      break;
    }
  }
  if (is_latin1) put_chunk(out, "tEXt", std::string("parameters") + '\0' + latin1);
  else put_chunk(out, "iTXt", std::string("parameters") + std::string("\0\0\0\0\0", 5) + parameters);
  const size_t stride = size_t(image.width) * 3;
  std::string raw;
  raw.reserve((stride + 1) * image.height);
  for (int y = 0; y < image.height; ++y) {
    raw += '\0';  // filter: none
    raw.append(reinterpret_cast<const char*>(&image.rgb[y * stride]), stride);
  }
  uLongf size = compressBound(static_cast<uLong>(raw.size()));
  std::string idat(size, '\0');
  if (compress2(reinterpret_cast<Bytef*>(&idat[0]), &size, reinterpret_cast<const Bytef*>(raw.data()),
                static_cast<uLong>(raw.size()), 6) != Z_OK) {
    throw Error("cannot compress the PNG data of " + path.string());
  }
  idat.resize(size);
  put_chunk(out, "IDAT", idat);
  put_chunk(out, "IEND", "");
  write_file_atomic(path, out);
}

Tensor read_npy(const fs::path& path) {
  const std::string file = read_all(path, "latents");
  const std::string where = "latents " + path.string();
  if (file.size() < 10 || file.compare(0, 6, "\x93NUMPY") != 0) throw Error(where + " is not a .npy file");
  const int major = static_cast<unsigned char>(file[6]);
  size_t header_len, header_at;
  if (major == 1) {
    header_len = static_cast<unsigned char>(file[8]) | (static_cast<size_t>(static_cast<unsigned char>(file[9])) << 8);
    header_at = 10;
  } else if ((major == 2 || major == 3) && file.size() >= 12) {
    header_len = 0;
    for (int i = 0; i < 4; ++i) header_len |= static_cast<size_t>(static_cast<unsigned char>(file[8 + i])) << (8 * i);
    header_at = 12;
  } else {
    throw Error(where + " has .npy format version " + std::to_string(major) + ", which is not 1, 2 or 3");
  }
  if (header_at + header_len > file.size()) throw Error(where + " is truncated");
  const std::string header = file.substr(header_at, header_len);
  std::smatch m;
  if (!std::regex_search(header, m, std::regex(R"('descr':\s*'([^']*)')")) || m[1].str() != "<f4") {
    throw Error(where + " must hold float32 values ('<f4'), not " + (m.empty() ? std::string("?") : m[1].str()));
  }
  if (std::regex_search(header, std::regex(R"('fortran_order':\s*True)"))) throw Error(where + " is in Fortran order; save it in C order");
  if (!std::regex_search(header, m, std::regex(R"('shape':\s*\(([^)]*)\))"))) throw Error(where + " has no shape in its header");
  std::vector<int64_t> shape;
  std::istringstream dims(m[1].str());
  std::string dim;
  while (std::getline(dims, dim, ',')) {
    dim.erase(0, dim.find_first_not_of(" "));
    if (!dim.empty()) shape.push_back(std::stoll(dim));
  }
  int64_t count = 1;
  for (int64_t d : shape) count *= d;
  const size_t data_at = header_at + header_len;
  if (file.size() - data_at != static_cast<size_t>(count) * 4) {
    throw Error(where + " holds " + std::to_string((file.size() - data_at) / 4) + " values for its shape's " + std::to_string(count));
  }
  std::vector<float> values(static_cast<size_t>(count));
  std::memcpy(values.data(), file.data() + data_at, values.size() * 4);
  return Tensor::from(shape, std::move(values));
}

void write_npy(const fs::path& path, const Tensor& tensor) {
  std::string shape;
  for (int64_t d : tensor.shape) shape += std::to_string(d) + ", ";
  if (tensor.shape.size() > 1) shape.erase(shape.size() - 2);
  else if (!shape.empty()) shape.erase(shape.size() - 1);
  std::string header = "{'descr': '<f4', 'fortran_order': False, 'shape': (" + shape + "), }";
  while ((10 + header.size() + 1) % 64) header += ' ';
  header += '\n';
  std::string out = "\x93NUMPY";
  out += '\x01';
  out += '\x00';
  out += static_cast<char>(header.size() & 0xFF);
  out += static_cast<char>(header.size() >> 8);
  out += header;
  out.append(reinterpret_cast<const char*>(tensor.data.data()), tensor.data.size() * 4);
  write_file_atomic(path, out);
}

Tensor read_token_table(const fs::path& path, int64_t rows, int64_t width) {
  const std::string file = read_all(path, "token table");
  const std::string where = "token table " + path.string();
  if (file.size() < 8) throw Error(where + " is truncated");
  uint64_t header_len = 0;
  for (int i = 0; i < 8; ++i) header_len |= static_cast<uint64_t>(static_cast<unsigned char>(file[i])) << (8 * i);
  if (header_len > file.size() - 8) throw Error(where + " is truncated");
  const json::Value header = json::parse(file.substr(8, header_len), where);
  const json::Value& weight = header["weight"];
  if (!weight.is_object() || weight["dtype"].as_string() != "F32") throw Error(where + " has no float32 tensor 'weight'");
  const auto& shape = weight["shape"].items();
  if (shape.size() != 2 || shape[0].as_int() != rows || shape[1].as_int() != width) {
    throw Error(where + " is not (" + std::to_string(rows) + ", " + std::to_string(width) +
                "): the text encoder takes its vocabulary's embeddings; re-export the model");
  }
  const auto& offsets = weight["data_offsets"].items();
  const uint64_t begin = static_cast<uint64_t>(offsets.at(0).as_int()), end = static_cast<uint64_t>(offsets.at(1).as_int());
  const uint64_t data_at = 8 + header_len;
  if (end - begin != static_cast<uint64_t>(rows * width) * 4 || data_at + end > file.size()) throw Error(where + " is truncated");
  std::vector<float> values(static_cast<size_t>(rows * width));
  std::memcpy(values.data(), file.data() + data_at + begin, values.size() * 4);
  return Tensor::from({rows, width}, std::move(values));
}

}  // namespace sdrt
