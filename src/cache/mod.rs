//! The cache: the content-addressed store on disk, its index and eviction, and the fills that
//! bring blobs in from upstream.

pub mod eviction;
pub mod fill;
pub mod serial;
pub mod store;
