//! Where storage paths are checked. (The names below are what the previous iSCSI handler
//! imports; they go with it.)

pub mod paths;

pub use crate::families::iscsi::LegacyFamily as Family;
pub use crate::families::{BoxFut, StorageCtx};
