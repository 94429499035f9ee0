//! Device adapters ("southbound"): each owns its device on its own task or thread and
//! shows the rest of the daemon a cheap handle. Backend traits sit below the adapters and
//! have a real and a simulated implementation; nothing else in the daemon gets a trait.

pub mod camera;
pub mod gpio;
pub mod wrench;
