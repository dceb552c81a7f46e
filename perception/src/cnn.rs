//! CNN bone-surface and landmark detector run through `ort` (tract backend by default, ONNX
//! Runtime selectable at run time).
