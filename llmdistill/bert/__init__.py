"""BERT-style distillation: losses, layer maps, students, the distill-bert stage, ONNX export and serving."""
