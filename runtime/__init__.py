"""Runners (torch, ONNX Runtime, TensorRT) and latency/accuracy measurement."""
