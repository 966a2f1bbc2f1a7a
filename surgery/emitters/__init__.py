"""Emitters: the IR written out as a PyTorch model (and, with later formats, ONNX/Caffe)."""
