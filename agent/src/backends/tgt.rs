//! The tgt backend (being built).
