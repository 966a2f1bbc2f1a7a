"""The ONNX conformance models (the onnx package's backend test data) that surgery
refuses, each with the operator its error names and why. ``test_onnx_conformance.py``
checks that every other float model matches its expected outputs; a model listed here
that starts to match fails the test until it is taken off the list."""

REFUSED = {
    "pytorch-operator/test_operator_addmm": ("Gemm", "Gemm of computed inputs: no weight, an InnerProduct needs one"),
    "pytorch-operator/test_operator_index": ("Slice", "Slice along the batch axis"),
    "pytorch-operator/test_operator_min": ("Min", "no layer type for Min"),
    "pytorch-operator/test_operator_mm": ("Gemm", "Gemm of computed inputs: no weight, an InnerProduct needs one"),
    "simple/test_gradient_of_add": ("Gradient", "no layer type for Gradient"),
    "simple/test_gradient_of_add_and_mul": ("Gradient", "no layer type for Gradient"),
    "simple/test_sequence_model1": ("SequenceAt", "no layer type for SequenceAt, SequenceEmpty, SequenceInsert"),
    "simple/test_sequence_model2": ("SequenceAt", "no layer type for SequenceAt, SequenceConstruct, SequenceErase"),
    "simple/test_sequence_model3": (
        "SequenceAt",
        "no layer type for SequenceAt, SequenceConstruct, SequenceErase, SequenceInsert",
    ),
    "simple/test_sequence_model4": ("ConcatFromSequence", "no layer type for ConcatFromSequence, SequenceConstruct"),
    "simple/test_sequence_model5": ("ConcatFromSequence", "no layer type for ConcatFromSequence, SequenceConstruct"),
    "simple/test_shrink": ("Shrink", "no layer type for Shrink"),
}


#: Models the ONNX-to-PyTorch converter onnx2torch converts to the expected outputs and
#: surgery refuses (``test_onnx_conformance.py`` compares the two on every model): none.
PEER_ONLY: dict[str, str] = {}
