//! orderflow-ingest
