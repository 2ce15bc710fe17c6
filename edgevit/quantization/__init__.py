"""INT8 for every target from one calibration source, one keep-in-float rule per family and one accuracy
criterion: :mod:`.calibration` (the images), :mod:`.float_rules` (the rules applied to a graph),
:mod:`.onnx_qdq` (ONNX QDQ), :mod:`.accuracy` (agreement with the fp32 model)."""
