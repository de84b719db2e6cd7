//! orderflow-processors
