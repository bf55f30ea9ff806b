//! Each storage family's model: the resource types its backends take, what a backend shows,
//! the change to make and the plan that makes it, and the family's backend trait.

pub mod iscsi;
