"""Compression: pruning and quantization steps, chained under the accuracy guard, and measurement.

Takes a student model folder; hands on the shipped artifact (a pruned PyTorch model, a quantized
ONNX graph) with its scores on validation and test and its size, recorded in the store.
"""
