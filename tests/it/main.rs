//! The end-to-end tests, one binary with a module per area (each file was its own test binary,
//! each compiling `tests/common`): `cargo test --test it` runs them all, `cargo test --test it
//! lifecycle::` one area.

#[path = "../common/mod.rs"]
mod common;

mod auth;
mod bridge_aws;
mod browser;
mod clients;
mod console;
mod consumer_groups;
mod crash;
mod dashboards;
mod deploy;
mod fetch;
mod fuzz;
mod invoices;
mod lifecycle;
mod load;
mod logs;
mod managed_kafka;
mod openapi;
mod otlp;
mod outbox;
mod pipeline;
mod products;
mod schema_registry;
mod secrets;
mod store_outage;
