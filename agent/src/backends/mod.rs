//! Backends: the code that renders config files and argument vectors for one storage daemon,
//! runs them (through `exec`), reads the result back, and rolls back on failure.

pub(crate) mod exportfs;
pub(crate) mod ganesha;
pub(crate) mod lio;
pub mod memory;
pub(crate) mod samba;
pub(crate) mod tgt;
