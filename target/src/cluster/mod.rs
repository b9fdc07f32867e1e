//! The cluster: shared state in the coordinator, the inter-node link, and the
//! clustered I/O path.

pub mod admin;
pub mod admin_client;
mod follow;
pub mod lab;
pub mod link;
pub mod mode;
pub mod portals;
pub mod pr;
pub mod resets;
pub mod state;
pub mod store;
pub mod view;
pub mod volumes;
