//! Wire formats of Tidings and the one place that translates between them and the domain:
//! gRPC messages (`ticket::v1`, `push::v1`), the Kafka event contract (`events::v1`), and the table that
//! maps domain errors to gRPC status codes.

pub mod ticket {
    pub mod v1 {
        tonic::include_proto!("tidings.ticket.v1");
    }
}

pub mod push {
    pub mod v1 {
        tonic::include_proto!("tidings.push.v1");
    }
}

pub mod events {
    pub mod v1 {
        tonic::include_proto!("tidings.events.v1");
    }
}

/// Encoded descriptors for gRPC server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("tidings_descriptor");

mod convert;
mod status;
mod update;

pub use convert::*;
pub use status::*;
pub use update::*;
