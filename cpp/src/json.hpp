// A small JSON reader (RFC 8259): what the artifact's manifest, tokenizer and scheduler files need.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

namespace sdrt::json {

class Value {
 public:
  enum class Kind { Null, Bool, Number, String, Array, Object };

  Value() = default;
  static Value boolean(bool b);
  static Value number(double d, bool integral);
  static Value string(std::string s);
  static Value array(std::vector<Value> items);
  static Value object(std::map<std::string, Value> members);

  Kind kind() const { return kind_; }
  bool is_null() const { return kind_ == Kind::Null; }
  bool is_bool() const { return kind_ == Kind::Bool; }
  bool is_number() const { return kind_ == Kind::Number; }
  bool is_integer() const { return kind_ == Kind::Number && integral_; }
  bool is_string() const { return kind_ == Kind::String; }
  bool is_array() const { return kind_ == Kind::Array; }
  bool is_object() const { return kind_ == Kind::Object; }

  bool as_bool() const { return bool_; }
  double as_number() const { return number_; }
  int64_t as_int() const { return static_cast<int64_t>(number_); }
  const std::string& as_string() const { return string_; }
  // The elements of an array and the members of an object; empty for a value of another kind.
  const std::vector<Value>& items() const;
  const std::map<std::string, Value>& members() const;

  bool has(const std::string& key) const { return is_object() && object_->count(key) > 0; }
  // The member `key` of an object, or a null value when it is absent.
  const Value& operator[](const std::string& key) const;

  // JSON text of the value (for messages).
  std::string dump() const;

 private:
  Kind kind_ = Kind::Null;
  bool bool_ = false;
  bool integral_ = false;
  double number_ = 0.0;
  std::string string_;
  std::shared_ptr<std::vector<Value>> array_;
  std::shared_ptr<std::map<std::string, Value>> object_;
};

// Parse `text`; throws sdrt::Error naming `what` and the byte offset of a syntax error.
Value parse(const std::string& text, const std::string& what);
// Read and parse a file; throws sdrt::Error naming the file when it is missing or malformed.
Value parse_file(const std::string& path);

const char* kind_name(Value::Kind kind);

}  // namespace sdrt::json
