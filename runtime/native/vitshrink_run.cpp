// vitshrink-run: run and time exported vitshrink ONNX models with OpenVINO's C++ API -- no Python.
//
//   vitshrink-run --model pruned.onnx [--model dense.xml ...] [--batch 1] [--input images.f32]
//                 [--output logits.f32] [--threads 2] [--runs 50] [--warmup 3] [--precision f32] [--block-ms 0]
//
// Loads every --model -- an ONNX file, or an OpenVINO IR (.xml + .bin: the NNCF INT8 model) -- (input
// [B, C, H, W] float32 with a dynamic or fixed batch), fixes the batch, compiles it for the CPU at
// --precision (INFERENCE_PRECISION_HINT, default f32: the CPU plugin would otherwise pick bf16 on CPUs
// that have it; an INT8 IR runs its quantized layers in int8 and the rest at this precision), runs the
// same input through each, and prints one JSON object (precision: "i8+f32" when a model runs int8 layers;
// the top-level one is the first int8 model's, else the first model's):
//   {"openvino": version, "device": "CPU", "precision": ..., "threads": T, "batch": B, "runs": N,
//    "models": [{"path", "input_shape", "output_shape", "precision", "checksum", "warmup_fastest_ms",
//                "calls_per_block", "ms": [per round], "p50", "p90"}]}
// Runs are interleaved (round r runs every model once, rotating which goes first), so models compared
// in one call see the same machine state. --block-ms T > 0: a model whose fastest warm-up call took
// t < T ms runs a block of min(9, 1 + ceil(T / t)) calls per round -- the rule of Python's
// vitshrink.runtime.latency.block_calls; t is printed as warmup_fastest_ms, and tests/test_engines.py checks
// the two rules agree on it --, the first dropped (it pays for the
// previous model's caches), and the round's time is the median of the others.
// --input: raw little-endian float32, exactly B*C*H*W values
// (default: a seeded pseudo-random batch). --output: the first model's logits as raw float32.
// Bad input (missing or corrupt model, wrong input size, bad flag) exits 2 with one line "error: ...".
#include <openvino/frontend/manager.hpp>
#include <openvino/openvino.hpp>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <random>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

namespace {

struct BadInput : std::runtime_error {
    using std::runtime_error::runtime_error;
};

struct Args {
    std::vector<std::string> models;
    std::string input, output;
    int64_t batch = 1;
    int threads = 2, runs = 50, warmup = 3;
    double block_ms = 0;
    std::string precision = "f32";
};

int to_int(const std::string& flag, const std::string& v) {
    try {
        size_t used = 0;
        int x = std::stoi(v, &used);
        if (used != v.size() || x < 0) throw std::invalid_argument(v);
        return x;
    } catch (const std::exception&) {
        throw BadInput(flag + " needs a non-negative integer, got '" + v + "'");
    }
}

Args parse(int argc, char** argv) {
    Args a;
    for (int i = 1; i < argc; ++i) {
        std::string f = argv[i];
        if (f == "-h" || f == "--help") {
            std::cout << "usage: vitshrink-run --model M.onnx|M.xml [--model ...] [--batch 1] [--input x.f32] [--output y.f32]"
                         " [--threads 2] [--runs 50] [--warmup 3] [--precision f32|bf16|f16] [--block-ms 0]\n";
            std::exit(0);
        }
        if (i + 1 >= argc) throw BadInput("flag " + f + " needs a value");
        std::string v = argv[++i];
        if (f == "--model") a.models.push_back(v);
        else if (f == "--input") a.input = v;
        else if (f == "--output") a.output = v;
        else if (f == "--batch") a.batch = std::max(1, to_int(f, v));
        else if (f == "--threads") a.threads = to_int(f, v);
        else if (f == "--runs") a.runs = std::max(1, to_int(f, v));
        else if (f == "--warmup") a.warmup = to_int(f, v);
        else if (f == "--block-ms") a.block_ms = to_int(f, v);
        else if (f == "--precision") {
            if (v != "f32" && v != "bf16" && v != "f16") throw BadInput("--precision must be f32, bf16 or f16, got '" + v + "'");
            a.precision = v;
        }
        else throw BadInput("unknown flag " + f);
    }
    if (a.models.empty()) throw BadInput("no --model given");
    return a;
}

std::string json_str(const std::string& s) {
    std::string out = "\"";
    for (char c : s) {
        if (c == '"' || c == '\\') out += '\\';
        out += c;
    }
    return out + "\"";
}

std::string shape_json(const ov::Shape& s) {
    std::ostringstream o;
    o << "[";
    for (size_t i = 0; i < s.size(); ++i) o << (i ? ", " : "") << s[i];
    return o.str() + "]";
}

double percentile(std::vector<double> v, double q) {
    std::sort(v.begin(), v.end());
    double pos = q * (v.size() - 1);
    size_t lo = static_cast<size_t>(pos);
    size_t hi = std::min(lo + 1, v.size() - 1);
    return v[lo] + (pos - lo) * (v[hi] - v[lo]);
}

struct Loaded {
    std::string path;
    ov::InferRequest request;
    ov::Shape in_shape, out_shape;
    std::string precision;
    std::vector<double> ms;
    int calls = 1;  // per block (--block-ms)
    double warm_ms = 0;  // the fastest warm-up call (the first one excluded when there are several)
};

}  // namespace

int main(int argc, char** argv) {
    try {
        Args a = parse(argc, argv);
        ov::Core core;
        std::vector<Loaded> models;
        ov::Shape shape;
        std::string precision;
        for (const auto& path : a.models) {
            if (!std::ifstream(path).good()) throw BadInput("model " + path + ": no such file");
            std::shared_ptr<ov::Model> m;
            const bool ir = path.size() > 4 && path.compare(path.size() - 4, 4, ".xml") == 0;
            try {  // one frontend each: Core::read_model would try every framework on a bad file
                static ov::frontend::FrontEndManager fem;
                ov::frontend::FrontEnd::Ptr fe = fem.load_by_framework(ir ? "ir" : "onnx");
                m = fe->convert(fe->load(path));
            } catch (const std::exception& e) {
                std::string msg = e.what();
                throw BadInput("model " + path + ": not a readable " + (ir ? "OpenVINO IR" : "ONNX model") + " (" +
                               msg.substr(0, msg.find('\n')) + ")");
            }
            if (m->inputs().size() != 1) throw BadInput("model " + path + ": expected one input");
            ov::PartialShape ps = m->input().get_partial_shape();
            if (ps.rank().is_dynamic() || ps.rank().get_length() != 4 || ps[1].is_dynamic() || ps[2].is_dynamic() || ps[3].is_dynamic())
                throw BadInput("model " + path + ": input must be [batch, C, H, W] with static C, H, W");
            ps[0] = a.batch;
            m->reshape(ps);
            ov::Shape s = ps.to_shape();
            if (!shape.empty() && s != shape) throw BadInput("model " + path + ": input shape differs from the first model's");
            shape = s;
            ov::element::Type hint = a.precision == "bf16" ? ov::element::bf16 : a.precision == "f16" ? ov::element::f16
                                                                                                       : ov::element::f32;
            ov::CompiledModel cm = core.compile_model(m, "CPU", ov::hint::inference_precision(hint),
                                                      ov::inference_num_threads(a.threads),
                                                      ov::hint::performance_mode(ov::hint::PerformanceMode::LATENCY));
            std::string p = cm.get_property(ov::hint::inference_precision).get_type_name();
            for (const auto& op : cm.get_runtime_model()->get_ordered_ops()) {  // int8 GEMMs / convolutions
                const auto& rt = op->get_rt_info();
                auto prec = rt.find("runtimePrecision"), type = rt.find("layerType");
                if (prec == rt.end() || type == rt.end()) continue;
                const std::string pr = prec->second.as<std::string>(), ty = type->second.as<std::string>();
                if ((pr == "i8" || pr == "u8") && (ty == "FullyConnected" || ty == "FullyConnectedQuantizedLegacy" ||
                                                   ty == "MatMul" || ty == "Convolution")) {
                    p = "i8+" + p;
                    break;
                }
            }
            if (precision.empty() || p.rfind("i8+", 0) == 0) precision = p;
            Loaded l{path, cm.create_infer_request(), s, cm.output().get_shape(), p, {}};
            models.push_back(std::move(l));
        }

        size_t n = ov::shape_size(shape);
        std::vector<float> x(n);
        if (!a.input.empty()) {
            std::ifstream f(a.input, std::ios::binary | std::ios::ate);
            if (!f) throw BadInput("input " + a.input + ": no such file");
            std::streamsize bytes = f.tellg();
            if (bytes != static_cast<std::streamsize>(n * sizeof(float)))
                throw BadInput("input " + a.input + ": " + std::to_string(bytes) + " bytes, the model needs " +
                               std::to_string(n * sizeof(float)) + " (float32 " + shape_json(shape) + ")");
            f.seekg(0);
            f.read(reinterpret_cast<char*>(x.data()), bytes);
        } else {
            std::mt19937 rng(0);
            std::normal_distribution<float> d(0.f, 1.f);
            for (auto& v : x) v = d(rng);
        }
        for (auto& l : models) l.request.set_input_tensor(ov::Tensor(ov::element::f32, shape, x.data()));

        auto timed = [](Loaded& l) {
            auto t0 = std::chrono::steady_clock::now();
            l.request.infer();
            return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
        };
        std::vector<double> fastest(models.size(), 1e30);
        for (int w = 0; w < a.warmup; ++w)
            for (size_t k = 0; k < models.size(); ++k) {
                double t = timed(models[k]);
                if (w > 0 || a.warmup == 1) fastest[k] = std::min(fastest[k], t);
            }
        for (size_t k = 0; k < models.size(); ++k) {
            models[k].warm_ms = a.warmup > 0 ? fastest[k] : 0;
            models[k].calls = (a.block_ms <= 0 || fastest[k] >= a.block_ms)
                                  ? 1 : static_cast<int>(std::min(9.0, 1 + std::ceil(a.block_ms / std::max(fastest[k], 1e-6))));
        }
        for (int r = 0; r < a.runs; ++r) {
            for (size_t k = 0; k < models.size(); ++k) {
                auto& l = models[(k + r) % models.size()];
                std::vector<double> ts;
                for (int c = 0; c < l.calls; ++c) ts.push_back(timed(l));
                if (l.calls > 1) ts.erase(ts.begin());  // the switch from the previous model
                std::nth_element(ts.begin(), ts.begin() + ts.size() / 2, ts.end());
                double med = ts[ts.size() / 2];
                if (ts.size() % 2 == 0) med = (med + *std::max_element(ts.begin(), ts.begin() + ts.size() / 2)) / 2;
                l.ms.push_back(med);
            }
        }

        std::ostringstream o;
        o.precision(6);
        o << "{\"openvino\": " << json_str(ov::get_openvino_version().buildNumber) << ", \"device\": \"CPU\", \"precision\": "
          << json_str(precision) << ", \"threads\": " << a.threads << ", \"batch\": " << a.batch << ", \"runs\": " << a.runs
          << ", \"models\": [";
        for (size_t k = 0; k < models.size(); ++k) {
            auto& l = models[k];
            ov::Tensor y = l.request.get_output_tensor();
            const float* p = y.data<const float>();
            double checksum = 0;
            for (size_t i = 0; i < y.get_size(); ++i) checksum += p[i];
            if (k == 0 && !a.output.empty()) {
                std::ofstream f(a.output, std::ios::binary);
                if (!f) throw BadInput("output " + a.output + ": cannot write");
                f.write(reinterpret_cast<const char*>(p), y.get_byte_size());
            }
            o << (k ? ", " : "") << "{\"path\": " << json_str(l.path) << ", \"input_shape\": " << shape_json(l.in_shape)
              << ", \"output_shape\": " << shape_json(y.get_shape()) << ", \"precision\": " << json_str(l.precision)
              << ", \"checksum\": " << checksum << ", \"warmup_fastest_ms\": " << l.warm_ms
              << ", \"calls_per_block\": " << l.calls << ", \"ms\": [";
            for (size_t i = 0; i < l.ms.size(); ++i) o << (i ? ", " : "") << l.ms[i];
            o << "], \"p50\": " << percentile(l.ms, 0.5) << ", \"p90\": " << percentile(l.ms, 0.9) << "}";
        }
        o << "]}";
        std::cout << o.str() << std::endl;
        return 0;
    } catch (const BadInput& e) {
        std::cerr << "error: " << e.what() << std::endl;
        return 2;
    } catch (const std::exception& e) {
        std::string msg = e.what();
        std::cerr << "error: " << msg.substr(0, msg.find('\n')) << std::endl;
        return 1;
    }
}
