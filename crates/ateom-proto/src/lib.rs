//! Generated types and service stubs for the `ateom.Ateom` gRPC service.
//!
//! The contract itself lives in `proto/ateom.proto` at the repository root; this crate only
//! compiles it. Fields 1-8 are wire-compatible with substrate's `Ateom` service, everything
//! ateom adds sits at new field numbers.

#![allow(clippy::all, clippy::pedantic)]

tonic::include_proto!("ateom");

pub use ateom_client::AteomClient;
pub use ateom_server::{Ateom, AteomServer};
