//! Parameters and results per method family, shared by the agent and Rust consoles.

pub mod iscsi;
pub mod nfs;
pub mod smb;
pub mod sys;
