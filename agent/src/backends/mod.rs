//! Backends: the code that renders config files and argument vectors for one storage daemon,
//! runs them (through `exec`), reads the result back, and rolls back on failure.

pub mod exportfs;
pub mod ganesha;
pub mod lio;
pub mod memory;
pub mod samba;
pub mod tgt;
