"""Shipping: export the selected candidate as an ONNX graph and a Core ML package, verified.

Takes a compressed candidate; hands on a bundle folder (models, tokenizer files, labels, a
verification record and a manifest) that an app can load.
"""
