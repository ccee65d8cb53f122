"""bnn-export: train binary neural networks and export them to ONNX / TFLite (LCE)."""
