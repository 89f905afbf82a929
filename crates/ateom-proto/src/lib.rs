//! Generated types and service stubs for the `ateom.Ateom` gRPC service.
//!
//! The contract itself lives in `proto/ateom.proto` at the repository root; this crate only
//! compiles it. Fields 1-8 are wire-compatible with substrate's `Ateom` service, everything
//! ateom adds sits at new field numbers.
//!
//! [`substrate`] holds substrate's own layouts: the original one alone (`v1`, a client for
//! tests) and the renumbered one (`v2`, served by `ateom serve --wire substrate-v2`).

#![allow(clippy::all, clippy::pedantic)]

tonic::include_proto!("ateom");

pub use ateom_client::AteomClient;
pub use ateom_server::{Ateom, AteomServer};

/// Substrate's layouts of the `ateom.Ateom` service. Same package and service name as the
/// crate root, different field numbers: one socket speaks one of them.
pub mod substrate {
    /// Substrate's original layout, without ateom's fields (`proto/substrate/v1/ateom.proto`).
    /// Client only: the default worker serves the crate root's superset of it.
    pub mod v1 {
        include!(concat!(env!("OUT_DIR"), "/substrate_v1/ateom.rs"));

        pub use ateom_client::AteomClient;
    }

    /// Substrate's renumbered layout (`proto/substrate/v2/ateom.proto`).
    pub mod v2 {
        include!(concat!(env!("OUT_DIR"), "/substrate_v2/ateom.rs"));

        pub use ateom_client::AteomClient;
        pub use ateom_server::{Ateom, AteomServer};
    }
}
