//! Fusion: the CBCT resliced along an ultrasound frame's plane, overlaid on the frame.
