//! Harness for a private smbd (being built).
