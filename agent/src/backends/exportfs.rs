//! The exportfs backend (being built).
