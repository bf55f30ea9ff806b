//! Harness for a private tgtd (being built).
