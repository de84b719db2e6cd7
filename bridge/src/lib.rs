//! orderflow-bridge
