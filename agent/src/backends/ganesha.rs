//! The ganesha backend (being built).
