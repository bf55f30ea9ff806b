//! The lio backend (being built).
