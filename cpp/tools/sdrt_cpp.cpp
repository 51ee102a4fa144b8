// sdrt-cpp: generate images from an sdrt artifact, as `sdrt generate` does (same sampler names, defaults, seeds,
// images within 2/255 and infotexts). Exit codes: 0 done, 2 bad input (one line on stderr naming the field), 1 other.

#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <iostream>
#include <string>
#include <vector>

#include "sdrt/sdrt.hpp"

namespace {

const char* const kUsage =
    "usage: sdrt-cpp ARTIFACT --prompt TEXT [--negative-prompt TEXT] [--steps N] [--guidance G]\n"
    "                [--sampler NAME] [--seed S] [--width W] [--height H] [--clip-skip K] [--eta E]\n"
    "                [--image IN.png --strength F] [--latents FILE.npy] [--batch N] [--backend NAME]\n"
    "                [--cache-dir DIR] [--threads N] [--repeat N] [--timings-json FILE] [-o OUT.png]\n";

const char* const kHelp =
    "\nGenerate images from an sdrt artifact (sd1, sd2 or sdxl; text-to-image, image-to-image) as `sdrt generate`\n"
    "does: the same samplers and defaults, and the same image for the same seed.\n\n"
    "  ARTIFACT              an artifact directory written by `sdrt export`\n"
    "  --prompt TEXT         the prompt, with the web UI's emphasis: (word:1.3), (word), [word], BREAK\n"
    "  --negative-prompt T   what the image should not contain\n"
    "  --steps N             denoising steps (default 30)\n"
    "  --guidance G          classifier-free guidance scale (default 7.5; SDXL 5); alias --guidance-scale\n"
    "  --sampler NAME        ddim, pndm, euler, euler_a, dpmpp_2m, dpmpp_2m_karras, or a web UI label\n"
    "                        (default: the model's own scheduler); alias --scheduler\n"
    "  --seed S              seed of the first image; image i uses S+i (default random)\n"
    "  --width W, --height H pixels, multiples of 8 (default: the artifact's tuned size, or the image's)\n"
    "  --clip-skip K         text-encoder layers skipped from the end (1 is the web UI's 'CLIP skip 2')\n"
    "  --eta E               DDIM's eta (default 0)\n"
    "  --image IN.png        image-to-image input, exactly the generated size\n"
    "  --strength F          with --image: share of the schedule run, 0 < F <= 1 (default 0.8; SDXL 0.3)\n"
    "  --latents FILE.npy    text-to-image start noise (batch, 4, H/8, W/8) float32 instead of the seeds' draws\n"
    "  --batch N             images (default 1); OUT-i.png each\n"
    "  --backend NAME        engine backend (default openvino)\n"
    "  --cache-dir DIR       openvino: keep compiled models in DIR, so a later run imports them\n"
    "  --threads N           openvino: inference threads (default: OpenVINO's choice)\n"
    "  --repeat N            run the generation N times in this process (timings of each in --timings-json)\n"
    "  --timings-json FILE   write the stage timings (seconds) of every run as JSON\n"
    "  -o, --output OUT.png  where to write the image (default sdrt.png)\n";

struct Usage : std::runtime_error {
  using std::runtime_error::runtime_error;
};

long long integer(const std::string& flag, const std::string& text) {
  char* end = nullptr;
  errno = 0;
  const long long v = std::strtoll(text.c_str(), &end, 10);
  if (text.empty() || *end != '\0' || errno) throw sdrt::Error(flag + " '" + text + "' is not an integer");
  return v;
}

unsigned long long unsigned_integer(const std::string& flag, const std::string& text) {
  char* end = nullptr;
  errno = 0;
  const unsigned long long v = std::strtoull(text.c_str(), &end, 10);
  if (text.empty() || text[0] == '-' || *end != '\0' || errno) {
    throw sdrt::Error(flag + " '" + text + "' is not an integer in 0..18446744073709551615");
  }
  return v;
}

double number(const std::string& flag, const std::string& text) {
  char* end = nullptr;
  const double v = std::strtod(text.c_str(), &end);
  if (text.empty() || *end != '\0') throw sdrt::Error(flag + " '" + text + "' is not a number");
  return v;
}

int narrow(const std::string& flag, long long v) {
  if (v < -1000000 || v > 1000000) throw sdrt::Error(flag + " " + std::to_string(v) + " is out of range");
  return static_cast<int>(v);
}

std::string output_path(const std::string& out, int index, int count) {
  if (count == 1) return out;
  const size_t slash = out.find_last_of('/');
  const size_t dot = out.find_last_of('.');
  const std::string suffix = "-" + std::to_string(index);
  if (dot == std::string::npos || (slash != std::string::npos && dot < slash)) return out + suffix;
  return out.substr(0, dot) + suffix + out.substr(dot);
}

std::string timings_json(const sdrt::Timings& t) {
  char buf[512];
  std::snprintf(buf, sizeof buf,
                "{\"text_encoder\": %.9f, \"vae_encode\": %.9f, \"unet\": %.9f, \"denoise\": %.9f, "
                "\"scheduler\": %.9f, \"vae_decode\": %.9f, \"total\": %.9f, \"steps\": %d, \"unet_calls\": %d}",
                t.text_encoder, t.vae_encode, t.unet, t.denoise, t.denoise - t.unet, t.vae_decode, t.total, t.steps,
                t.unet_calls);
  return buf;
}

int run(int argc, char** argv) {
  std::vector<std::string> args(argv + 1, argv + argc);
  sdrt::Request request;
  std::string artifact, output = "sdrt.png", backend = "openvino", image_path, latents_path, timings_path;
  int repeat = 1;
  sdrt::EngineOptions options;
  bool have_prompt = false;
  for (size_t i = 0; i < args.size(); ++i) {
    const std::string& a = args[i];
    if (a == "-h" || a == "--help") {
      std::cout << kUsage << kHelp;
      std::exit(0);
    }
    auto value = [&]() -> std::string {
      if (i + 1 >= args.size()) throw Usage(a + " needs a value");
      return args[++i];
    };
    if (a == "--prompt") {
      request.prompt = value();
      have_prompt = true;
    } else if (a == "--negative-prompt") {
      request.negative_prompt = value();
    } else if (a == "--steps") {
      request.steps = narrow(a, integer(a, value()));
    } else if (a == "--guidance" || a == "--guidance-scale") {
      request.guidance = number(a, value());
    } else if (a == "--sampler" || a == "--scheduler") {
      request.sampler = value();
    } else if (a == "--seed") {
      request.seed = unsigned_integer(a, value());
    } else if (a == "--width") {
      request.width = narrow(a, integer(a, value()));
    } else if (a == "--height") {
      request.height = narrow(a, integer(a, value()));
    } else if (a == "--clip-skip") {
      request.clip_skip = narrow(a, integer(a, value()));
    } else if (a == "--eta") {
      request.eta = number(a, value());
    } else if (a == "--image") {
      image_path = value();
    } else if (a == "--strength") {
      request.strength = number(a, value());
    } else if (a == "--latents") {
      latents_path = value();
    } else if (a == "--batch") {
      request.batch = narrow(a, integer(a, value()));
    } else if (a == "--backend") {
      backend = value();
    } else if (a == "--cache-dir") {
      options["cache_dir"] = value();
    } else if (a == "--threads") {
      options["threads"] = value();
    } else if (a == "--repeat") {
      repeat = narrow(a, integer(a, value()));
      if (repeat < 1) throw sdrt::Error("--repeat " + std::to_string(repeat) + " must be at least 1");
    } else if (a == "--timings-json") {
      timings_path = value();
    } else if (a == "-o" || a == "--output") {
      output = value();
    } else if (!a.empty() && a[0] == '-') {
      throw Usage("unknown option " + a);
    } else if (artifact.empty()) {
      artifact = a;
    } else if (!have_prompt) {  // `sdrt generate ARTIFACT PROMPT` spelling
      request.prompt = a;
      have_prompt = true;
    } else {
      throw Usage("unexpected argument '" + a + "'");
    }
  }
  if (artifact.empty()) throw Usage("give the artifact directory");
  if (!image_path.empty()) request.image = sdrt::read_png(image_path);
  if (!latents_path.empty()) request.latents = sdrt::read_npy(latents_path);

  auto pipeline = sdrt::Pipeline::load(artifact, backend, options);
  const bool tty = isatty(fileno(stderr));
  auto progress = [&](int done, int total) {
    if (!tty) return;
    const int width = 30, filled = total ? done * width / total : width;
    std::fprintf(stderr, "\rdenoise %3d%% |%s%s| %d/%d", total ? done * 100 / total : 100,
                 std::string(static_cast<size_t>(filled), '#').c_str(), std::string(static_cast<size_t>(width - filled), ' ').c_str(),
                 done, total);
    if (done == total) std::fprintf(stderr, "\n");
  };
  sdrt::Result result;
  std::vector<std::string> runs;
  for (int i = 0; i < repeat; ++i) {  // every bad field is refused before any engine is built
    result = pipeline->generate(request, progress);
    runs.push_back(timings_json(result.timings));
  }
  for (size_t i = 0; i < result.images.size(); ++i) {
    const std::string path = output_path(output, static_cast<int>(i), static_cast<int>(result.images.size()));
    sdrt::write_png(path, result.images[i], result.parameters[i]);
    std::cout << "wrote " << path << " (seed " << result.seeds[i] << ")\n";
  }
  if (!timings_path.empty()) {
    std::ofstream out(timings_path);
    out << "{\"runs\": [";
    for (size_t i = 0; i < runs.size(); ++i) out << (i ? ", " : "") << runs[i];
    out << "]}\n";
    if (!out) throw sdrt::Error("cannot write --timings-json " + timings_path);
  }
  std::cout << result.timings.table() << "\n";
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    return run(argc, argv);
  } catch (const Usage& e) {
    std::cerr << kUsage << "sdrt-cpp: error: " << e.what() << "\n";
    return 2;
  } catch (const sdrt::Error& e) {
    std::cerr << "sdrt-cpp: error: " << e.what() << "\n";
    return 2;
  } catch (const std::exception& e) {
    std::cerr << "sdrt-cpp: failed: " << e.what() << "\n";
    return 1;
  }
}
