//! # ate
//!
//! The control plane above `ateom` workers. The binary (`src/main.rs`) only composes these
//! modules:
//!
//! * [`controller`]: actors through their state machine (`ate-core`) against real workers,
//!   with every transition one atomic write to the store (`ate-store`); reconciliation,
//!   health, idle policy, golden snapshots;
//! * [`worker`]: the `ateom.Ateom` gRPC client side (the only thing the control plane knows
//!   of a worker);
//! * [`router`]: the resume-on-traffic reverse proxy;
//! * [`api`]: the admin HTTP/JSON API and its client (the CLI);
//! * [`auth`]: API tokens and roles, and the private files they live in;
//! * [`http`]: serving untrusted clients within bounds (connections, timeouts);
//! * [`metrics`]: Prometheus text;
//! * [`server`]: `ate serve` wiring;
//! * [`cluster`], [`demo`]: local gVisor workers for the demo, the benchmark and the tests.

pub mod api;
pub mod auth;
pub mod certs;
pub mod cluster;
pub mod controller;
pub mod demo;
pub mod http;
pub mod metrics;
pub mod router;
pub mod server;
pub mod worker;
