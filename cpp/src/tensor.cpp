#include <numeric>

#include "sdrt/sdrt.hpp"

namespace sdrt {

const char* version() { return SDRT_VERSION; }

const char* dtype_name(DType dtype) { return dtype == DType::Float32 ? "float32" : "int32"; }

static int64_t product(const std::vector<int64_t>& shape) {
  return std::accumulate(shape.begin(), shape.end(), int64_t{1}, std::multiplies<int64_t>());
}

Tensor Tensor::zeros(std::vector<int64_t> shape) {
  Tensor t;
  t.data.assign(static_cast<size_t>(product(shape)), 0.0f);
  t.shape = std::move(shape);
  return t;
}

Tensor Tensor::from(std::vector<int64_t> shape, std::vector<float> values) {
  if (static_cast<int64_t>(values.size()) != product(shape)) throw std::logic_error("tensor values do not fit its shape");
  Tensor t;
  t.shape = std::move(shape);
  t.data = std::move(values);
  return t;
}

Tensor Tensor::int32(std::vector<int64_t> shape, std::vector<int32_t> values) {
  if (static_cast<int64_t>(values.size()) != product(shape)) throw std::logic_error("tensor values do not fit its shape");
  Tensor t;
  t.shape = std::move(shape);
  t.dtype = DType::Int32;
  t.ints = std::move(values);
  return t;
}

int64_t Tensor::numel() const { return product(shape); }

Tensor Tensor::rows(int64_t begin, int64_t end) const {
  Tensor out;
  out.shape = shape;
  out.shape[0] = end - begin;
  out.dtype = dtype;
  const int64_t row = shape[0] == 0 ? 0 : numel() / shape[0];
  if (dtype == DType::Float32) {
    out.data.assign(data.begin() + begin * row, data.begin() + end * row);
  } else {
    out.ints.assign(ints.begin() + begin * row, ints.begin() + end * row);
  }
  return out;
}

Tensor Tensor::repeat_row(int64_t index, int64_t count) const {
  std::vector<Tensor> parts(static_cast<size_t>(count), rows(index, index + 1));
  return concat(parts);
}

std::string Tensor::shape_text() const {
  std::string out = "[";
  for (size_t i = 0; i < shape.size(); ++i) out += (i ? ", " : "") + std::to_string(shape[i]);
  return out + "]";
}

Tensor concat(const std::vector<Tensor>& parts) {
  if (parts.empty()) throw std::logic_error("concat of no tensors");
  Tensor out;
  out.shape = parts[0].shape;
  out.dtype = parts[0].dtype;
  out.shape[0] = 0;
  for (const auto& p : parts) {
    if (p.dtype != out.dtype || p.shape.size() != out.shape.size() ||
        !std::equal(p.shape.begin() + 1, p.shape.end(), out.shape.begin() + 1)) {
      throw std::logic_error("concat of tensors of different shapes: " + parts[0].shape_text() + " and " +
                             p.shape_text());
    }
    out.shape[0] += p.shape[0];
    out.data.insert(out.data.end(), p.data.begin(), p.data.end());
    out.ints.insert(out.ints.end(), p.ints.begin(), p.ints.end());
  }
  return out;
}

}  // namespace sdrt
