//! Smart torque wrenches over Open Protocol (placeholder while the link is built).

pub mod codec;
pub mod messages;
pub mod session;
