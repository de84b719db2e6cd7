//! orderflow-kafka
