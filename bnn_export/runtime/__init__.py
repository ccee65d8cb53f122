"""Native runtime: xor + popcount binary convolution kernels and the onnxruntime op library."""
