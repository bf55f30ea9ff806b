//! The samba backend (being built).
