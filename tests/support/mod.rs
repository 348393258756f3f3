//! Hermetic test support, split by role: the fake upstream ([`upstream`]), a regcache started
//! in-process ([`mirror`]), a tiny HTTP client ([`client`]) and shared data ([`data`]).
#![allow(dead_code)]

pub mod client;
pub mod data;
pub mod https;
pub mod mirror;
/// Process helpers shared with the e2e lab (`is_root`, ...).
#[path = "../lab/proc.rs"]
pub mod proc;
pub mod proxy;
pub mod upstream;

#[allow(unused_imports)]
pub use client::*;
pub use data::*;
pub use mirror::*;
#[allow(unused_imports)]
pub use proxy::*;
pub use upstream::*;
